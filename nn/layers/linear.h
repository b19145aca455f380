// Linear: y = x @ weight^T + bias, weight [out, in] (PyTorch's layout, so state dicts line up).
// Initialised like PyTorch's default: weight and bias from U(-1/sqrt(in), 1/sqrt(in)).
#pragma once

#include "nn/module.h"

namespace headroom::nn {

class Linear : public Module {
 public:
  // options: the parameters' dtype and device (made there directly, see LayerOptions).
  Linear(int64_t in_features, int64_t out_features, bool bias = true, LayerOptions options = {});
  Linear(int64_t in, int64_t out, LayerOptions options) : Linear(in, out, true, options) {}
  Tensor forward(const Tensor& x) override;  // x: [..., in] -> [..., out]
  std::string name() const override;

  int64_t in_features, out_features;
  Tensor weight;  // [out, in]
  Tensor bias;    // [out], undefined without bias
};

}  // namespace headroom::nn
