// Adam / AdamW with host state (Note [optimizer offload] in offload.h).
#include "optim/offload.h"

#include <algorithm>
#include <cmath>

#include "autograd/grad_mode.h"
#include "autograd/hooks.h"
#include "autograd/offload.h"
#include "engine/backend.h"
#include "engine/caching_allocator.h"
#include "engine/memory.h"
#include "optim/adam.h"
#include "optim/fused.h"

namespace headroom::optim {

namespace {

Tensor pinned_zeros(const Shape& shape) {
  Tensor t = Tensor::empty_pinned(shape, DType::f32);
  if (t.numel() > 0 && !t.is_meta()) backend_for(t.device()).fill(t, 0.0);
  return t;
}

Stream side_stream(Device device) { return Stream{device, kOffloadStreamId}; }

}  // namespace

OffloadedAdam::OffloadedAdam(std::vector<Tensor> params, double lr, double beta1, double beta2, double eps,
                             double weight_decay)
    : OffloadedAdam(std::move(params), lr, beta1, beta2, eps, weight_decay, false, "OffloadedAdam") {}

OffloadedAdam::OffloadedAdam(std::vector<Tensor> params, double lr, double beta1, double beta2, double eps,
                             double weight_decay, bool decoupled, const char* name)
    : Optimizer(std::move(params), lr),
      name_(name),
      beta1_(beta1),
      beta2_(beta2),
      eps_(eps),
      weight_decay_(weight_decay),
      decoupled_(decoupled) {
  detail::check_adam_hyperparameters(name, beta1, beta2, eps, weight_decay);
  state_.resize(params_.size());
  // Gradients down as soon as backward has finished each (Note [optimizer offload]).
  for (size_t i = 0; i < params_.size(); ++i)
    if (params_[i].requires_grad())
      hooks_.push_back(register_post_accumulate_grad_hook(params_[i], [this, i](const Tensor& leaf) {
        if (stage(i, leaf.grad())) ++staged_in_backward_;
      }));
}

OffloadedAdam::~OffloadedAdam() {
  for (HookHandle& h : hooks_) h.remove();
}

bool OffloadedAdam::stage(size_t i, const Tensor& grad) {
  State& st = state_[i];
  if (!grad.defined()) return false;
  const std::shared_ptr<VersionCounter>& counter = grad.storage()->version_counter();
  if (st.grad_host.defined() && st.staged_counter.lock() == counter && st.staged_version == grad.version() &&
      st.grad_host.dtype() == grad.dtype())
    return false;
  if (!st.grad_host.defined() || st.grad_host.dtype() != grad.dtype() || st.grad_host.shape() != grad.shape()) {
    CategoryScope as_gradient(MemoryCategory::gradient);
    st.grad_host = Tensor::empty_pinned(grad.shape(), grad.dtype());
  }
  const Device dev = grad.device();
  if (dev.is_cuda() && !grad.is_meta()) {
    const Stream side = side_stream(dev);
    Event made;  // the gradient is final on the compute stream up to here
    made.record(current_stream(dev));
    made.wait(side);
    auto staged = std::make_unique<Event>();
    {
      StreamGuard on_side(side);
      copy_tensor(st.grad_host, grad, /*non_blocking=*/true);
      staged->record(side);
    }
    grad.record_stream(side);
    st.staged = std::move(staged);
  } else {
    copy_tensor(st.grad_host, grad);
    st.staged.reset();
  }
  st.staged_counter = counter;
  st.staged_version = grad.version();
  return true;
}

// Note [all-or-nothing step]: everything that allocates -- on the host pool too -- is here.
void OffloadedAdam::prepare_step() {
  pending_.clear();
  made_.clear();
  // The previous step's copies up read the master weights this step rewrites.
  for (const auto& e : uploaded_) e->synchronize();
  uploaded_.clear();
  for (size_t i = 0; i < params_.size(); ++i) {
    reserving_ = i;
    const Tensor& p = params_[i];
    Tensor g = checked_grad(i, name_);
    if (!g.defined()) continue;
    State& st = state_[i];
    made_.push_back(Made{i, false, false});  // so that discard_step drops what a failure leaves half made
    if (!st.exp_avg.defined()) {
      CategoryScope as_state(MemoryCategory::optimizer_state);
      Tensor m = pinned_zeros(p.shape()), v = pinned_zeros(p.shape());
      st.exp_avg = std::move(m);
      st.exp_avg_sq = std::move(v);
      made_.back().moments = true;
    }
    if (!st.master.defined()) {
      CategoryScope as_state(MemoryCategory::optimizer_state);
      Tensor master = Tensor::empty_pinned(p.shape(), DType::f32);
      {
        NoGradGuard no_grad;
        copy_tensor(master, p.detach());
      }
      st.master = std::move(master);
      made_.back().master = true;
    }
    if (stage(i, g)) ++staged_in_step_;
    if (g.dtype() != DType::f32 && (!st.grad_f32.defined() || st.grad_f32.shape() != p.shape())) {
      CategoryScope as_gradient(MemoryCategory::gradient);
      st.grad_f32 = Tensor::empty_pinned(p.shape(), DType::f32);
    }
    if (p.dtype() != DType::f32 && (!st.upload.defined() || st.upload.dtype() != p.dtype())) {
      CategoryScope as_state(MemoryCategory::optimizer_state);
      st.upload = Tensor::empty_pinned(p.shape(), p.dtype());
    }
    pending_.push_back(i);
  }
  // The host reads the gradients next: wait for their copies (the GPU's, queued by the hooks).
  for (size_t i : pending_) {
    State& st = state_[i];
    if (st.staged) {
      st.staged->synchronize();
      st.staged.reset();
    }
    if (st.grad_host.dtype() != DType::f32) copy_tensor(st.grad_f32, st.grad_host);  // a cast on the host
  }
}

void OffloadedAdam::discard_step() noexcept {
  for (const Made& md : made_) {
    State& st = state_[md.index];
    if (md.moments) {
      st.exp_avg = Tensor();
      st.exp_avg_sq = Tensor();
    }
    if (md.master) st.master = Tensor();
  }
  made_.clear();
  pending_.clear();
}

void OffloadedAdam::commit_step() {
  // The update, on the host's cores (Note [vectorised adam]).
  for (size_t i : pending_) {
    State& st = state_[i];
    st.step += 1;
    const auto t = static_cast<double>(st.step);
    const Tensor& g = st.grad_host.dtype() == DType::f32 ? st.grad_host : st.grad_f32;
    const bool done =
        detail::adam_update(st.master, g, st.exp_avg, st.exp_avg_sq, lr_, beta1_, beta2_, eps_, weight_decay_,
                            decoupled_, 1.0 - std::pow(beta1_, t), 1.0 - std::pow(beta2_, t));
    HR_CHECK(done, Error, name_, ": the host update did not apply to parameter ", i, " (", describe(st.master), ")");
  }
  // Parameters up: on a GPU on the side stream, after what the compute stream queued so far.
  NoGradGuard no_grad;
  std::vector<Device> waited;
  for (size_t i : pending_) {
    State& st = state_[i];
    const Tensor& p = params_[i];
    const Device dev = p.device();
    if (st.upload.defined()) copy_tensor(st.upload, st.master);  // to the parameter's dtype, on the host
    const Tensor& src = st.upload.defined() ? st.upload : st.master;
    if (dev.is_cuda() && !p.is_meta()) {
      if (std::find(waited.begin(), waited.end(), dev) == waited.end()) {
        Event made;
        made.record(current_stream(dev));
        made.wait(side_stream(dev));
        waited.push_back(dev);
      }
      StreamGuard on_side(side_stream(dev));
      copy_tensor(p, src, /*non_blocking=*/true);
    } else {
      copy_tensor(p, src);
    }
    p.bump_version();
  }
  for (const Device& dev : waited) {
    auto up = std::make_unique<Event>();
    up->record(side_stream(dev));
    up->wait(current_stream(dev));  // the next forward reads the new parameters; the host goes on
    uploaded_.push_back(std::move(up));
  }
  pending_.clear();
  made_.clear();
}

void OffloadedAdam::param_state(size_t i, std::map<std::string, Tensor>& out) const {
  detail::adam_state_entries(state_[i].exp_avg, state_[i].exp_avg_sq, state_[i].step, out);
}

std::vector<std::string> OffloadedAdam::param_state_names() const { return detail::adam_state_names(); }

void OffloadedAdam::set_param_state(size_t i, std::map<std::string, Tensor> state) noexcept {
  State& st = state_[i];
  st.master = Tensor();  // made again from the parameter at the next step
  if (state.empty()) {
    st.exp_avg = Tensor();
    st.exp_avg_sq = Tensor();
    st.step = 0;
    return;
  }
  st.exp_avg = state["exp_avg"];
  st.exp_avg_sq = state["exp_avg_sq"];
  st.step = state["step"].item<int64_t>();
}

void OffloadedAdam::drop_gradient_copies() noexcept {
  for (State& st : state_) {
    try {
      if (st.staged) st.staged->synchronize();  // a copy may still be landing in the buffer
    } catch (...) {  // a device error: the buffer is dropped all the same (the pool waits on its stream)
    }
    st.staged.reset();
    st.grad_host = Tensor();
    st.grad_f32 = Tensor();
    st.staged_counter.reset();
  }
}

Tensor OffloadedAdam::make_state_tensor(size_t, const Shape& shape) const {
  CategoryScope as_state(MemoryCategory::optimizer_state);
  return Tensor::empty_pinned(shape, DType::f32);
}

size_t OffloadedAdam::state_nbytes() const {
  size_t n = 0;
  for (const State& st : state_)
    for (const Tensor* t : {&st.master, &st.exp_avg, &st.exp_avg_sq, &st.grad_host, &st.grad_f32, &st.upload})
      if (t->defined()) n += t->nbytes();
  return n;
}

OffloadedAdamW::OffloadedAdamW(std::vector<Tensor> params, double lr, double beta1, double beta2, double eps,
                               double weight_decay)
    : OffloadedAdam(std::move(params), lr, beta1, beta2, eps, weight_decay, true, "OffloadedAdamW") {}

}  // namespace headroom::optim
