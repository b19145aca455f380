// Loss callables over the functional losses, so a training loop can hold its criterion as an
// object (nn::CrossEntropyLoss criterion; loss = criterion(logits, labels)) as in PyTorch.
// The reduction is checked when the loss is made, not on the first batch.
#pragma once

#include <cstdint>
#include <string>

#include "autograd/functions.h"

namespace headroom::nn {

namespace detail {
inline const std::string& checked_reduction(const char* loss, const std::string& reduction) {
  HR_CHECK(reduction.compare("mean") == 0 || reduction.compare("sum") == 0 || reduction.compare("none") == 0,
           ValueError, loss, ": reduction must be \"mean\", \"sum\" or \"none\", got \"", reduction, "\"");
  return reduction;
}
}  // namespace detail

// logits [N, C], target [N] integer class indices. Targets equal to ignore_index add nothing;
// "mean" averages over the others.
class CrossEntropyLoss {
 public:
  explicit CrossEntropyLoss(const std::string& reduction = "mean", int64_t ignore_index = -100)
      : reduction_(detail::checked_reduction("CrossEntropyLoss", reduction)), ignore_index_(ignore_index) {}
  Tensor operator()(const Tensor& logits, const Tensor& target) const {
    return cross_entropy(logits, target, reduction_, ignore_index_);
  }
  const std::string& reduction() const { return reduction_; }
  int64_t ignore_index() const { return ignore_index_; }

 private:
  std::string reduction_;
  int64_t ignore_index_;
};

// Mean (or sum, or per-element) squared difference; input and target of one shape.
class MSELoss {
 public:
  explicit MSELoss(const std::string& reduction = "mean")
      : reduction_(detail::checked_reduction("MSELoss", reduction)) {}
  Tensor operator()(const Tensor& input, const Tensor& target) const { return mse_loss(input, target, reduction_); }
  const std::string& reduction() const { return reduction_; }

 private:
  std::string reduction_;
};

}  // namespace headroom::nn
