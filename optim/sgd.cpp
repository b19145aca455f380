// SGD: one pass over the parameters; the momentum buffer is made on a parameter's first step
// (a copy of its first update direction, as in PyTorch). Contiguous parameters take the
// Backend's fused update (fused.h); the Tensor-op path below is the definition and serves every
// other case.
#include "optim/sgd.h"

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "engine/memory.h"
#include "optim/fused.h"

namespace headroom::optim {

SGD::SGD(std::vector<Tensor> params, double lr, double momentum, double weight_decay, bool nesterov)
    : Optimizer(std::move(params), lr), momentum_(momentum), weight_decay_(weight_decay), nesterov_(nesterov) {
  HR_CHECK(momentum >= 0, ValueError, "SGD: momentum must be >= 0, got ", momentum);
  HR_CHECK(weight_decay >= 0, ValueError, "SGD: weight_decay must be >= 0, got ", weight_decay);
  HR_CHECK(!nesterov || momentum > 0, ValueError, "SGD: nesterov needs a momentum > 0");
  momentum_buffers_.resize(params_.size());
}

void SGD::step() {
  NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor p = params_[i];
    const Tensor g = p.grad();
    if (!g.defined()) continue;
    Tensor& buf = momentum_buffers_[i];
    const bool first = !buf.defined();
    if (momentum_ != 0 && first) {
      CategoryScope scope(MemoryCategory::optimizer_state);
      buf = Tensor::empty(p.shape(), p.options());
    }
    if (fused_ && detail::sgd_update(p, g, buf, first, lr_, momentum_, weight_decay_, nesterov_)) continue;
    Tensor d = weight_decay_ != 0 ? g + p * weight_decay_ : g;
    if (momentum_ != 0) {
      if (first) {
        buf.copy_(d);
      } else {
        buf.mul_(momentum_);
        buf.add_(d);
      }
      d = nesterov_ ? d + buf * momentum_ : buf;
    }
    p.add_(d, -lr_);
  }
}

size_t SGD::state_nbytes() const {
  size_t n = 0;
  for (const auto& b : momentum_buffers_)
    if (b.defined()) n += b.nbytes();
  return n;
}

}  // namespace headroom::optim
