// The cached pinned host allocator (pinned_memory.h).
#include "kernels/cuda/pinned_memory.h"

#include <algorithm>
#include <bit>

#include "engine/caching_allocator.h"
#include "engine/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_memory.h"

namespace headroom::cuda {

PinnedHostAllocator::~PinnedHostAllocator() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [ptr, block] : blocks_) {
    for (cudaEvent_t e : block->pending) (void)cudaEventDestroy(e);
    (void)cudaFreeHost(ptr);
    delete block;
  }
  (void)cudaGetLastError();
}

void PinnedHostAllocator::process_pending_locked() {
  for (size_t i = 0; i < waiting_.size();) {
    Block* b = waiting_[i];
    bool done = true;
    for (cudaEvent_t e : b->pending) {
      const cudaError_t status = cudaEventQuery(e);
      if (status == cudaErrorNotReady) {
        (void)cudaGetLastError();
        done = false;
        break;
      }
      HR_CUDA_CHECK(status);
    }
    if (!done) {
      ++i;
      continue;
    }
    for (cudaEvent_t e : b->pending) HR_CUDA_CHECK(cudaEventDestroy(e));
    b->pending.clear();
    free_.emplace(b->size, b);
    waiting_[i] = waiting_.back();
    waiting_.pop_back();
  }
}

size_t PinnedHostAllocator::release_free_locked() {
  size_t released = 0;
  for (auto& [size, block] : free_) {
    HR_CUDA_CHECK(cudaFreeHost(block->ptr));
    blocks_.erase(block->ptr);
    released += size;
    delete block;
  }
  free_.clear();
  reserved_ -= released;
  return released;
}

Allocation PinnedHostAllocator::allocate(size_t nbytes) {
  const size_t size = std::bit_ceil(std::max(nbytes, kMinBlock));
  std::lock_guard<std::mutex> lock(mu_);
  process_pending_locked();
  Block* block = nullptr;
  if (auto it = free_.find(size); it != free_.end()) {
    block = it->second;
    free_.erase(it);
  } else {
    void* ptr = nullptr;
    // Portable: usable by every GPU's copies, not only the current one's.
    cudaError_t status = cudaHostAlloc(&ptr, size, cudaHostAllocPortable);
    if (status == cudaErrorMemoryAllocation && release_free_locked() > 0) {
      (void)cudaGetLastError();
      status = cudaHostAlloc(&ptr, size, cudaHostAllocPortable);
    }
    if (status == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      throw OutOfMemoryError(str_cat("out of pinned host memory: cudaHostAlloc of ", format_bytes(static_cast<int64_t>(size)),
                                     " failed with ", format_bytes(static_cast<int64_t>(reserved_)),
                                     " pinned already; use smaller staging buffers or plain host memory"),
                            size, 0);
    }
    HR_CUDA_CHECK(status);
    block = new Block{ptr, size, false, {}, {}};
    blocks_.emplace(ptr, block);
    reserved_ += size;
  }
  block->allocated = true;
  in_use_ += size;
  peak_ = std::max(peak_, in_use_);
  return Allocation{block->ptr, nbytes, block};
}

void PinnedHostAllocator::deallocate(const Allocation& a) {
  if (a.context == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto* b = static_cast<Block*>(a.context);
  b->allocated = false;
  in_use_ -= b->size;
  // Note [pinned reuse]: copies queued on other streams may still read or write the block.
  for (const Stream& s : b->uses) {
    CudaDeviceGuard guard(s.device.index);
    cudaEvent_t e = nullptr;
    HR_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    HR_CUDA_CHECK(cudaEventRecord(e, cuda_stream(s)));
    b->pending.push_back(e);
  }
  b->uses.clear();
  if (b->pending.empty()) free_.emplace(b->size, b);
  else waiting_.push_back(b);
}

void PinnedHostAllocator::record_stream(const Allocation& a, Stream stream) {
  if (a.context == nullptr || !stream.device.is_cuda()) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto* b = static_cast<Block*>(a.context);
  if (std::find(b->uses.begin(), b->uses.end(), stream) == b->uses.end()) b->uses.push_back(stream);
}

size_t PinnedHostAllocator::bytes_in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_use_;
}
size_t PinnedHostAllocator::peak_bytes_in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peak_;
}
void PinnedHostAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  peak_ = in_use_;
}
size_t PinnedHostAllocator::cached_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reserved_ - in_use_;
}
void PinnedHostAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  process_pending_locked();
  release_free_locked();
}

PinnedHostAllocator* pinned_host_allocator() {
  static PinnedHostAllocator* instance = cuda_device_count() > 0 ? new PinnedHostAllocator() : nullptr;
  return instance;
}

namespace {
const bool g_registered = [] {
  if (PinnedHostAllocator* a = pinned_host_allocator()) set_pinned_allocator(a);
  return true;
}();
}  // namespace

}  // namespace headroom::cuda
