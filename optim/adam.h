// Adam and AdamW with bias correction, as PyTorch defines them. For parameter p at its step t:
//   Adam:  d = grad + weight_decay * p               (L2 decay through the gradient)
//   AdamW: p *= 1 - lr * weight_decay; d = grad       (decoupled decay)
//   m = beta1 m + (1 - beta1) d
//   v = beta2 v + (1 - beta2) d^2
//   p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// t counts the steps in which p had a gradient.
#pragma once

#include "optim/optimizer.h"

namespace headroom::optim {

class Adam : public Optimizer {
 public:
  Adam(std::vector<Tensor> params, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8,
       double weight_decay = 0);
  size_t state_nbytes() const override;
  // Parameter i's moments (undefined before its first step) and step count.
  const Tensor& exp_avg(size_t i) const { return state_.at(i).exp_avg; }
  const Tensor& exp_avg_sq(size_t i) const { return state_.at(i).exp_avg_sq; }
  int64_t step_count(size_t i) const { return state_.at(i).step; }

 protected:
  Adam(std::vector<Tensor> params, double lr, double beta1, double beta2, double eps, double weight_decay,
       bool decoupled, const char* name);

  void prepare_step() override;
  void discard_step() noexcept override;
  void commit_step() override;
  void param_state(size_t i, std::map<std::string, Tensor>& out) const override;
  std::vector<std::string> param_state_names() const override;
  void set_param_state(size_t i, std::map<std::string, Tensor> state) noexcept override;

 private:
  struct State {
    Tensor exp_avg, exp_avg_sq;
    int64_t step = 0;
  };
  // One parameter's part of the step being prepared.
  struct Pending {
    size_t index;
    Tensor grad;      // the gradient; in the parameter's dtype for the unfused path
    bool made_state;  // its moments were made by this step (discard_step drops them)
    bool fused;
  };
  void update_unfused(const Tensor& p, const Tensor& g, State& st, double bc1, double bc2) const;

  const char* name_;
  double beta1_, beta2_, eps_, weight_decay_;
  bool decoupled_;
  std::vector<State> state_;
  std::vector<Pending> pending_;
  UpdateWorkspace workspace_;
};

namespace detail {
// Shared with OffloadedAdam (optim/offload.h), whose checkpoints are Adam's.
void check_adam_hyperparameters(const char* name, double beta1, double beta2, double eps, double weight_decay);
// A parameter's Adam state as state_dict entries: "exp_avg", "exp_avg_sq" and "step" (an i64
// scalar); nothing before its first step (exp_avg undefined).
void adam_state_entries(const Tensor& exp_avg, const Tensor& exp_avg_sq, int64_t step,
                        std::map<std::string, Tensor>& out);
std::vector<std::string> adam_state_names();
}  // namespace detail

class AdamW : public Adam {
 public:
  AdamW(std::vector<Tensor> params, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8,
        double weight_decay = 0.01);
};

}  // namespace headroom::optim
