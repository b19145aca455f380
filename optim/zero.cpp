// ZeroRedundancyOptimizer: the inner optimizer's phases, then the all-gather (optim/zero.h).
#include "optim/zero.h"

#include <cmath>

#include "autograd/grad_mode.h"
#include "optim/clip.h"

namespace headroom::optim {

namespace {
std::vector<Tensor> shards_of(nn::DistributedDataParallel& ddp) {
  HR_CHECK(ddp.zero_stage() > 0, ValueError, "ZeroRedundancyOptimizer: the DistributedDataParallel has no ZeRO stage ",
           "(set DDPOptions::zero_stage to 1 or 2)");
  return ddp.shard_parameters();
}
}  // namespace

ZeroRedundancyOptimizer::ZeroRedundancyOptimizer(nn::DistributedDataParallel& ddp, const Factory& make_inner)
    : Optimizer(shards_of(ddp), 0.0), ddp_(ddp) {
  HR_CHECK(make_inner, ValueError, "ZeroRedundancyOptimizer: the factory is empty");
  inner_ = make_inner(params_);
  HR_CHECK(inner_, ValueError, "ZeroRedundancyOptimizer: the factory made no optimizer");
  HR_CHECK(inner_->params().size() == params_.size(), ValueError, "ZeroRedundancyOptimizer: the inner optimizer ",
           "must be made over exactly the shard it is given (", params_.size(), " tensors), got ",
           inner_->params().size());
  for (size_t i = 0; i < params_.size(); ++i)
    HR_CHECK(inner_->params()[i].is_same(params_[i]), ValueError, "ZeroRedundancyOptimizer: the inner optimizer's ",
             "parameter ", i, " is not the shard it was given");
  set_lr(inner_->lr());
  // The commit all-gathers: no rank may commit while another discards (Note [agreed failure]).
  set_step_agreement([this](bool prepared) { return on_any_rank(!prepared) == false; });
}

bool ZeroRedundancyOptimizer::on_any_rank(bool local) const {
  return ddp_.reduce_scalar(local ? 1.0 : 0.0, dist::ReduceOp::max) != 0.0;
}

double ZeroRedundancyOptimizer::grad_norm() const {
  const double local = optim::grad_norm(params_);
  return std::sqrt(ddp_.reduce_scalar(local * local, dist::ReduceOp::sum));
}

double ZeroRedundancyOptimizer::clip_grad_norm_(double max_norm) {
  HR_CHECK(max_norm > 0, ValueError, "clip_grad_norm_: max_norm must be positive, got ", max_norm);
  const double norm = grad_norm();
  if (!std::isfinite(norm)) return norm;
  const double factor = max_norm / (norm + 1e-6);
  if (factor < 1) {
    NoGradGuard no_grad;
    for (const Tensor& p : params_)
      if (Tensor g = p.grad(); g.defined()) g.mul_(factor);
  }
  return norm;
}

void ZeroRedundancyOptimizer::prepare_step() {
  inner_->set_lr(lr());
  inner_->set_fused(fused());
  inner_->reserving_ = 0;
  try {
    inner_->prepare_step();
  } catch (...) {
    reserving_ = inner_->reserving_;
    throw;
  }
}

void ZeroRedundancyOptimizer::discard_step() noexcept { inner_->discard_step(); }

void ZeroRedundancyOptimizer::commit_step() {
  inner_->commit_step();
  ddp_.gather_parameters();  // every rank's updated chunk into every rank's parameters
}

void ZeroRedundancyOptimizer::param_state(size_t i, std::map<std::string, Tensor>& out) const {
  inner_->param_state(i, out);
}

std::vector<std::string> ZeroRedundancyOptimizer::param_state_names() const { return inner_->param_state_names(); }

void ZeroRedundancyOptimizer::set_param_state(size_t i, std::map<std::string, Tensor> state) noexcept {
  inner_->set_param_state(i, std::move(state));
}

}  // namespace headroom::optim
