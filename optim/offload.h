// Adam and AdamW with their state on the host: the moments and an f32 master copy of each
// parameter live in the pinned host pool (Note [host pool] in engine/allocator.h), the update
// runs on the host's cores, and the device keeps only the parameters and their gradients.
//
//   auto model = ...; model->to(Device::cuda());
//   optim::OffloadedAdamW opt(model->parameters(), 3e-4);   // made after the model is moved
//   for (...) { opt.zero_grad(); loss = ...; loss.backward(); opt.step(); }
//
// Note [optimizer offload]: Adam keeps two moments per parameter -- twice the parameters' bytes
// in optimizer state, the largest share of a small model's training memory after activations.
// Here that state costs the device nothing (its optimizer_state bytes are 0):
//   - gradients down: each parameter's gradient is copied into a host buffer (category gradient
//     in the pool) by a post-accumulate-gradient hook (Note [post-accumulate-gradient hooks]) as
//     soon as backward has finished it -- on a GPU on the side stream kOffloadStreamId, while
//     backward goes on with the other layers; step() copies again only a gradient changed since
//     (a later micro-batch's backward, GradScaler's unscale, clipping: the storage's version
//     counter says so). zero_grad() frees these buffers with the gradients themselves, so
//     between steps the host holds no gradient either;
//   - the update: AdamStep's formulas in the CPU's fused kernel, multithreaded and vectorised
//     (Note [vectorised adam] in kernels/cpu/optim.cpp), on the f32 master weights;
//   - parameters up: each updated master is copied into its device parameter (through a host
//     buffer in the parameter's dtype when that is not f32), on a GPU on the side stream, and the
//     compute stream waits for those copies before the next forward (the host does not).
// On the cpu devices the copies are made in place of the transfers, so the bytes move between
// the device's allocator and the host pool as they would on a GPU.
// The step is all-or-nothing (Note [all-or-nothing step]): prepare_step makes the host state a
// parameter lacks and stages the gradients -- everything that can run out of memory, the host
// pool's included -- and commit_step only computes and copies. With f32 parameters the result is
// AdamW's on the device, bit for bit (the same kernel on the same values). The state_dict has
// Adam's names and shapes (its tensors f32 on the host), so checkpoints move between Adam and
// OffloadedAdam both ways; the master weights are made again from the parameters after a load.
#pragma once

#include <memory>

#include "autograd/node.h"
#include "engine/event.h"
#include "optim/optimizer.h"

namespace headroom::optim {

class OffloadedAdam : public Optimizer {
 public:
  OffloadedAdam(std::vector<Tensor> params, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999,
                double eps = 1e-8, double weight_decay = 0);
  ~OffloadedAdam() override;
  // Bytes in the host pool: moments, master weights and gradient buffers.
  size_t state_nbytes() const override;
  // Parameter i's state on the host (undefined before its first step).
  const Tensor& exp_avg(size_t i) const { return state_.at(i).exp_avg; }
  const Tensor& exp_avg_sq(size_t i) const { return state_.at(i).exp_avg_sq; }
  const Tensor& master(size_t i) const { return state_.at(i).master; }
  int64_t step_count(size_t i) const { return state_.at(i).step; }
  // Gradients staged by the backward hooks, and by step() (changed since, or never staged).
  int64_t gradients_staged_in_backward() const { return staged_in_backward_; }
  int64_t gradients_staged_in_step() const { return staged_in_step_; }

 protected:
  OffloadedAdam(std::vector<Tensor> params, double lr, double beta1, double beta2, double eps, double weight_decay,
                bool decoupled, const char* name);
  void prepare_step() override;
  void discard_step() noexcept override;
  void commit_step() override;
  void param_state(size_t i, std::map<std::string, Tensor>& out) const override;
  std::vector<std::string> param_state_names() const override;
  void set_param_state(size_t i, std::map<std::string, Tensor> state) noexcept override;
  DType state_dtype(size_t) const override { return DType::f32; }
  // The host gradient buffers go with the gradients (zero_grad), as .grad does.
  void drop_gradient_copies() noexcept override;
  Tensor make_state_tensor(size_t i, const Shape& shape) const override;

 private:
  struct State {
    Tensor master, exp_avg, exp_avg_sq;  // f32, host pool, optimizer_state
    Tensor grad_host;                    // the gradient's dtype, host pool, gradient
    Tensor grad_f32;                     // f32 when the gradient is not (else grad_host)
    Tensor upload;                       // the parameter's dtype when that is not f32
    int64_t step = 0;
    // Which gradient storage, at which version, is staged: its version counter, held weakly so
    // that a new gradient whose storage took the old one's address is not mistaken for it.
    std::weak_ptr<VersionCounter> staged_counter;
    uint64_t staged_version = 0;
    std::unique_ptr<Event> staged;  // GPU: the copy down has finished
  };
  struct Made {  // what prepare_step made for one parameter (discard_step drops it)
    size_t index;
    bool moments, master;
  };
  // Copies parameter i's gradient into its host buffer (making it if needed) unless that very
  // gradient is staged already. Returns whether it copied.
  bool stage(size_t i, const Tensor& grad);

  const char* name_;
  double beta1_, beta2_, eps_, weight_decay_;
  bool decoupled_;
  std::vector<State> state_;
  std::vector<size_t> pending_;  // parameters this step updates
  std::vector<Made> made_;       // what prepare_step made (discard_step drops it)
  std::vector<HookHandle> hooks_;
  std::vector<std::unique_ptr<Event>> uploaded_;  // GPU: the previous step's copies up, per device
  int64_t staged_in_backward_ = 0, staged_in_step_ = 0;
};

class OffloadedAdamW : public OffloadedAdam {
 public:
  OffloadedAdamW(std::vector<Tensor> params, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999,
                 double eps = 1e-8, double weight_decay = 0.01);
};

}  // namespace headroom::optim
