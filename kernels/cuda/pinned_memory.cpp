// The page-locked backend of the pinned host pool (pinned_memory.h).
#include "kernels/cuda/pinned_memory.h"

#include "engine/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_memory.h"

namespace headroom::cuda {

void* PinnedMemoryBackend::raw_alloc(size_t nbytes) {
  void* ptr = nullptr;
  // Portable: usable by every GPU's copies, not only the current one's.
  const cudaError_t status = cudaHostAlloc(&ptr, nbytes, cudaHostAllocPortable);
  if (status == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // the pool retries and reports; not an error to see later
    return nullptr;
  }
  HR_CUDA_CHECK(status);
  return ptr;
}

void PinnedMemoryBackend::raw_free(void* ptr, size_t) {
  const cudaError_t status = cudaFreeHost(ptr);
  if (status == cudaErrorCudartUnloading) return;  // at exit the memory goes with the process
  HR_CUDA_CHECK(status);
}

uint64_t PinnedMemoryBackend::record_event(Stream stream) {
  HR_CHECK(stream.device.is_cuda(), DeviceError, "the pinned host pool waits only for GPU streams, not for stream ",
           stream.id, " of ", stream.device.str());
  const cudaStream_t s = cuda_stream(stream);
  CudaDeviceGuard guard(stream.device.index);
  cudaEvent_t event = nullptr;
  HR_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  const cudaError_t status = cudaEventRecord(event, s);
  if (status != cudaSuccess) {
    (void)cudaEventDestroy(event);
    HR_CUDA_CHECK(status);
  }
  return reinterpret_cast<uint64_t>(event);
}

bool PinnedMemoryBackend::event_done(uint64_t event) {
  const cudaError_t status = cudaEventQuery(reinterpret_cast<cudaEvent_t>(event));
  if (status == cudaSuccess) return true;
  if (status == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  HR_CUDA_CHECK(status);
  return false;
}

void PinnedMemoryBackend::release_event(uint64_t event) {
  (void)cudaEventDestroy(reinterpret_cast<cudaEvent_t>(event));
}

void PinnedMemoryBackend::synchronize() {
  for (int i = 0; i < cuda_device_count(); ++i) {
    CudaDeviceGuard guard(i);
    HR_CUDA_CHECK(cudaDeviceSynchronize());
  }
}

std::unique_ptr<DeviceMemoryBackend> make_pinned_backend() {
  if (cuda_device_count() == 0) return nullptr;
  return std::make_unique<PinnedMemoryBackend>();
}

namespace {
const bool g_registered = [] {
  set_pinned_backend_factory(&make_pinned_backend);
  return true;
}();
}  // namespace

}  // namespace headroom::cuda
