// The CUDA backend's registration and the kernel scope every op opens (cuda_backend.h,
// cuda_common.cuh).
#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include "kernels/cuda/cuda_scope.h"
#include "kernels/cuda/op_profile.h"

namespace headroom::cuda {

namespace {
int cuda_index(Device device) {
  HR_CHECK(device.is_cuda(), DeviceError, "a CUDA kernel was asked to run on ", device.str());
  return device.index;
}
}  // namespace

KernelScope::KernelScope(Device device, const char* name)
    : device_(device), guard_(cuda_index(device)), stream_(stream_for(device)) {
  profile_open(name);
}

std::string CudaBackend::device_description(Device device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device.index) == cudaSuccess)
    return str_cat(prop.name, ", ", prop.totalGlobalMem >> 20, " MiB");
  return device.str();
}
DeviceProperties CudaBackend::properties(Device device) {
  DeviceProperties p;
  cudaDeviceProp prop{};
  HR_CUDA_CHECK(cudaGetDeviceProperties(&prop, device.index));
  p.name = prop.name;
  p.total_memory = static_cast<int64_t>(prop.totalGlobalMem);
  p.compute_units = prop.multiProcessorCount;
  p.capability = prop.major * 10 + prop.minor;
  return p;
}

void CudaBackend::start_op_profile() { cuda::start_op_profile(); }
std::vector<OpTime> CudaBackend::stop_op_profile() { return cuda::stop_op_profile(); }

CudaBackend& cuda_backend() {
  static CudaBackend* backend = new CudaBackend();  // never destroyed, like the allocators
  return *backend;
}

namespace {
// Registered whether or not a GPU is present: without one, no cuda tensor can be made (the
// allocator is missing and says so), so the backend is never reached.
const bool g_registered = [] {
  register_backend(DeviceType::cuda, &cuda_backend());
  return true;
}();
}  // namespace

}  // namespace headroom::cuda
