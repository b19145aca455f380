// Recompute checkpointing: keep fewer activations, recompute them in backward.
//
//   Tensor y = checkpoint([&](const Tensor& x) { return block->forward(x); }, x);
//   loss(y).backward();   // block's activations are recomputed here, one block at a time
//
// Note [recompute checkpointing]: checkpoint(fn, inputs...) runs fn once, with grad mode as it
// finds it, under saved-tensor hooks (Note [saved-tensor hooks]) whose pack records, for every
// tensor an op inside fn saves for backward, only its index and its shape, dtype, device and
// op -- the tensor itself is dropped, and its memory goes back to the allocator as soon as
// nothing else holds it. What the checkpoint keeps: its inputs (saved as any op saves them, so
// an enclosing checkpoint drops them too -- that is how nested checkpoints work) and the state
// the forward ran under. The graph fn built is the ordinary one: backward walks it as usual.
// At the first unpack of a dropped tensor, the frame re-runs fn on its inputs under the saved
// state with hooks whose pack fills the dropped tensors in order, and stops (by exception) at
// once when the last tensor still needed exists -- the rest of fn is not run again.
//
// The re-run reproduces the forward exactly (Note [recompute state]):
//   - random numbers: the generator's (seed, offset) at the forward is restored for the re-run
//     and put back after it, so dropout draws the same masks and later draws are unaffected;
//   - autocast (each device type's enabled flag and low dtype), grad mode (on: the ops must save
//     what they saved in the forward), and each input device's current stream;
//   - layers with running state update it once: is_recomputing() is true during a re-run and
//     batch_norm then normalises with the batch's statistics without touching the running ones;
//   - memory: the re-run allocates as temporary (not as gradient, although backward is running);
//     the tensors it hands to backward are retagged activation and live in the handle of the
//     node that saved them, so they are freed when that node has run (Note [releasing saved
//     tensors]). Under retain_graph a recomputed tensor is given out once and not kept, so a
//     second backward recomputes again instead of holding every segment's activations;
//   - the determinism check: each tensor the re-run saves is compared with what the forward
//     saved at that index (op, shape, dtype, device); a difference is an AutogradError naming
//     both ops -- the forward depended on something that changed (a global, a Python-style
//     flag, data-dependent control flow), and its gradients would silently be wrong. A re-run
//     that saves fewer tensors than the forward did fails the same way.
//
// A policy (CheckpointOptions::keep_output, Note [selective checkpointing]) may keep the
// outputs of chosen ops, so that the re-run takes them instead of running those ops again.
//
// Under no_grad (evaluation) checkpoint just calls fn: nothing would be saved.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace headroom {

using CheckpointFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& inputs)>;

struct CheckpointOptions {
  // Selective checkpointing (Note [selective checkpointing]): keep the outputs of the ops this
  // says yes to, so that the re-run takes them instead of running those ops again. Empty: none.
  std::function<bool(const char* op)> keep_output;
  // Compare what the re-run saves with what the forward saved (Note [recompute checkpointing]).
  bool determinism_check = true;
};

// The core: fn takes the inputs and returns at least one defined tensor (ValueError
// otherwise). Inputs may be undefined or not require grad.
std::vector<Tensor> checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs,
                               const CheckpointOptions& options = {});

// checkpoint(fn, a, b, ...): fn(a, b, ...) returns a Tensor or a std::vector<Tensor>, and so
// does this. fn is copied into the checkpoint and called again in backward: what it captures by
// reference (the modules, usually) must outlive backward.
template <typename Fn, typename... Ts>
requires(sizeof...(Ts) > 0 &&
         (std::is_same_v<std::remove_cvref_t<Ts>, Tensor> && ...)) auto checkpoint(Fn fn, const Ts&... inputs) {
  using R = std::invoke_result_t<Fn&, const Ts&...>;
  constexpr bool many = std::is_convertible_v<R, std::vector<Tensor>>;
  static_assert(many || std::is_convertible_v<R, Tensor>,
                "checkpoint: fn must return a Tensor or a std::vector<Tensor>");
  CheckpointFn wrapped = [fn = std::move(fn)](const std::vector<Tensor>& in) mutable -> std::vector<Tensor> {
    return [&]<size_t... I>(std::index_sequence<I...>)->std::vector<Tensor> {
      if constexpr (many) return fn(in[I]...);
      else return {Tensor(fn(in[I]...))};
    }
    (std::index_sequence_for<Ts...>{});
  };
  std::vector<Tensor> out = checkpoint(wrapped, std::vector<Tensor>{inputs...});
  if constexpr (many) return out;
  else return out.front();
}

// True while a checkpoint re-runs its function on this thread (Note [recompute state]).
bool is_recomputing();

// Note [selective checkpointing]: a per-op policy on top of the recompute. The ops that can be
// kept -- linear, conv2d and fused attention, where the flops are -- offer their outputs after
// computing them inside a checkpoint's forward (detail::offer_outputs), and the checkpoint keeps
// them when its keep_output says so. In the re-run the same ops ask first
// (detail::replay_outputs) and, for a kept output, skip their kernel and take the kept tensor:
// the re-run then costs only the cheap ops between them -- the norms, activations, dropout,
// residual adds, the reshapes around attention -- while their activations are still dropped.
// Each op still saves what it saves for backward, in the same order, so the saved-tensor indices
// line up; a replay whose op or shapes differ from the forward's is the determinism check's
// AutogradError. An output offered after the forward's last saved tensor is released when fn
// returns: the re-run stops at that save and never reaches it (a GPT block's last linear without
// dropout); linear and conv2d save their inputs before computing so that this can be seen. The
// default policy (selective_policy) keeps those three ops' outputs (Korthikanti
// et al. 2022: keep the matmuls, recompute what is cheap to recompute); the batched matmuls of
// naive attention are not kept -- they make the [B, H, T, T] scores, the largest and cheapest
// tensors, exactly what recomputation should drop.
bool selective_policy(const char* op);
// CheckpointOptions with keep_output = selective_policy.
CheckpointOptions selective_checkpoint_options();

namespace detail {
// In a selective re-run, fills *outs with the outputs the forward kept for this op and returns
// true (the op then skips its kernel); false otherwise.
bool replay_outputs(const char* op, std::initializer_list<Tensor*> outs);
// In a selective checkpoint's forward, offers the op's outputs for keeping.
void offer_outputs(const char* op, std::initializer_list<const Tensor*> outs);
}  // namespace detail

// What this thread's checkpoints did since the last reset, for tests and reports.
struct CheckpointStats {
  int64_t segments = 0;        // checkpoint calls that saved something
  int64_t dropped = 0;         // saved tensors dropped in forwards
  int64_t dropped_bytes = 0;   // their bytes, views counted at their own size
  int64_t recomputations = 0;  // re-runs of a segment's function
  int64_t recomputed = 0;      // tensors re-runs handed to backward
  int64_t kept_outputs = 0;    // op outputs a selective policy kept (Note [selective checkpointing])
  int64_t kept_output_bytes = 0;
  int64_t released_outputs = 0;  // offered after the last saved tensor: not kept (no re-run needs them)
  int64_t released_output_bytes = 0;
  int64_t replayed = 0;                                           // ops whose kernel a re-run skipped
  std::map<std::string, std::pair<int64_t, int64_t>> kept_by_op;  // op -> (outputs, bytes)
};
// "4 segments: dropped 120 saved tensors (1.20 MiB), kept 8 op outputs (512.0 KiB: linear 8 x
// 64.0 KiB) ..." -- what the policy kept and dropped, for the examples and the bench.
std::string describe(const CheckpointStats& stats);
CheckpointStats checkpoint_stats();
void reset_checkpoint_stats();

}  // namespace headroom
