// Page-locked ("pinned") host memory: the backend of the pinned host pool when a GPU is present.
//
// A GPU copies to or from host memory on its own (DMA) only when that memory cannot be paged
// out; from ordinary memory the driver first copies through a pinned buffer of its own and the
// host waits. So Tensor::empty_pinned + to(device, true) is what lets a data loader's copy of
// the next batch overlap the current step, and what lets offload move tensors while the GPU
// computes. cudaHostAlloc is slow (it maps pages for every GPU) and pinned memory is taken from
// the OS for good, so the memory is cached: this backend sits under a CachingAllocator, the
// pinned host pool (Note [host pool] in engine/allocator.h), with the same pools, statistics,
// limit and out-of-memory report as a device.
//
// Note [pinned reuse]: after an asynchronous copy the host may free its pinned tensor while
// the copy still runs. copy_tensor records the copy's stream on the block (record_stream, a GPU
// stream); freeing then records an event on each such stream through this backend, and the pool
// hands the block out again only after all of them completed (Note [stream reuse]).
#pragma once

#include <memory>

#include "engine/caching_allocator.h"

namespace headroom::cuda {

class PinnedMemoryBackend final : public DeviceMemoryBackend {
 public:
  Device device() const override { return Device::cpu(); }
  void* raw_alloc(size_t nbytes) override;  // nullptr when the OS refuses
  void raw_free(void* ptr, size_t nbytes) override;
  size_t granularity() const override { return 4096; }  // pages
  // Events on GPU streams (the copies that used a block).
  uint64_t record_event(Stream stream) override;
  bool event_done(uint64_t event) override;
  void release_event(uint64_t event) override;
  void synchronize() override;  // every GPU
  bool is_host_pool() const override { return true; }
};

// The backend for the pool, when the CUDA runtime sees a GPU (set_pinned_backend_factory).
std::unique_ptr<DeviceMemoryBackend> make_pinned_backend();

}  // namespace headroom::cuda
