// The CUDA backend's registration and the kernel scope every op opens (cuda_backend.h,
// cuda_common.cuh).
#include "kernels/cuda/cuda_backend.h"

#include "kernels/cuda/cuda_scope.h"

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
