// Gradient clipping by the global L2 norm (torch.nn.utils.clip_grad_norm_).
//
// The total norm is sqrt(sum over all grads of sum(g^2)). Each tensor's sum of squares is
// computed on its own device in f32 (f64 for f64 grads) -- so f16/bf16 grads do not overflow
// in their own dtype -- and summed per device in f64; only one number per device crosses to
// the host. Parameters without a .grad are skipped.
//
// The parallel GPTs (nn/parallel/gpt_parallel.h) clip by the norm of the unsplit model, so that a
// split run takes the step the whole model would: their overloads are here, beside the plain
// one, as ZeroRedundancyOptimizer::clip_grad_norm_ is in optim/zero.h (nn/ is below optim/).
#pragma once

#include <memory>
#include <vector>

#include "engine/tensor.h"

namespace headroom::dist {
class ProcessGroup;
}
namespace headroom::nn {
class GPTStage;
class TensorParallelGPT;
}  // namespace headroom::nn

namespace headroom::optim {

// The total L2 norm of the grads, without changing them (inf or nan if any grad holds one).
double grad_norm(const std::vector<Tensor>& params);

// Scales every grad by max_norm / (norm + 1e-6) when that is below 1; returns the total norm
// before clipping. A non-finite norm is returned as is and the grads are left alone (a
// GradScaler skips such a step anyway).
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm);

// Pipeline stages (nn::GPTStage::split), after GPTStage::tie_gradients: clips to max_norm by the
// unsplit model's global norm -- the tied head, copied on the last stage, counted once -- and
// returns that norm, as clip_grad_norm_ on the whole GPT would.
double clip_grad_norm_(const std::vector<std::shared_ptr<nn::GPTStage>>& stages, double max_norm);
// One rank's part of a tensor-parallel GPT. Collective (every rank of `group` calls it): clips to
// max_norm by the unsplit model's global norm -- the shards' squares summed over the ranks, the
// replicated parameters counted once -- and returns that norm, the same on every rank.
double clip_grad_norm_(nn::TensorParallelGPT& model, double max_norm, dist::ProcessGroup& group);

}  // namespace headroom::optim
