// Activation offload: keep what forward saves for backward in the pinned host pool, not on the
// device, and bring it back ahead of use.
//
//   {
//     ActivationOffload offload({.min_bytes = 1 << 20});
//     loss = model->forward(x);       // saved tensors of 1 MiB or more go to the host
//   }
//   loss.backward();                   // they come back one segment ahead of the nodes that need them
//
// Note [activation offload]: inside the scope a saved-tensor hook (Note [saved-tensor hooks])
// packs every saved tensor whose storage is an activation or temporary of a device, of at least
// min_bytes, by copying the whole storage into the pinned host pool (Note [host pool] in
// engine/allocator.h, category activation) and keeping only that copy: the device's bytes go back
// to its allocator as soon as the program drops the op's output. Parameters, tensors already on
// the host and small tensors are saved as usual. A storage saved by several ops (a ReLU's output
// saved by the ReLU and by the next matmul) is copied once: the copies are shared by storage.
//   - Forward, on a GPU: the copy to the host is queued on a side stream (Stream id
//     kOffloadStreamId) after an event of the compute stream, so compute does not wait; the
//     device block records that stream, so the allocator does not hand it out before the copy
//     has read it (Note [stream reuse]).
//   - Backward: the saved tensors are grouped, in the order they were saved, into segments of
//     about segment_bytes. Every node that saved an offloaded tensor gets a pre-hook (through
//     Note [node-recorded hooks]) that, when backward reaches it, makes sure its own segment is on
//     the device and starts bringing the segment before it (saved earlier, needed next) back on
//     the side stream: a prefetch one segment ahead. The unpack of a tensor makes the compute
//     stream wait for its copy (the host does not). A tensor whose segment was not fetched ahead
//     (a graph walked in an unusual order) is fetched at its unpack, and counted.
//   - The device copy lives while any node that saved it has not run (Note [releasing saved
//     tensors]); it is allocated as activation, on the compute stream.
//   - Gradients are those of the run without offload, bit for bit: the bytes go to the host and
//     come back unchanged. The version check holds (the saved tensor keeps the storage's counter).
//   - On the cpu devices copies are made in place of the transfer (there are no streams): the
//     bytes leave the device's allocator and arrive in the host pool exactly as on a GPU, so
//     limits and peaks behave as they would; the time a GPU would spend is headroom-plan's to
//     predict (docs/offload.md).
//   - With checkpointing: a checkpoint inside the scope saves its inputs as any op does, so they
//     are offloaded too -- the checkpoints themselves go to the host, and backward recomputes
//     each segment from inputs brought back ahead of it.
//   - Under a MetaScope the host copies come from the scope's host pool (MetaScope::host_pool),
//     so the prediction shows both sides.
// The scope is thread-local (saved-tensor hooks are); the state the packed tensors need outlives
// it, so backward may run after the scope closed, as usual.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "engine/tensor.h"

namespace headroom {

// The side stream of offload copies on each GPU (Note [activation offload]).
inline constexpr int64_t kOffloadStreamId = 0x4f46;  // "OF"

struct ActivationOffloadOptions {
  // Saved tensors whose storage is smaller than this stay on the device.
  size_t min_bytes = size_t{1} << 20;
  // The unit of prefetch: a segment closes once its offloaded bytes reach this (0: every node
  // that saved an offloaded tensor is a segment of its own).
  size_t segment_bytes = size_t{4} << 20;
  // Off: every tensor comes back at its unpack (the least device memory, the most waiting).
  bool prefetch = true;
};

struct ActivationOffloadStats {
  int64_t tensors = 0;         // saved tensors packed to the host
  int64_t storages = 0;        // distinct storages copied (tensors - storages were shared)
  int64_t bytes = 0;           // bytes copied to the host
  int64_t kept_on_device = 0;  // saved tensors below min_bytes, parameters or host tensors
  int64_t segments = 0;
  int64_t prefetched = 0;      // storages brought back ahead of their use
  int64_t fetched_at_use = 0;  // storages brought back at their unpack
};

class ActivationOffload {
 public:
  explicit ActivationOffload(ActivationOffloadOptions options = {});
  ~ActivationOffload();
  ActivationOffload(const ActivationOffload&) = delete;
  ActivationOffload& operator=(const ActivationOffload&) = delete;

  // Counts so far, for this scope's saved tensors (backward's fetches included).
  ActivationOffloadStats stats() const;

  struct State;

 private:
  std::shared_ptr<State> state_;
  struct Scopes;
  std::unique_ptr<Scopes> scopes_;
};

}  // namespace headroom
