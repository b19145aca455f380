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
  // First everything that allocates: dense copies of strided gradients and the flags. Nothing is
  // written until all of it exists.
  std::vector<Device> devices;
  std::vector<std::vector<Tensor>> grads;
  std::vector<std::pair<Tensor, Tensor>> dense;  // (parameter, its gradient made contiguous)
  {
    NoGradGuard no_grad;
    for (const Tensor& p : optimizer.params()) {
      Tensor g = p.grad();
      if (!g.defined()) continue;
      if (!g.is_contiguous()) {  // the fused pass wants dense gradients; give the parameter one
        g = g.contiguous();
        dense.emplace_back(p, g);
      }
      size_t d = 0;
      while (d < devices.size() && !(devices[d] == g.device())) ++d;
      if (d == devices.size()) {
        devices.push_back(g.device());
        grads.emplace_back();
      }
      grads[d].push_back(g);
    }
    for (const Device& d : devices)
      s.found_inf.push_back(Tensor::zeros({1}, TensorOptions().dtype(DType::f32).device(d)));
  }
  for (const auto& [p, g] : dense) p.set_grad(g);
  const double inv_scale = 1.0 / scale_;
  for (size_t d = 0; d < devices.size(); ++d) {
    backend_for(devices[d]).unscale_and_check(grads[d], inv_scale, s.found_inf[d]);
    for (const Tensor& g : grads[d]) g.bump_version();  // written in place (Note [version counter])
  }
  this_step_.push_back(std::move(s));
}

bool GradScaler::read_found(PerOptimizer& s) {
  if (!s.read) {
    s.found = false;
    for (const Tensor& f : s.found_inf) s.found = s.found || f.item<float>() != 0.0f;  // the host read
    s.found = s.optimizer->on_any_rank(s.found);  // a sharded optimizer saw only its shard
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
  for (PerOptimizer& s : this_step_) found = read_found(s) || found;  // reads first, then changes
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

namespace headroom::optim {

std::map<std::string, Tensor> GradScaler::state_dict() const {
  return {{"scale", Tensor::scalar(scale_, DType::f64)},
          {"growth_tracker", Tensor::scalar(static_cast<double>(growth_tracker_), DType::i64)},
          {"skipped_steps", Tensor::scalar(static_cast<double>(skipped_steps_), DType::i64)}};
}

void GradScaler::load_state_dict(const std::map<std::string, Tensor>& state) {
  HR_CHECK(this_step_.empty(), ValueError,
           "GradScaler::load_state_dict: called inside a step (after unscale_ or step, before update)");
  auto get = [&](const char* key, DType dtype) {
    auto it = state.find(key);
    HR_CHECK(it != state.end() && it->second.defined() && it->second.numel() == 1 && it->second.dtype() == dtype,
             ValueError, "GradScaler::load_state_dict: no ", dtype_name(dtype), " scalar '", key, "'");
    return it->second.item<double>();
  };
  const double scale = get("scale", DType::f64);
  const double growth = get("growth_tracker", DType::i64);
  const double skipped = get("skipped_steps", DType::i64);
  HR_CHECK(state.size() == 3, ValueError, "GradScaler::load_state_dict: ", state.size() - 3,
           " entries besides scale, growth_tracker and skipped_steps");
  HR_CHECK(std::isfinite(scale) && scale > 0 && scale <= kF32Max && (options_.enabled || scale == 1.0), ValueError,
           "GradScaler::load_state_dict: 'scale' is ", scale, ", not a positive finite f32 value",
           options_.enabled ? "" : " (1 for a disabled scaler)");
  HR_CHECK(growth >= 0 && growth < static_cast<double>(options_.growth_interval) && skipped >= 0, ValueError,
           "GradScaler::load_state_dict: growth_tracker ", growth, " must be in [0, growth_interval ",
           options_.growth_interval, ") and skipped_steps ", skipped, " >= 0");
  scale_ = scale;
  growth_tracker_ = static_cast<int64_t>(growth);
  skipped_steps_ = static_cast<int64_t>(skipped);
}

}  // namespace headroom::optim
