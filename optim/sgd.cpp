// SGD: one pass over the parameters; the momentum buffer is made on a parameter's first step
// (a copy of its first update direction, as in PyTorch). Contiguous parameters take the
// Backend's fused update (fused.h); the Tensor-op path below is the definition and serves every
// other case.
#include "optim/sgd.h"

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "engine/backend.h"
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

// Note [all-or-nothing step] (optimizer.h): everything that allocates happens here. A new
// momentum buffer is made empty and written whole by the commit (it takes the first direction).
void SGD::prepare_step() {
  pending_.clear();
  workspace_.clear();
  bool any_unfused = false;
  for (size_t i = 0; i < params_.size(); ++i) {
    reserving_ = i;
    const Tensor& p = params_[i];
    Tensor g = checked_grad(i, "SGD");
    if (!g.defined()) continue;
    Tensor& buf = momentum_buffers_[i];
    Pending pd{i, g, momentum_ != 0 && !buf.defined(), false};
    pending_.push_back(pd);  // first = true: discard_step drops the buffer made below
    if (pd.first) {
      CategoryScope scope(MemoryCategory::optimizer_state);
      buf = Tensor::empty(p.shape(), p.options());
    }
    pd.fused = fused_ && detail::sgd_applies(p, g, buf, momentum_);
    if (!pd.fused) {
      any_unfused = true;
      workspace_.need(p);
      if (g.dtype() != p.dtype()) {
        CategoryScope scope(MemoryCategory::temporary);
        pd.grad = Tensor::empty(p.shape(), p.options());
        copy_tensor(pd.grad, g);
      }
    }
    pending_.back() = pd;
  }
  if (any_unfused) workspace_.reserve(/*buffers=*/2, /*scalars=*/1);
}

void SGD::discard_step() noexcept {
  for (const Pending& pd : pending_)
    if (pd.first) momentum_buffers_[pd.index] = Tensor();
  pending_.clear();
  workspace_.clear();
}

void SGD::commit_step() {
  for (const Pending& pd : pending_) {
    const Tensor& p = params_[pd.index];
    const Tensor& buf = momentum_buffers_[pd.index];
    if (pd.fused) {
      detail::sgd_update(p, pd.grad, buf, pd.first, lr_, momentum_, weight_decay_, nesterov_);
      continue;
    }
    update_unfused(p, pd.grad, buf, pd.first);
  }
  pending_.clear();
  workspace_.clear();
}

// The definition of the update, in Tensor-level ops on the reserved workspace: two buffers (t1, t2)
// and one scalar, refilled with each coefficient before its use.
void SGD::update_unfused(const Tensor& p, const Tensor& g, const Tensor& buf, bool first) const {
  Backend& be = backend_for(p.device());
  const Tensor t1 = workspace_.buffer(0, p), t2 = workspace_.buffer(1, p);
  auto s = [&](double v) { return workspace_.scalar(0, p, v); };
  Tensor d = g;
  if (weight_decay_ != 0) {  // d = g + weight_decay * p
    be.binary(BinaryOp::mul, p, s(weight_decay_), t1);
    be.binary(BinaryOp::add, g, t1, t1);
    d = t1;
  }
  if (momentum_ != 0) {
    if (first) {
      be.copy(buf, d);
    } else {
      be.binary(BinaryOp::mul, buf, s(momentum_), buf);
      be.binary(BinaryOp::add, buf, d, buf);
    }
    buf.bump_version();
    if (nesterov_) {  // d = d + momentum * buf
      be.binary(BinaryOp::mul, buf, s(momentum_), t2);
      be.binary(BinaryOp::add, d, t2, t2);
      d = t2;
    } else {
      d = buf;
    }
  }
  // p -= lr * d: in place when d is a buffer; otherwise (d is g or the momentum buffer) t2 is free.
  const Tensor step = d.is_same(t1) || d.is_same(t2) ? d : t2;
  be.binary(BinaryOp::mul, d, s(-lr_), step);
  be.binary(BinaryOp::add, p, step, p);
  p.bump_version();
}

void SGD::param_state(size_t i, std::map<std::string, Tensor>& out) const {
  if (momentum_buffers_[i].defined()) out["momentum_buffer"] = momentum_buffers_[i];
}

std::vector<std::string> SGD::param_state_names() const { return {"momentum_buffer"}; }

void SGD::set_param_state(size_t i, std::map<std::string, Tensor> state) noexcept {
  momentum_buffers_[i] = state.empty() ? Tensor() : state["momentum_buffer"];
}

size_t SGD::state_nbytes() const {
  size_t n = 0;
  for (const auto& b : momentum_buffers_)
    if (b.defined()) n += b.nbytes();
  return n;
}

}  // namespace headroom::optim
