// Device memory on CUDA GPUs: the raw backend under each GPU's CachingAllocator, the mapping of
// headroom's Stream ids to cudaStream_t, and the device count.
//
// All tensor memory on cuda:N comes from caching_allocator(Device::cuda(N)), which this file
// registers for every GPU when the library is loaded (DESIGN.md "Memory": one CachingAllocator
// per device over a raw backend; the cpu one sits over aligned host memory). The backend is
// deliberately thin -- cudaMalloc/cudaFree, events, cudaMemGetInfo -- because every policy
// (rounding, pools, splitting, the limit, the out-of-memory report) lives in the allocator and
// is the same on every device. That is what lets a laptop run rehearse a GPU run.
//
// Note [cuda streams]: Stream{cuda:N, 0} is the legacy default stream (cudaStreamLegacy), which
// orders itself against every blocking stream. Any other id names a non-blocking stream of
// that device, created the first time cuda_stream() is asked for it and kept for the life of
// the process (destroying it at exit would race the runtime's own teardown). The allocator's
// events and, later, the CUDA backend's kernels both go through cuda_stream(), so "stream 3"
// means the same queue to both.
//
// This file is plain C++ against the CUDA runtime API: it needs the toolkit's headers and
// libcudart, not nvcc. Without a driver or GPU the library still loads: cuda_device_count()
// is 0 and no cuda allocator is registered.
//
//   if (cuda_available()) {
//     CachingAllocator& gpu = caching_allocator(Device::cuda(0));
//     Allocation a = gpu.allocate(1 << 20, Stream{Device::cuda(0), 0}, MemoryCategory::temporary);
//     ...
//     gpu.deallocate(a);  // cached: the next 1 MiB request on stream 0 reuses it
//   }
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "engine/caching_allocator.h"
#include "kernels/cuda/cuda_check.h"

namespace headroom {

// The GPUs the CUDA runtime sees (after CUDA_VISIBLE_DEVICES); 0 without a driver or a GPU.
// Asked once and remembered; never throws.
int cuda_device_count();
inline bool cuda_available() { return cuda_device_count() > 0; }

// Makes device `index` current on this thread for the scope, then restores the previous one.
class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(int index) : index_(index) {
    HR_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != index_) HR_CUDA_CHECK(cudaSetDevice(index_));
  }
  ~CudaDeviceGuard() {
    if (prev_ != index_) (void)cudaSetDevice(prev_);  // cannot throw here; it worked a moment ago
  }
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

 private:
  int index_;
  int prev_ = 0;
};

// The cudaStream_t behind `stream` (Note [cuda streams]). Throws DeviceError for a stream that
// is not on a cuda device that exists, ValueError for a negative id.
cudaStream_t cuda_stream(Stream stream);

// cudaMalloc/cudaFree on one GPU, for its CachingAllocator.
class CudaMemoryBackend final : public DeviceMemoryBackend {
 public:
  // cudaMalloc hands out memory in 2 MiB pages: a large segment rounded to this is what the
  // device really gives up, so reserved bytes match what cudaMemGetInfo sees.
  static constexpr size_t kGranularity = size_t{2} << 20;

  explicit CudaMemoryBackend(int device_index);  // touches no CUDA API until first used
  ~CudaMemoryBackend() override;
  CudaMemoryBackend(const CudaMemoryBackend&) = delete;
  CudaMemoryBackend& operator=(const CudaMemoryBackend&) = delete;

  Device device() const override { return Device::cuda(index_); }
  // nullptr when cudaMalloc reports cudaErrorMemoryAllocation; throws CudaError on anything else.
  void* raw_alloc(size_t nbytes) override;
  void raw_free(void* ptr, size_t nbytes) override;
  // Total memory of the device (cudaMemGetInfo); 0 when it cannot be asked.
  size_t capacity() const override;
  size_t granularity() const override { return kGranularity; }
  // A cudaEvent_t (timing disabled) recorded on cuda_stream(stream); events are pooled.
  uint64_t record_event(Stream stream) override;
  bool event_done(uint64_t event) override;
  void release_event(uint64_t event) override;
  void synchronize() override;  // cudaDeviceSynchronize

  // Makes every later raw_alloc throw ValueError(message). The registration uses it for a
  // HEADROOM_MEMORY_LIMIT it cannot read: it runs while the library loads, where a throw would
  // end the process, so the error waits for the first allocation on the device (the cpu
  // allocator reports the same text at its first allocation).
  void fail_allocations_with(std::string message);

 private:
  int index_;
  mutable std::once_flag capacity_once_;
  mutable size_t capacity_ = 0;
  std::mutex events_mu_;
  std::vector<cudaEvent_t> free_events_;  // released, ready to be recorded again
  std::string config_error_;
};

}  // namespace headroom
