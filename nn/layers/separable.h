// Depthwise-separable convolution (MobileNet, Howard et al. 2017): a k x k convolution split in
// two. The depthwise conv filters each channel on its own (Conv2d with groups == in_channels:
// k*k weights a channel), the pointwise 1x1 conv mixes channels (in*out weights). Each is
// followed by BatchNorm2d and ReLU, as in MobileNet:
//
//   x [N, in, H, W] -> depthwise 3x3 (groups = in, stride s) -> BN -> ReLU
//                   -> pointwise 1x1 (in -> out)             -> BN -> ReLU -> [N, out, H/s, W/s]
//
// Parameters: in*k*k + in*out (convs, no bias: BN has one) + 2*in + 2*out (BN) -- against
// in*out*k*k for a plain k x k conv: about k*k = 9 times fewer when out is large.
// Memory note: the block saves more activations than the conv it replaces -- the depthwise
// output and its normalised, ReLU'd copy (in channels at the output resolution) come on top of
// the pointwise output's -- so it buys parameters and flops, not activation bytes
// (docs/smaller-models.md has the measured numbers).
//
//   auto block = std::make_shared<nn::DepthwiseSeparableConv2d>(32, 64, /*stride=*/2);
//   Tensor y = block->forward(x);  // [N, 32, 14, 14] -> [N, 64, 7, 7]
#pragma once

#include <memory>

#include "nn/layers/activation.h"
#include "nn/layers/conv.h"
#include "nn/layers/norm.h"

namespace headroom::nn {

class DepthwiseSeparableConv2d : public Module {
 public:
  // kernel odd (padding kernel / 2 keeps the size at stride 1). batch_norm = false: no norm, and
  // the two convs get biases instead.
  DepthwiseSeparableConv2d(int64_t in_channels, int64_t out_channels, int64_t stride = 1, int64_t kernel = 3,
                           bool batch_norm = true);
  Tensor forward(const Tensor& x) override;  // [N, in, H, W] -> [N, out, OH, OW]
  std::string name() const override;

  // in*k*k + in*out, plus 2*(in + out) with BatchNorm or (in + out) biases without.
  static int64_t parameter_count(int64_t in_channels, int64_t out_channels, int64_t kernel = 3, bool batch_norm = true);

  int64_t in_channels, out_channels, stride, kernel;
  std::shared_ptr<Conv2d> depthwise;          // [in, 1, k, k], groups = in
  std::shared_ptr<BatchNorm2d> depthwise_bn;  // null without batch_norm
  std::shared_ptr<Conv2d> pointwise;          // [out, in, 1, 1]
  std::shared_ptr<BatchNorm2d> pointwise_bn;  // null without batch_norm
};

}  // namespace headroom::nn
