// SGD with momentum, Nesterov momentum and L2 weight decay, as PyTorch defines them
// (dampening 0):
//   d = grad + weight_decay * p
//   buf = d on the first step, else momentum * buf + d
//   d = nesterov ? d + momentum * buf : buf           (when momentum != 0)
//   p -= lr * d
#pragma once

#include "optim/optimizer.h"

namespace headroom::optim {

class SGD : public Optimizer {
 public:
  SGD(std::vector<Tensor> params, double lr, double momentum = 0, double weight_decay = 0, bool nesterov = false);
  size_t state_nbytes() const override;
  // Parameter i's momentum buffer; undefined before its first step (or without momentum).
  const Tensor& momentum_buffer(size_t i) const { return momentum_buffers_.at(i); }
  double momentum() const { return momentum_; }
  double weight_decay() const { return weight_decay_; }
  bool nesterov() const { return nesterov_; }

 protected:
  void prepare_step() override;
  void discard_step() noexcept override;
  void commit_step() override;
  void param_state(size_t i, std::map<std::string, Tensor>& out) const override;
  std::vector<std::string> param_state_names() const override;
  void set_param_state(size_t i, std::map<std::string, Tensor> state) noexcept override;

 private:
  struct Pending {
    size_t index;
    Tensor grad;  // in the parameter's dtype for the unfused path
    bool first;   // the momentum buffer is new: it takes the first direction (made_buffer)
    bool fused;
  };
  void update_unfused(const Tensor& p, const Tensor& g, const Tensor& buf, bool first) const;

  double momentum_, weight_decay_;
  bool nesterov_;
  std::vector<Tensor> momentum_buffers_;
  std::vector<Pending> pending_;
  UpdateWorkspace workspace_;
};

}  // namespace headroom::optim
