// Optimizer: the base of SGD, Adam and AdamW.
//
// An optimizer holds the parameter tensors themselves (handles to the same storage as the
// model's), so make it after moving or converting the model. step() updates each parameter
// that has a .grad under NoGradGuard with in-place ops (add_, mul_, ...), so the parameters
// keep their identity and no history is recorded; parameters without a .grad are skipped.
// Per-parameter state (momentum buffers, Adam moments) is made lazily on a parameter's first
// step, with its dtype and device, tagged MemoryCategory::optimizer_state -- so a parameter that
// never gets a gradient costs no state memory.
//
//   optim::SGD opt(model->parameters(), 0.1, 0.9);
//   for (...) { opt.zero_grad(); loss = ...; loss.backward(); opt.step(); }
#pragma once

#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace headroom::optim {

class Optimizer {
 public:
  // Throws ValueError for an empty list, an undefined, non-float or non-leaf tensor, a tensor
  // listed twice, or a negative lr.
  Optimizer(std::vector<Tensor> params, double lr);
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  virtual void step() = 0;
  // Drops every parameter's .grad (frees it; the next backward writes a fresh one).
  void zero_grad();
  double lr() const { return lr_; }
  void set_lr(double lr);
  const std::vector<Tensor>& params() const { return params_; }
  // Bytes held by optimizer state (momentum buffers, moments) over all parameters.
  virtual size_t state_nbytes() const = 0;
  // On (the default), a contiguous parameter whose grad shares its dtype is updated in one
  // fused pass of its device's Backend (optim/fused.h); off, every parameter takes the generic
  // path of Tensor ops. Both compute the same formulas.
  void set_fused(bool on) { fused_ = on; }
  bool fused() const { return fused_; }

 protected:
  std::vector<Tensor> params_;
  double lr_;
  bool fused_ = true;
};

}  // namespace headroom::optim
