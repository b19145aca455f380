// GradScaler (optim/grad_scaler.h). The scale is a host double: it changes only in update(),
// after the step's one read of the found_inf flags, so keeping it on the device would save no
// synchronisation. Per-step state is kept per optimizer, so several optimizers can share one
// scaler (each unscaled once; the step is skipped for all when any saw an overflow in update).
#include "optim/grad_scaler.h"

#include <cmath>
#include <limits>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "engine/backend.h"

namespace headroom::optim {

namespace {
constexpr double kF32Max = static_cast<double>(std::numeric_limits<float>::max());
}  // namespace

GradScaler::GradScaler(GradScalerOptions options) : options_(options), scale_(options.init_scale) {
  HR_CHECK(std::isfinite(options.init_scale) && options.init_scale > 0 && options.init_scale <= kF32Max, ValueError,
           "GradScaler: init_scale must be positive and finite in f32, got ", options.init_scale);
  HR_CHECK(options.growth_factor > 1, ValueError, "GradScaler: growth_factor must be above 1, got ",
           options.growth_factor);
  HR_CHECK(options.backoff_factor > 0 && options.backoff_factor < 1, ValueError,
           "GradScaler: backoff_factor must be in (0, 1), got ", options.backoff_factor);
  HR_CHECK(options.growth_interval >= 1, ValueError, "GradScaler: growth_interval must be at least 1, got ",
           options.growth_interval);
  if (!options.enabled) scale_ = 1.0;
}

Tensor GradScaler::scale(const Tensor& loss) const {
  HR_CHECK(loss.defined(), ValueError, "GradScaler::scale: the loss is undefined");
  if (!options_.enabled) return loss;
  HR_CHECK(is_floating(loss.dtype()), DTypeError, "GradScaler::scale: the loss must be a float tensor, got ",
           describe(loss));
  return cast(loss, promote_types(loss.dtype(), DType::f32)) * scale_;
}

GradScaler::PerOptimizer* GradScaler::find(const Optimizer& optimizer) {
  for (PerOptimizer& s : this_step_)
    if (s.optimizer == &optimizer) return &s;
  return nullptr;
}

void GradScaler::unscale_(Optimizer& optimizer) {
  if (!options_.enabled) return;
  HR_CHECK(find(optimizer) == nullptr, ValueError,
           "GradScaler::unscale_: already called for this optimizer since the last update() -- the gradients "
           "would be divided by the scale twice");
  PerOptimizer s;
  s.optimizer = &optimizer;
  // The gradients, grouped by device in the order first seen.
  std::vector<Device> devices;
  std::vector<std::vector<Tensor>> grads;
  {
    NoGradGuard no_grad;
    for (const Tensor& p : optimizer.params()) {
      Tensor g = p.grad();
      if (!g.defined()) continue;
      if (!g.is_contiguous()) {  // the fused pass wants dense gradients; give the parameter one
        g = g.contiguous();
        p.set_grad(g);
      }
      size_t d = 0;
      while (d < devices.size() && !(devices[d] == g.device())) ++d;
      if (d == devices.size()) {
        devices.push_back(g.device());
        grads.emplace_back();
      }
      grads[d].push_back(g);
    }
  }
  const double inv_scale = 1.0 / scale_;
  for (size_t d = 0; d < devices.size(); ++d) {
    Tensor found = Tensor::zeros({1}, TensorOptions().dtype(DType::f32).device(devices[d]));
    backend_for(devices[d]).unscale_and_check(grads[d], inv_scale, found);
    for (const Tensor& g : grads[d]) g.bump_version();  // written in place (Note [version counter])
    s.found_inf.push_back(found);
  }
  this_step_.push_back(std::move(s));
}

bool GradScaler::read_found(PerOptimizer& s) {
  if (!s.read) {
    s.found = false;
    for (const Tensor& f : s.found_inf) s.found = s.found || f.item<float>() != 0.0f;  // the host read
    s.read = true;
  }
  return s.found;
}

bool GradScaler::step(Optimizer& optimizer) {
  if (!options_.enabled) {
    optimizer.step();
    return true;
  }
  if (find(optimizer) == nullptr) unscale_(optimizer);
  if (read_found(*find(optimizer))) {
    ++skipped_steps_;
    return false;
  }
  optimizer.step();
  return true;
}

void GradScaler::update() {
  if (!options_.enabled) return;
  HR_CHECK(!this_step_.empty(), ValueError,
           "GradScaler::update: no unscale_() or step() since the last update(), so there is no overflow check to "
           "act on");
  bool found = false;
  for (PerOptimizer& s : this_step_) found = read_found(s) || found;
  this_step_.clear();
  if (found) {
    scale_ *= options_.backoff_factor;
    growth_tracker_ = 0;
  } else if (++growth_tracker_ >= options_.growth_interval) {
    scale_ = std::min(scale_ * options_.growth_factor, kF32Max);
    growth_tracker_ = 0;
  }
}

}  // namespace headroom::optim
