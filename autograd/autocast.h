// Autocast: mixed precision by scope. Inside an AutocastGuard the ops of autograd/functions
// choose their compute dtype from one policy table (autocast_policy below) instead of from
// their inputs:
//
//   {
//     AutocastGuard amp(Device::cpu(), DType::bf16);   // or DeviceType::cuda, DType::f16
//     Tensor loss = cross_entropy(model->forward(x), y); // linear/conv in bf16, loss in f32
//   }                                                    // casts of the weights dropped here
//   scaler.scale(loss).backward();                       // backward outside the scope
//
// Why the policy lives in autograd/ and not in the backends or the layers: the ops here are
// where dtypes are decided (promotion, casts that record their gradient), so an op asks the
// table once at its top and casts its inputs with the differentiable cast -- gradients flow
// back through the cast to the f32 master weights, which stay f32 in the module. Backends keep
// their one-dtype contract; layers (nn::Linear, nn::Conv2d, ...) need no change.
//
// The policy, by op:
//   low   (inputs cast to the scope's f16/bf16): matmul, linear, conv2d -- the products, where
//         16-bit halves the saved activations and runs on tensor cores;
//         nn::chunked_cross_entropy (a linear and a cross-entropy in one node) asks linear's
//         and cross_entropy's entries: 16-bit gemms and chunk buffers, f32 log-sum-exp and loss;
//   f32   (16-bit inputs upcast to f32): softmax, log_softmax, layer_norm, sum, mean,
//         cross_entropy, mse_loss, exp, log, pow -- range- or accumulation-sensitive;
//   f32_params (nothing cast): batch_norm and group_norm -- their weight, bias and running
//         statistics stay f32 and both backends compute their statistics and arithmetic in f32
//         (or wider) from 16-bit data, writing the output in the data's dtype. Upcasting the input instead would keep
//         an f32 copy of every conv output for backward, and for a CNN with BatchNorm the f16
//         step then saves no activation memory at all (measured in docs/mixed-precision.md);
//         the output would be rounded to 16 bits by the next conv anyway.
//   promote (every other op): follows its inputs (promote_types), so relu of an f16 tensor is
//         f16 and f16 + f32 is f32.
// f64 tensors are never cast (autocast touches f32, f16 and bf16 only), and integer tensors
// never are.
//
// Note [autocast cast cache]: a parameter (a leaf that requires grad) cast to the low dtype is
// cast once per scope: the cast is cached, keyed by the parameter's storage, view and target
// dtype and checked against its version counter (an in-place update -- an optimizer step --
// makes it stale). The casts are allocated as MemoryCategory::parameter -- a second,
// low-precision copy of the weights, alive for the scope, independent of the batch -- so memory
// reports show it there and not among the activations. A weight used twice (tied embeddings)
// or in several micro-batches of one scope thus costs one cast and one low-precision copy. The
// cached cast's backward node is never released after backward (it saves nothing), so every
// micro-batch's backward can flow through it to the f32 weight. The cache is cleared when the outermost guard (of any device
// type, or an AutocastCacheScope) exits; it holds references, so it must not outlive a step:
// open the scope per step.
//
// Backward is best run outside the scope (as above). Inside it still gives the right gradients
// -- the engine casts each gradient to its input's dtype -- but the reductions in backward
// closures (bias gradients) then run in f32 and are cast back.
//
// The state is thread-local, like GradMode. Guards nest; an inner guard can switch autocast
// off (enabled = false) or change the dtype; leaving it restores the outer state.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/tensor.h"

namespace headroom {

enum class AutocastOp : uint8_t {
  matmul,
  linear,
  conv2d,
  softmax,
  log_softmax,
  layer_norm,
  batch_norm,
  group_norm,
  sum,
  mean,
  cross_entropy,
  mse_loss,
  exp,
  log,
  pow,
  kCount
};
enum class CastPolicy : uint8_t { low, f32, f32_params, promote };

// Note [op count]: a new AutocastOp does not build until the table in autocast.cpp knows it.
static_assert(static_cast<int>(AutocastOp::kCount) == 15, "update the policy table in autocast.cpp");
const char* autocast_op_name(AutocastOp op);
CastPolicy autocast_policy(AutocastOp op);

class AutocastGuard {
 public:
  // dtype must be f16 or bf16 (ValueError otherwise). A device stands for its type: autocast
  // applies to every tensor on a device of that type.
  AutocastGuard(DeviceType type, DType dtype, bool enabled = true);
  AutocastGuard(Device device, DType dtype, bool enabled = true);
  // Switches autocast off for `type` within the scope.
  static AutocastGuard disabled(DeviceType type);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;
  AutocastGuard(AutocastGuard&& other) noexcept;
  AutocastGuard& operator=(AutocastGuard&&) = delete;

 private:
  DeviceType type_;
  bool prev_enabled_;
  DType prev_dtype_;
  bool active_ = true;  // false once moved from
};

// Keeps the cast cache alive across several autocast scopes -- the micro-batches of one step --
// without switching autocast on itself, so that the backward passes between them (and the
// optimizer step) run as written:
//
//   AutocastCacheScope step_cache;                  // weights cast once for the whole step
//   for (micro-batch) {
//     Tensor loss;
//     { AutocastGuard amp(dev, DType::f16); loss = model(x) ...; }
//     scaler.scale(loss).backward();                // not autocast
//   }
class AutocastCacheScope {
 public:
  AutocastCacheScope();
  ~AutocastCacheScope();
  AutocastCacheScope(const AutocastCacheScope&) = delete;
  AutocastCacheScope& operator=(const AutocastCacheScope&) = delete;
};

bool autocast_enabled(DeviceType type);
// The low dtype of the innermost enabled scope for `type` (f16 outside any scope).
DType autocast_dtype(DeviceType type);

// Counters of the cast cache of this thread, for tests and memory accounting.
struct AutocastCacheStats {
  int64_t casts = 0;    // parameter casts made (each a kernel and a low-precision copy)
  int64_t hits = 0;     // parameter casts answered from the cache
  int64_t entries = 0;  // casts held now
};
AutocastCacheStats autocast_cache_stats();
void reset_autocast_cache_stats();  // zeroes casts and hits

namespace detail {

// Whether `op` must recompute with cast inputs: true, with *to the policy's dtype, when autocast
// is on for the inputs' device type, the op's policy is low or f32, and some floating input
// (f32, f16 or bf16) is not in that dtype yet. The op then calls itself again with its inputs
// through autocast_cast, which ends the recursion. Inputs may be undefined.
bool autocast_target(AutocastOp op, std::initializer_list<const Tensor*> inputs, DType* to);
// x cast (differentiably) to `to` when it is f32, f16 or bf16; otherwise x. Parameters go
// through the cast cache (Note [autocast cast cache]).
Tensor autocast_cast(const Tensor& x, DType to);

}  // namespace detail

}  // namespace headroom
