// 2-d pooling over NCHW input with a square window; stride -1 means stride = kernel.
#pragma once

#include "nn/module.h"

namespace headroom::nn {

class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(int64_t kernel, int64_t stride = -1, int64_t padding = 0);
  Tensor forward(const Tensor& x) override;
  std::string name() const override;
  int64_t kernel, stride, padding;
};

// Divides by the full window, padding included (PyTorch's count_include_pad = true).
class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(int64_t kernel, int64_t stride = -1, int64_t padding = 0);
  Tensor forward(const Tensor& x) override;
  std::string name() const override;
  int64_t kernel, stride, padding;
};

}  // namespace headroom::nn
