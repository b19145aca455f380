// Conv2d over NCHW input with a square kernel. weight [out, in / groups, k, k]; initialised
// like PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in / groups * k * k.
#pragma once

#include "nn/module.h"

namespace headroom::nn {

class Conv2d : public Module {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel, int64_t stride = 1, int64_t padding = 0,
         int64_t groups = 1, bool bias = true, LayerOptions options = {});
  Tensor forward(const Tensor& x) override;  // [N, in, H, W] -> [N, out, OH, OW]
  std::string name() const override;

  int64_t in_channels, out_channels, kernel, stride, padding, groups;
  Tensor weight;  // [out, in / groups, k, k]
  Tensor bias;    // [out], undefined without bias
};

}  // namespace headroom::nn
