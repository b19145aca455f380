// GroupNorm: normalisation over groups of channels within each sample (Wu and He, 2018).
//
// Its statistics are per sample -- the mean and variance of the C/G channels of a group over
// all positions of one sample -- so, unlike BatchNorm's, they do not depend on which other
// samples share the batch: a batch split into micro-batches (optim/batch_split.h) gives the same
// outputs and gradients as the whole batch. That is why it is offered as BatchNorm's replacement
// under batch splitting (docs/batch-splitting.md). groups = 1 normalises each sample over all
// its channels and positions; groups = C is instance normalisation.
//
// One fused op (autograd group_norm -> Backend::group_norm_forward/backward): backward keeps
// only the input, which is alive anyway as the previous layer's output, and [N, G] f32 mean and
// rstd -- BatchNorm's activation memory. (It used to be reshape + layer_norm + per-channel
// affine, which also kept the normalised [N, C, *] tensor for the weight gradient: twice the
// memory, and about twice BatchNorm's time on the CPU.) Under autocast a 16-bit input runs with
// the f32 weight and bias as they are, like BatchNorm.
#pragma once

#include "nn/module.h"

namespace headroom::nn {

// x: [N, C, *] with C divisible by groups; weight and bias: [C] (x's dtype, or f32 for a 16-bit x)
// or undefined.
Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias, double eps = 1e-5);

class GroupNorm : public Module {
 public:
  GroupNorm(int64_t groups, int64_t channels, double eps = 1e-5, bool affine = true, LayerOptions options = {});
  Tensor forward(const Tensor& x) override;  // x: [N, C, *]
  std::string name() const override;

  int64_t groups, channels;
  double eps;
  Tensor weight, bias;  // parameters [C]: 1 and 0; undefined without affine
};

}  // namespace headroom::nn
