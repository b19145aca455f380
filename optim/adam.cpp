// Adam / AdamW: one routine, `decoupled` choosing where weight decay enters. Contiguous parameters
// take the Backend's single-pass update (fused.h); the Tensor-op path below is the definition and
// serves every other case, keeping temporaries to two parameter-sized tensors at a time.
#include "optim/adam.h"

#include <cmath>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "engine/memory.h"
#include "optim/fused.h"

namespace headroom::optim {

Adam::Adam(std::vector<Tensor> params, double lr, double beta1, double beta2, double eps, double weight_decay)
    : Adam(std::move(params), lr, beta1, beta2, eps, weight_decay, false, "Adam") {}

Adam::Adam(std::vector<Tensor> params, double lr, double beta1, double beta2, double eps, double weight_decay,
           bool decoupled, const char* name)
    : Optimizer(std::move(params), lr), beta1_(beta1), beta2_(beta2), eps_(eps), weight_decay_(weight_decay),
      decoupled_(decoupled) {
  HR_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, ValueError, name,
           ": betas must be in [0, 1), got (", beta1, ", ", beta2, ")");
  HR_CHECK(eps >= 0, ValueError, name, ": eps must be >= 0, got ", eps);
  HR_CHECK(weight_decay >= 0, ValueError, name, ": weight_decay must be >= 0, got ", weight_decay);
  state_.resize(params_.size());
}

void Adam::step() {
  NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor p = params_[i];
    const Tensor g = p.grad();
    if (!g.defined()) continue;
    State& st = state_[i];
    if (!st.exp_avg.defined()) {
      CategoryScope scope(MemoryCategory::optimizer_state);
      st.exp_avg = Tensor::zeros(p.shape(), p.options());
      st.exp_avg_sq = Tensor::zeros(p.shape(), p.options());
    }
    st.step += 1;
    const auto t = static_cast<double>(st.step);
    const double bias_correction1 = 1.0 - std::pow(beta1_, t);
    const double bias_correction2 = 1.0 - std::pow(beta2_, t);
    if (fused_ && detail::adam_update(p, g, st.exp_avg, st.exp_avg_sq, lr_, beta1_, beta2_, eps_, weight_decay_,
                                          decoupled_, bias_correction1, bias_correction2))
      continue;
    Tensor d = g;
    if (weight_decay_ != 0) {
      if (decoupled_) {
        p.mul_(1.0 - lr_ * weight_decay_);
      } else {
        d = g + p * weight_decay_;
      }
    }
    st.exp_avg.mul_(beta1_);
    st.exp_avg.add_(d, 1.0 - beta1_);
    st.exp_avg_sq.mul_(beta2_);
    st.exp_avg_sq.add_(square(d), 1.0 - beta2_);
    Tensor denom = sqrt(st.exp_avg_sq);
    denom.mul_(1.0 / std::sqrt(bias_correction2));
    denom.add_(scalar_like(denom, eps_));
    p.add_(st.exp_avg / denom, -lr_ / bias_correction1);
  }
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
