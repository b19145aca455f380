// ZeroRedundancyOptimizer: any headroom optimizer over this rank's shard of the parameters
// (Note [ZeRO stages] in nn/parallel/ddp.h).
//
//   nn::DDPOptions o;
//   o.zero_stage = 2;                                       // or 1
//   nn::DistributedDataParallel ddp(model, dist::init(), o);
//   optim::ZeroRedundancyOptimizer opt(ddp, [](std::vector<Tensor> shard) {
//     return std::make_unique<optim::AdamW>(std::move(shard), 3e-4);
//   });
//   loss.backward();          // reduce-scatters: this rank's chunk of the averaged gradients
//   opt.clip_grad_norm_(1.0); // the norm over every rank's shard
//   opt.step();               // the inner optimizer updates the chunk; every chunk is all-gathered
//
// It is an Optimizer itself, so GradScaler, BatchSplitter and the schedules take it as they are:
// its step is all-or-nothing as the inner one's is (the all-gather runs after the inner commit,
// and moves only memory that exists), its lr is handed to the inner optimizer at each step, its
// state_dict is this rank's shard of the state, and an overflow one rank's shard shows is agreed
// by every rank (on_any_rank) so that all of them skip the step together.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "nn/parallel/ddp.h"
#include "optim/optimizer.h"

namespace headroom::optim {

class ZeroRedundancyOptimizer final : public Optimizer {
 public:
  using Factory = std::function<std::unique_ptr<Optimizer>(std::vector<Tensor> shard)>;
  // ddp must have a ZeRO stage (ValueError otherwise) and outlive the optimizer.
  ZeroRedundancyOptimizer(nn::DistributedDataParallel& ddp, const Factory& make_inner);

  Optimizer& inner() { return *inner_; }
  size_t state_nbytes() const override { return inner_->state_nbytes(); }
  bool on_any_rank(bool local) const override;
  // The global L2 norm of the averaged gradients (every rank's shard; the padding is zero), and
  // each shard scaled by max_norm / (norm + 1e-6) when that is below 1 (clip.h's rule).
  double clip_grad_norm_(double max_norm);
  double grad_norm() const;

 protected:
  void prepare_step() override;
  void discard_step() noexcept override;
  void commit_step() override;
  void param_state(size_t i, std::map<std::string, Tensor>& out) const override;
  std::vector<std::string> param_state_names() const override;
  void set_param_state(size_t i, std::map<std::string, Tensor> state) noexcept override;

 private:
  nn::DistributedDataParallel& ddp_;
  std::unique_ptr<Optimizer> inner_;
};

}  // namespace headroom::optim
