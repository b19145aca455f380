// GradScaler: dynamic loss scaling for f16 training.
//
// f16 gradients underflow: values below 2^-24 become 0. Multiplying the loss by a large scale S
// multiplies every gradient by S (the chain rule is linear), lifting them into f16's range;
// before the optimizer step the f32 master gradients are divided by S again. Too large an S
// overflows instead, so S is adjusted as training runs: a step whose gradients hold inf or NaN
// is skipped and S halves; after growth_interval clean steps in a row S doubles (never past
// the f32 maximum). bf16 has f32's range and usually needs no scaler (enabled = false makes
// every method a pass-through, so one loop serves all precisions).
//
//   optim::GradScaler scaler;                       // S = 2^16, x2 every 2000 clean steps
//   for (...) {
//     opt.zero_grad();
//     AutocastCacheScope step_cache;                // weights cast once per step (autograd/autocast.h)
//     for (micro-batch m of k) {                    // gradient accumulation: one S per step
//       Tensor loss;
//       { AutocastGuard amp(dev, DType::f16); loss = cross_entropy(model->forward(x_m), y_m) / k; }
//       scaler.scale(loss).backward();
//     }
//     scaler.unscale_(opt);                         // optional: before clipping gradients
//     scaler.step(opt);                             // skipped when a gradient is inf or NaN
//     scaler.update();                              // adjusts S
//   }
//
// Every method is all-or-nothing (Note [all-or-nothing step] in optimizer.h): unscale_ makes its
// flags and any contiguous gradient copies before it writes a gradient, and step() and update()
// read the flags back without allocating, so an OutOfMemoryError leaves the scaler and the
// gradients as they were.
//
// unscale_ is one fused pass over all the optimizer's gradients per device
// (Backend::unscale_and_check: divide by S and test for inf/NaN together), writing a one-element
// flag on the device; the flag is read on the host once per step (in step(), or in update()
// when step() was not called), which on a GPU is the step's one synchronisation.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "optim/optimizer.h"

namespace headroom::optim {

struct GradScalerOptions {
  double init_scale = 65536.0;  // 2^16
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;  // clean steps in a row before the scale grows
  bool enabled = true;
};

class GradScaler {
 public:
  // Throws ValueError for a scale that is not positive and finite in f32, growth_factor <= 1,
  // backoff_factor outside (0, 1) or growth_interval < 1.
  explicit GradScaler(GradScalerOptions options = {});

  // loss * S, computed in f32 (f64 for an f64 loss) so that the product cannot overflow f16.
  // Differentiable: backward from it gives S times the gradients.
  Tensor scale(const Tensor& loss) const;
  // Divides the optimizer's gradients by S in place and records whether any is inf or NaN.
  // Once per optimizer per step: a second call before update() throws ValueError.
  void unscale_(Optimizer& optimizer);
  // unscale_ (if not done yet), then optimizer.step() unless a gradient was inf or NaN.
  // Returns whether the optimizer stepped.
  bool step(Optimizer& optimizer);
  // Ends the step: halves S after an overflow (resetting the count of clean steps), else counts
  // a clean step and grows S after growth_interval of them. Throws ValueError when no unscale_
  // or step happened since the last update().
  void update();

  // Forgets this step's unscale_ records without changing S, for a step that is given up after
  // the gradients were unscaled (BatchSplitter does this when a step fails; the caller drops the
  // gradients, which are no longer scaled). A step() whose optimizer.step() threw keeps its
  // record, so retrying step() does not divide the gradients by S twice.
  void abandon_step() { this_step_.clear(); }

  // For a training checkpoint (optim/checkpoint.h): "scale" (f64), "growth_tracker" and
  // "skipped_steps" (i64) scalars. load_state_dict checks every entry first (ValueError naming
  // it, nothing changed) and throws ValueError inside a step (after unscale_, before update()).
  std::map<std::string, Tensor> state_dict() const;
  void load_state_dict(const std::map<std::string, Tensor>& state);

  double scale() const { return scale_; }                     // S now (1 when disabled)
  int64_t growth_tracker() const { return growth_tracker_; }  // clean steps since S last changed
  int64_t skipped_steps() const { return skipped_steps_; }    // steps skipped for inf/NaN so far
  bool enabled() const { return options_.enabled; }
  const GradScalerOptions& options() const { return options_; }

 private:
  struct PerOptimizer {
    const Optimizer* optimizer = nullptr;
    std::vector<Tensor> found_inf;  // one f32 [1] flag per device, set by unscale_and_check
    bool read = false;              // found_inf read back to the host
    bool found = false;             // ... and its value
  };
  PerOptimizer* find(const Optimizer& optimizer);
  bool read_found(PerOptimizer& s);  // the step's host read of the flags

  GradScalerOptions options_;
  double scale_;
  int64_t growth_tracker_ = 0;
  int64_t skipped_steps_ = 0;
  std::vector<PerOptimizer> this_step_;  // optimizers unscaled since the last update()
};

}  // namespace headroom::optim
