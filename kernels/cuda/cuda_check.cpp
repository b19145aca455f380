// The out-of-line half of HR_CUDA_CHECK (cuda_check.h): builds the message and throws.
#include "kernels/cuda/cuda_check.h"

#include "engine/device.h"
#include "kernels/cuda/cuda_memory.h"

namespace headroom {

std::string current_cuda_device_name() {
  // Without a driver or a GPU the runtime may still answer "device 0"; say what is true.
  if (cuda_device_count() == 0) return "no CUDA device";
  int device = -1;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return "no current device";
  }
  return Device::cuda(device).str();
}

void throw_cuda_error(cudaError_t code, const char* call, const char* file, int line) {
  // Clear the thread's last error so that the next launch check does not report this one again
  // (a sticky error stays: the context is lost and every later call fails with it anyway).
  (void)cudaGetLastError();
  throw CudaError(str_cat("CUDA error ", cudaGetErrorName(code), " (", cudaGetErrorString(code), ") in ", call, " at ",
                          file, ":", line, " on ", current_cuda_device_name()),
                  code);
}

}  // namespace headroom
