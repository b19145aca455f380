// The schedules are pure functions of the step count (lr_at); the base class only counts and
// writes the optimizer's lr, so a schedule can be inspected or plotted without training.
#include "optim/lr_scheduler.h"

#include <cmath>
#include <numbers>

namespace headroom::optim {

LRScheduler::LRScheduler(Optimizer& optimizer)
    : optimizer_(optimizer), base_lr_(optimizer.lr()), last_lr_(optimizer.lr()) {}

void LRScheduler::start() {
  last_lr_ = lr_at(0);
  optimizer_.set_lr(last_lr_);
}

void LRScheduler::step() {
  ++step_;
  last_lr_ = lr_at(step_);
  optimizer_.set_lr(last_lr_);
}

void LRScheduler::restore(int64_t step) {
  HR_CHECK(step >= 0, ValueError, "LRScheduler::restore: step must be >= 0, got ", step);
  step_ = step;
  last_lr_ = lr_at(step_);
  optimizer_.set_lr(last_lr_);
}

StepLR::StepLR(Optimizer& optimizer, int64_t step_size, double gamma)
    : LRScheduler(optimizer), step_size_(step_size), gamma_(gamma) {
  HR_CHECK(step_size > 0, ValueError, "StepLR: step_size must be positive, got ", step_size);
  HR_CHECK(gamma > 0, ValueError, "StepLR: gamma must be positive, got ", gamma);
  start();
}

double StepLR::lr_at(int64_t step) const { return base_lr_ * std::pow(gamma_, static_cast<double>(step / step_size_)); }

CosineWithWarmup::CosineWithWarmup(Optimizer& optimizer, int64_t warmup_steps, int64_t total_steps, double min_lr)
    : LRScheduler(optimizer), warmup_steps_(warmup_steps), total_steps_(total_steps), min_lr_(min_lr) {
  HR_CHECK(warmup_steps >= 0 && total_steps > warmup_steps, ValueError,
           "CosineWithWarmup: need 0 <= warmup_steps < total_steps, got warmup_steps=", warmup_steps,
           ", total_steps=", total_steps);
  HR_CHECK(min_lr >= 0 && min_lr <= base_lr_, ValueError, "CosineWithWarmup: min_lr must be in [0, base lr ", base_lr_,
           "], got ", min_lr);
  start();
}

double CosineWithWarmup::lr_at(int64_t step) const {
  if (step < warmup_steps_) return base_lr_ * static_cast<double>(step) / static_cast<double>(warmup_steps_);
  if (step > total_steps_) return min_lr_;
  const double progress = static_cast<double>(step - warmup_steps_) / static_cast<double>(total_steps_ - warmup_steps_);
  return min_lr_ + (base_lr_ - min_lr_) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

}  // namespace headroom::optim
