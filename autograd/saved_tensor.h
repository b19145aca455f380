// A tensor saved for backward, with the version of its storage at the time it was saved
// (Note [version counter] in engine/storage.h), tagged in the allocator as an activation.
//
// Note [saved-tensor hooks]: every op saves what its backward needs through SavedTensor, so a
// SavedTensorHooks scope sees every saved tensor of every op. Inside the scope the constructor
// calls pack(tensor, op) -- tensor a detached alias of what the op saved, op the op's name --
// and keeps only what pack returns (a std::any: an index, a host copy, nothing at all) together
// with the scope's unpack. Backward's unpack() calls that unpack with it and uses the tensor it
// returns. What each hook is for:
//   - recompute checkpointing (autograd/checkpoint.h): pack keeps an index and drops the tensor,
//     unpack recomputes it;
//   - offload (a later issue): pack copies to the host, unpack copies back.
// The rules:
//   - scopes nest and are thread-local (like GradMode): the innermost scope of the saving thread
//     packs; a tensor saved outside every scope is kept as it is. The unpack used is the one of
//     the scope that packed, whenever and on whichever thread backward runs;
//   - while a pack hook runs, no scope is active on its thread, so the ops it runs save
//     normally and cannot recurse into it;
//   - unpack must return a defined tensor of the saved shape, dtype and device: anything else is
//     an AutogradError naming the op (a hook may not silently change what backward computes on);
//   - the version check holds across pack and unpack: the SavedTensor keeps the storage's
//     version counter (not the storage), so a write in place to the original after it was saved
//     is caught even when the original is gone, exactly as without hooks;
//   - without a scope a saved temporary is retagged activation (engine/memory.h); with one, the
//     hook decides what it keeps and how to count it.
#pragma once

#include <any>
#include <functional>
#include <memory>
#include <string>

#include "engine/tensor.h"

namespace headroom {

using PackHook = std::function<std::any(const Tensor& saved, const char* op)>;
using UnpackHook = std::function<Tensor(const std::any& packed)>;

// Installs pack and unpack for the tensors saved by this thread within the scope.
class SavedTensorHooks {
 public:
  SavedTensorHooks(PackHook pack, UnpackHook unpack);
  ~SavedTensorHooks();
  SavedTensorHooks(const SavedTensorHooks&) = delete;
  SavedTensorHooks& operator=(const SavedTensorHooks&) = delete;
  // Whether a scope is active on this thread now.
  static bool active();
};

class SavedTensor {
 public:
  SavedTensor() = default;
  // A temporary that is saved becomes an activation (engine/memory.h); parameters stay
  // parameters.
  // Holds a detached alias (same storage, no autograd state): an op that saves its own output
  // would otherwise make a cycle output -> node -> output, and a graph dropped without
  // backward would never be freed. Backward only reads the values, so nothing is lost.
  // Inside a SavedTensorHooks scope it holds what pack returned instead.
  SavedTensor(const Tensor& t, const char* op);
  // The saved tensor (through the unpack hook when it was packed); throws AutogradError naming
  // the op when it was modified in place since it was saved.
  Tensor unpack() const;
  bool defined() const { return defined_; }
  const char* op() const { return op_; }

 private:
  struct Packed;
  Tensor tensor_;                         // without hooks
  std::shared_ptr<const Packed> packed_;  // with hooks
  const char* op_ = "";
  uint64_t version_ = 0;
  bool defined_ = false;
};

}  // namespace headroom
