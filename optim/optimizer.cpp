// Optimizer base: parameter list validation and the shared lr / zero_grad.
#include "optim/optimizer.h"

#include <set>

namespace headroom::optim {

Optimizer::Optimizer(std::vector<Tensor> params, double lr) : params_(std::move(params)), lr_(lr) {
  HR_CHECK(!params_.empty(), ValueError, "Optimizer: got an empty parameter list");
  HR_CHECK(lr >= 0, ValueError, "Optimizer: lr must be >= 0, got ", lr);
  std::set<const TensorImpl*> seen;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i];
    HR_CHECK(p.defined(), ValueError, "Optimizer: parameter ", i, " is undefined");
    HR_CHECK(is_floating(p.dtype()), ValueError, "Optimizer: parameter ", i, " is not a floating tensor: ",
             describe(p));
    HR_CHECK(p.is_leaf(), ValueError, "Optimizer: parameter ", i, " (", describe(p),
             ") is the result of an op, not a leaf; optimize the leaf it came from");
    HR_CHECK(seen.insert(p.impl()).second, ValueError, "Optimizer: parameter ", i, " (", describe(p),
             ") appears more than once in the list");
  }
}

void Optimizer::zero_grad() {
  for (const auto& p : params_) p.zero_grad();
}

void Optimizer::set_lr(double lr) {
  HR_CHECK(lr >= 0, ValueError, "Optimizer::set_lr: lr must be >= 0, got ", lr);
  lr_ = lr;
}

}  // namespace headroom::optim
