// Learning-rate schedules. A scheduler reads the optimizer's lr when it is made (the base lr),
// sets the lr for step 0 at once, and each step() advances its counter and sets the next one.
// The unit of a step is the caller's: call step() once per epoch for StepLR as in PyTorch, and
// once per optimizer step (after opt.step()) for CosineWithWarmup.
//
//   optim::AdamW opt(model->parameters(), 6e-4);
//   optim::CosineWithWarmup sched(opt, 100, 5000, 6e-5);
//   for (int64_t it = 0; it < 5000; ++it) { ...; opt.step(); sched.step(); }
#pragma once

#include <cstdint>

#include "optim/optimizer.h"

namespace headroom::optim {

class LRScheduler {
 public:
  explicit LRScheduler(Optimizer& optimizer);
  virtual ~LRScheduler() = default;
  // Advances one step and sets the optimizer's lr to lr_at(the new step count).
  virtual void step();
  double last_lr() const { return last_lr_; }  // the lr most recently set
  int64_t last_step() const { return step_; }  // steps taken so far
  double base_lr() const { return base_lr_; }
  // The schedule itself: the lr after `step` steps.
  virtual double lr_at(int64_t step) const = 0;
  // Resumes at `step` steps taken (a training checkpoint): sets the optimizer's lr to
  // lr_at(step). Throws ValueError for a negative step.
  void restore(int64_t step);

 protected:
  // Subclasses call this at the end of their constructor (lr_at needs their members).
  void start();

  Optimizer& optimizer_;
  double base_lr_;
  int64_t step_ = 0;
  double last_lr_;
};

// lr = base * gamma^floor(step / step_size).
class StepLR : public LRScheduler {
 public:
  StepLR(Optimizer& optimizer, int64_t step_size, double gamma = 0.1);
  double lr_at(int64_t step) const override;

 private:
  int64_t step_size_;
  double gamma_;
};

// Linear warm-up from 0 to base over warmup_steps, then a half cosine from base down to min_lr
// at total_steps, then min_lr:
//   step < warmup:          base * step / warmup
//   warmup <= step <= total: min + (base - min) * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2
//   step > total:           min
class CosineWithWarmup : public LRScheduler {
 public:
  CosineWithWarmup(Optimizer& optimizer, int64_t warmup_steps, int64_t total_steps, double min_lr = 0);
  double lr_at(int64_t step) const override;

 private:
  int64_t warmup_steps_, total_steps_;
  double min_lr_;
};

}  // namespace headroom::optim
