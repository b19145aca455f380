// cuBLAS and cuDNN: their status checks and the handles the backend uses.
//
// HR_CUBLAS_CHECK and HR_CUDNN_CHECK turn a failing status into a CudaLibraryError whose
// message names the call as written, the status, the file and line, and the current device --
// the same reporter as HR_CUDA_CHECK (cuda_check.h), so every failure reads alike.
//
// Handles: one cuBLAS and one cuDNN handle per (thread, device), made on first use and kept
// (a handle is not safe to share between threads that set different streams). Each call
// binds the handle to the stream the kernels go to (cuda_common.cuh stream_for), so library
// calls and our own kernels stay in one order. cuBLAS gets a workspace from the device's
// caching allocator, tagged workspace, instead of the one it would cudaMalloc for itself:
// its bytes then show up in headroom's memory figures (DESIGN.md "Memory").
#pragma once

#include <cublas_v2.h>
#include <cudnn.h>
#include <cuda_runtime_api.h>

#include <cstddef>

#include "engine/device.h"
#include "engine/error.h"
#include "engine/tensor.h"

namespace headroom {

class CudaLibraryError : public Error {
 public:
  using Error::Error;
};

[[noreturn, gnu::cold]] void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line);
[[noreturn, gnu::cold]] void throw_cudnn_error(cudnnStatus_t status, const char* call, const char* file, int line);

namespace cuda {

// The handles of the calling thread for `device`, bound to `stream`.
cublasHandle_t cublas_handle(Device device, cudaStream_t stream);
cudnnHandle_t cudnn_handle(Device device, cudaStream_t stream);

// Whether f32 matmuls and convolutions may use TF32 tensor cores (10-bit mantissa inputs, f32
// accumulation). Off by default, so that f32 results match the CPU's to f32 tolerance; the
// benchmarks turn it on as PyTorch's do. Returns the previous setting.
bool set_allow_tf32(bool allow);
bool allow_tf32();

// A scratch buffer from the device's caching allocator, tagged workspace, on the current
// stream; freed (returned to the cache) with the Tensor.
Tensor workspace(Device device, size_t nbytes);
// Under a MetaScope: the cuBLAS workspace a real run would hold from its first gemm on.
void meta_cublas_workspace(Device device);

}  // namespace cuda
}  // namespace headroom

#define HR_CUBLAS_CHECK(...)                                                               \
  do {                                                                                     \
    const cublasStatus_t hr_cublas_status_ = (__VA_ARGS__);                                \
    if (hr_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                        \
      ::headroom::throw_cublas_error(hr_cublas_status_, #__VA_ARGS__, __FILE__, __LINE__); \
  } while (0)

#define HR_CUDNN_CHECK(...)                                                              \
  do {                                                                                   \
    const cudnnStatus_t hr_cudnn_status_ = (__VA_ARGS__);                                \
    if (hr_cudnn_status_ != CUDNN_STATUS_SUCCESS)                                        \
      ::headroom::throw_cudnn_error(hr_cudnn_status_, #__VA_ARGS__, __FILE__, __LINE__); \
  } while (0)
