// Synchronisation and events on CUDA devices (engine/event.h): thin, checked wrappers over
// cudaStreamSynchronize, cudaDeviceSynchronize and cudaEvent*. An event id is the cudaEvent_t.
#include <cuda_runtime_api.h>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_memory.h"

namespace headroom::cuda {
namespace {
cudaEvent_t as_event(uint64_t event) {
  HR_CHECK(event != 0, ValueError, "CUDA event used before it was made");
  return reinterpret_cast<cudaEvent_t>(event);
}
}  // namespace

void CudaBackend::synchronize(Stream stream) {
  CudaDeviceGuard guard(stream.device.index);
  HR_CUDA_CHECK(cudaStreamSynchronize(cuda_stream(stream)));
}

void CudaBackend::synchronize_device(Device device) {
  CudaDeviceGuard guard(device.index);
  HR_CUDA_CHECK(cudaDeviceSynchronize());
}

uint64_t CudaBackend::event_create(Device device, bool timing) {
  CudaDeviceGuard guard(device.index);
  cudaEvent_t event = nullptr;
  HR_CUDA_CHECK(cudaEventCreateWithFlags(&event, timing ? cudaEventDefault : cudaEventDisableTiming));
  return reinterpret_cast<uint64_t>(event);
}

void CudaBackend::event_destroy(Device device, uint64_t event) {
  CudaDeviceGuard guard(device.index);
  const cudaError_t status = cudaEventDestroy(as_event(event));
  if (status == cudaErrorCudartUnloading) return;  // at exit the runtime may already be gone
  HR_CUDA_CHECK(status);
}

void CudaBackend::event_record(uint64_t event, Stream stream) {
  CudaDeviceGuard guard(stream.device.index);
  HR_CUDA_CHECK(cudaEventRecord(as_event(event), cuda_stream(stream)));
}

void CudaBackend::event_wait(uint64_t event, Stream stream) {
  CudaDeviceGuard guard(stream.device.index);
  HR_CUDA_CHECK(cudaStreamWaitEvent(cuda_stream(stream), as_event(event), 0));
}

void CudaBackend::event_synchronize(uint64_t event) { HR_CUDA_CHECK(cudaEventSynchronize(as_event(event))); }

bool CudaBackend::event_query(uint64_t event) {
  const cudaError_t status = cudaEventQuery(as_event(event));
  if (status == cudaSuccess) return true;
  if (status == cudaErrorNotReady) {
    (void)cudaGetLastError();  // "not yet" is an answer, not an error to report later
    return false;
  }
  HR_CUDA_CHECK(status);
  return false;
}

double CudaBackend::event_elapsed_ms(uint64_t start, uint64_t end) {
  float ms = 0;
  HR_CUDA_CHECK(cudaEventElapsedTime(&ms, as_event(start), as_event(end)));
  return ms;
}

}  // namespace headroom::cuda
