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
//
// Note [all-or-nothing step]: step() either updates every parameter or changes nothing -- no
// parameter, state tensor or step count -- so that an OutOfMemoryError (or any other error) in
// the middle of it can be retried, or the step given up, without a parameter updated twice or
// state left half made. It runs in two phases:
//   1. prepare_step: check each gradient against its parameter, make the state a parameter still
//      lacks and reserve every temporary the update will need. Everything that can fail is here.
//      When it throws, discard_step() drops what it made, and an OutOfMemoryError is rethrown
//      saying for which parameter it was reserving and that nothing was updated.
//   2. commit_step: update every parameter with the reserved memory, inside a NoAllocationScope
//      (engine/caching_allocator.h) -- it allocates nothing, so it cannot run out of memory.
// Optimizers built on this one (ZeRO, offloaded state) follow the same two phases.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <functional>
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

  // Note [all-or-nothing step]. Throws ShapeError/DTypeError/DeviceError for a gradient that does
  // not match its parameter, OutOfMemoryError when its state or temporaries do not fit; either
  // way nothing has changed.
  void step();
  // Drops every parameter's .grad (frees it; the next backward writes a fresh one), and any
  // copy of the gradients the optimizer keeps (OffloadedAdam's host buffers).
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

  // The optimizer's state for a training checkpoint (optim/checkpoint.h): "lr" and, per
  // parameter i that has state, "param.<i>.<name>" tensors (moments, buffers, a step count as an
  // i64 scalar), on their devices. load_state_dict takes such a map: it checks every entry
  // against its parameter (shape, dtype) first and throws ValueError naming the entry without
  // changing anything; then it replaces the whole state (copied to the parameters' devices,
  // tagged optimizer_state). A parameter without entries has no state, as before its first step.
  std::map<std::string, Tensor> state_dict() const;
  void load_state_dict(const std::map<std::string, Tensor>& state);

  // Whether `local` holds on any of the ranks this optimizer's parameters are spread over: the
  // flag itself for an optimizer that sees every gradient; a sharded one (optim/zero.h) asks
  // its peers. GradScaler agrees on an overflow through it.
  virtual bool on_any_rank(bool local) const { return local; }
  // Note [agreed failure] (nn/parallel/ddp.h): called by step() between its two phases with
  // whether this rank's prepare_step succeeded; returns whether every rank's did. When not, a
  // rank that prepared discards and throws OutOfMemoryError too, so that no rank commits alone.
  // Empty (the default): no agreement.
  void set_step_agreement(std::function<bool(bool prepared)> agree) { step_agreement_ = std::move(agree); }

 protected:
  friend class ZeroRedundancyOptimizer;  // runs an inner optimizer's phases
  // Note [all-or-nothing step]: the two phases, and the undo of the first. prepare_step may
  // throw; discard_step must not; commit_step must not allocate.
  virtual void prepare_step() = 0;
  virtual void discard_step() noexcept = 0;
  virtual void commit_step() = 0;
  // Parameter i's state for state_dict, and the per-parameter names load_state_dict expects of
  // a parameter with state (the rest of the optimizer's knowledge lives in the subclass).
  virtual void param_state(size_t i, std::map<std::string, Tensor>& out) const = 0;
  virtual std::vector<std::string> param_state_names() const = 0;
  // Replaces parameter i's state with `state` (names from param_state_names(), already checked
  // and on the parameter's device), or clears it when `state` is empty. Must not throw.
  virtual void set_param_state(size_t i, std::map<std::string, Tensor> state) noexcept = 0;
  // zero_grad's share for an optimizer that keeps gradients of its own (default: none).
  virtual void drop_gradient_copies() noexcept {}
  // Where load_state_dict puts parameter i's state tensors, and in which dtype: the parameter's
  // device and dtype by default; the host pool and f32 for offloaded state (optim/offload.h).
  virtual DType state_dtype(size_t i) const { return params_[i].dtype(); }
  virtual Tensor make_state_tensor(size_t i, const Shape& shape) const {
    return Tensor::empty(shape, params_[i].options());
  }

  // For prepare_step: the gradient of parameter i, checked against it (same shape and device;
  // a float dtype), or undefined when it has none.
  Tensor checked_grad(size_t i, const char* optimizer) const;
  // For prepare_step: i is the parameter being reserved for when an OutOfMemoryError is thrown.
  size_t reserving_ = 0;

  std::vector<Tensor> params_;
  double lr_;
  bool fused_ = true;
  std::function<bool(bool)> step_agreement_;

 private:
  void tell_peers_not_prepared() noexcept;
};

// The temporaries of the unfused update (the Tensor-op path), reserved in prepare_step so that
// commit_step allocates nothing: per (device, dtype), `buffers` flat buffers as large as the
// largest parameter that needs them, and `scalars` 0-d tensors that commit_step fills with each
// coefficient just before using it (fill allocates nothing).
class UpdateWorkspace {
 public:
  void clear() { groups_.clear(); }
  // Call for every parameter that will take the unfused path, then reserve().
  void need(const Tensor& p);
  void reserve(int buffers, int scalars);  // may throw OutOfMemoryError (then holds nothing)
  // Buffer k shaped like p (contiguous), and scalar k set to `value` and expanded to p's shape.
  Tensor buffer(int k, const Tensor& p) const;
  Tensor scalar(int k, const Tensor& p, double value) const;

 private:
  struct Group {
    Device device;
    DType dtype;
    int64_t numel = 0;
    std::vector<Tensor> buffers, scalars;
  };
  const Group& group(const Tensor& p) const;
  std::vector<Group> groups_;
};

}  // namespace headroom::optim
