// Page-locked ("pinned") host memory: the staging memory of asynchronous host<->GPU copies.
//
// A GPU copies to or from host memory on its own (DMA) only when that memory cannot be paged
// out; from ordinary memory the driver first copies through a pinned buffer of its own and the
// host waits. So Tensor::empty_pinned + to(device, true) is what lets a data loader's copy of
// the next batch overlap the current step. cudaHostAlloc is slow (it maps pages for every GPU)
// and pinned memory is taken from the OS for good, so blocks are cached like device memory,
// in power-of-two sizes from 4 KiB.
//
// Note [pinned reuse]: after an asynchronous copy the host may free its pinned tensor while
// the copy still runs. copy_tensor records the copy's stream on the block (record_stream);
// freeing then records an event on each such stream, and the block is reused only after all
// of them completed -- the rule the caching allocator follows for device memory.
#pragma once

#include <cuda_runtime_api.h>

#include <map>
#include <mutex>
#include <vector>

#include "engine/allocator.h"

namespace headroom::cuda {

class PinnedHostAllocator final : public Allocator {
 public:
  static constexpr size_t kMinBlock = 4096;

  PinnedHostAllocator() = default;
  ~PinnedHostAllocator() override;  // only private instances: the registered one lives forever
  PinnedHostAllocator(const PinnedHostAllocator&) = delete;
  PinnedHostAllocator& operator=(const PinnedHostAllocator&) = delete;

  Allocation allocate(size_t nbytes) override;  // OutOfMemoryError when the OS refuses
  void deallocate(const Allocation& a) override;
  Device device() const override { return Device::cpu(); }
  size_t bytes_in_use() const override;
  size_t peak_bytes_in_use() const override;
  void reset_peak() override;
  void record_stream(const Allocation& a, Stream stream) override;

  size_t cached_bytes() const;  // pinned and free (or waiting for events)
  void empty_cache();           // returns free blocks to the OS

 private:
  struct Block {
    void* ptr = nullptr;
    size_t size = 0;
    bool allocated = false;
    std::vector<Stream> uses;          // cuda streams it was used on (record_stream)
    std::vector<cudaEvent_t> pending;  // recorded at its free; reuse waits for them
  };
  void process_pending_locked();
  size_t release_free_locked();

  mutable std::mutex mu_;
  std::map<void*, Block*> blocks_;
  std::multimap<size_t, Block*> free_;
  std::vector<Block*> waiting_;
  size_t in_use_ = 0, peak_ = 0, reserved_ = 0;
};

// The registered instance (pinned_allocator() in engine/allocator.h), or nullptr without a GPU.
PinnedHostAllocator* pinned_host_allocator();

}  // namespace headroom::cuda
