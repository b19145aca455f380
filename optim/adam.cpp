// Adam / AdamW: one routine, `decoupled` choosing where weight decay enters. Contiguous parameters
// take the Backend's single-pass update (fused.h); the Tensor-op path below is the definition and
// serves every other case, keeping temporaries to two parameter-sized tensors at a time.
#include "optim/adam.h"

#include <cmath>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "engine/backend.h"
#include "engine/memory.h"
#include "optim/fused.h"

namespace headroom::optim {

Adam::Adam(std::vector<Tensor> params, double lr, double beta1, double beta2, double eps, double weight_decay)
    : Adam(std::move(params), lr, beta1, beta2, eps, weight_decay, false, "Adam") {}

Adam::Adam(std::vector<Tensor> params, double lr, double beta1, double beta2, double eps, double weight_decay,
           bool decoupled, const char* name)
    : Optimizer(std::move(params), lr),
      name_(name),
      beta1_(beta1),
      beta2_(beta2),
      eps_(eps),
      weight_decay_(weight_decay),
      decoupled_(decoupled) {
  detail::check_adam_hyperparameters(name, beta1, beta2, eps, weight_decay);
  state_.resize(params_.size());
}

namespace detail {
void check_adam_hyperparameters(const char* name, double beta1, double beta2, double eps, double weight_decay) {
  HR_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, ValueError, name, ": betas must be in [0, 1), got (",
           beta1, ", ", beta2, ")");
  HR_CHECK(eps >= 0, ValueError, name, ": eps must be >= 0, got ", eps);
  HR_CHECK(weight_decay >= 0, ValueError, name, ": weight_decay must be >= 0, got ", weight_decay);
}

void adam_state_entries(const Tensor& exp_avg, const Tensor& exp_avg_sq, int64_t step,
                        std::map<std::string, Tensor>& out) {
  if (!exp_avg.defined()) return;
  out["exp_avg"] = exp_avg;
  out["exp_avg_sq"] = exp_avg_sq;
  out["step"] = Tensor::scalar(static_cast<double>(step), DType::i64);
}

std::vector<std::string> adam_state_names() { return {"exp_avg", "exp_avg_sq", "step"}; }
}  // namespace detail

// Note [all-or-nothing step] (optimizer.h): everything that allocates happens here.
void Adam::prepare_step() {
  pending_.clear();
  workspace_.clear();
  bool any_unfused = false;
  for (size_t i = 0; i < params_.size(); ++i) {
    reserving_ = i;
    const Tensor& p = params_[i];
    Tensor g = checked_grad(i, name_);
    if (!g.defined()) continue;
    State& st = state_[i];
    Pending pd{i, g, false, false};
    if (!st.exp_avg.defined()) {
      CategoryScope scope(MemoryCategory::optimizer_state);
      pd.made_state = true;
      pending_.push_back(pd);  // so that discard_step drops a half-made pair too
      st.exp_avg = Tensor::zeros(p.shape(), p.options());
      st.exp_avg_sq = Tensor::zeros(p.shape(), p.options());
      pending_.pop_back();
    }
    pd.fused = fused_ && detail::adam_applies(p, g, st.exp_avg, st.exp_avg_sq);
    if (!pd.fused) {
      any_unfused = true;
      workspace_.need(p);
      if (g.dtype() != p.dtype()) {
        CategoryScope scope(MemoryCategory::temporary);
        pending_.push_back(pd);
        pd.grad = Tensor::empty(p.shape(), p.options());
        copy_tensor(pd.grad, g);
        pending_.pop_back();
      }
    }
    pending_.push_back(pd);
  }
  if (any_unfused) workspace_.reserve(/*buffers=*/2, /*scalars=*/1);
}

void Adam::discard_step() noexcept {
  for (const Pending& pd : pending_)
    if (pd.made_state) state_[pd.index] = State{};
  pending_.clear();
  workspace_.clear();
}

void Adam::commit_step() {
  for (const Pending& pd : pending_) {
    const Tensor& p = params_[pd.index];
    State& st = state_[pd.index];
    st.step += 1;
    const auto t = static_cast<double>(st.step);
    const double bias_correction1 = 1.0 - std::pow(beta1_, t);
    const double bias_correction2 = 1.0 - std::pow(beta2_, t);
    if (pd.fused) {
      detail::adam_update(p, pd.grad, st.exp_avg, st.exp_avg_sq, lr_, beta1_, beta2_, eps_, weight_decay_, decoupled_,
                          bias_correction1, bias_correction2);
      continue;
    }
    update_unfused(p, pd.grad, st, bias_correction1, bias_correction2);
  }
  pending_.clear();
  workspace_.clear();
}

// The definition of the update, in Tensor-level ops on the reserved workspace: two buffers (t1, t2)
// and one scalar, refilled with each coefficient before its use.
void Adam::update_unfused(const Tensor& p, const Tensor& g, State& st, double bc1, double bc2) const {
  Backend& be = backend_for(p.device());
  const Tensor t1 = workspace_.buffer(0, p), t2 = workspace_.buffer(1, p);
  auto s = [&](double v) { return workspace_.scalar(0, p, v); };
  const Tensor& m = st.exp_avg;
  const Tensor& v = st.exp_avg_sq;
  Tensor d = g;
  if (weight_decay_ != 0) {
    if (decoupled_) {
      be.binary(BinaryOp::mul, p, s(1.0 - lr_ * weight_decay_), p);
    } else {
      be.binary(BinaryOp::mul, p, s(weight_decay_), t1);
      be.binary(BinaryOp::add, g, t1, t1);
      d = t1;
    }
  }
  be.binary(BinaryOp::mul, m, s(beta1_), m);  // m = beta1 m + (1 - beta1) d
  be.binary(BinaryOp::mul, d, s(1.0 - beta1_), t2);
  be.binary(BinaryOp::add, m, t2, m);
  be.binary(BinaryOp::mul, v, s(beta2_), v);  // v = beta2 v + (1 - beta2) d^2
  be.unary(UnaryOp::square, d, t2);
  be.binary(BinaryOp::mul, t2, s(1.0 - beta2_), t2);
  be.binary(BinaryOp::add, v, t2, v);
  be.unary(UnaryOp::sqrt, v, t2);  // denom = sqrt(v) / sqrt(bc2) + eps
  be.binary(BinaryOp::mul, t2, s(1.0 / std::sqrt(bc2)), t2);
  be.binary(BinaryOp::add, t2, s(eps_), t2);
  be.binary(BinaryOp::div, m, t2, t1);  // p -= lr / bc1 * m / denom
  be.binary(BinaryOp::mul, t1, s(-lr_ / bc1), t1);
  be.binary(BinaryOp::add, p, t1, p);
  p.bump_version();
  m.bump_version();
  v.bump_version();
}

void Adam::param_state(size_t i, std::map<std::string, Tensor>& out) const {
  detail::adam_state_entries(state_[i].exp_avg, state_[i].exp_avg_sq, state_[i].step, out);
}

std::vector<std::string> Adam::param_state_names() const { return detail::adam_state_names(); }

void Adam::set_param_state(size_t i, std::map<std::string, Tensor> state) noexcept {
  if (state.empty()) {
    state_[i] = State{};
    return;
  }
  state_[i].exp_avg = state["exp_avg"];
  state_[i].exp_avg_sq = state["exp_avg_sq"];
  state_[i].step = static_cast<int64_t>(state["step"].item<double>());
}

size_t Adam::state_nbytes() const {
  size_t n = 0;
  for (const auto& s : state_)
    if (s.exp_avg.defined()) n += s.exp_avg.nbytes() + s.exp_avg_sq.nbytes();
  return n;
}

AdamW::AdamW(std::vector<Tensor> params, double lr, double beta1, double beta2, double eps, double weight_decay)
    : Adam(std::move(params), lr, beta1, beta2, eps, weight_decay, true, "AdamW") {}

}  // namespace headroom::optim
