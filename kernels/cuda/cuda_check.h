// HR_CUDA_CHECK: every CUDA runtime call in headroom goes through it.
//
// A failing call becomes a CudaError (a headroom::Error) whose message names the call as
// written, the error's name and text, the file and line, and the device that was current --
// never an exit, so a program can catch it, report it and go on (STYLE.md: c10's
// C10_CUDA_CHECK, ggml's one reporter). The throwing half lives out of line
// (cuda_check.cpp): the macro expands to one compare and a cold call.
//
//   HR_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, stream));
//   -> CUDA error cudaErrorInvalidValue (invalid argument) in
//      cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, stream) at copy.cu:42 on cuda:0
//
// The runtime keeps the last error of a thread and reports it again from cudaGetLastError
// (and so from the next launch check); throwing clears it, so that one failure is reported
// once. Errors that corrupt the context (an illegal address in a kernel) are sticky and stay.
// Checks for cuBLAS, cuDNN and NCCL status codes join this file with those libraries.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "engine/error.h"

namespace headroom {

class CudaError : public Error {
 public:
  CudaError(const std::string& what, cudaError_t code) : Error(what), code_(code) {}
  cudaError_t code() const { return code_; }

 private:
  cudaError_t code_;
};

// Throws the CudaError for `code` returned by `call` (its source text) at file:line.
[[noreturn, gnu::cold]] void throw_cuda_error(cudaError_t code, const char* call, const char* file, int line);

// "cuda:1", or "no current device" when the runtime cannot say (no driver, no GPU).
std::string current_cuda_device_name();

}  // namespace headroom

// Variadic so that a call whose arguments hold a template's commas passes through whole.
#define HR_CUDA_CHECK(...)                                                             \
  do {                                                                                 \
    const cudaError_t hr_cuda_status_ = (__VA_ARGS__);                                 \
    if (hr_cuda_status_ != cudaSuccess)                                                \
      ::headroom::throw_cuda_error(hr_cuda_status_, #__VA_ARGS__, __FILE__, __LINE__); \
  } while (0)

// After every kernel launch: a bad configuration (too many threads, too much shared memory)
// is reported here, at the launch, rather than by some later unrelated call.
#define HR_CUDA_KERNEL_LAUNCH_CHECK() HR_CUDA_CHECK(cudaGetLastError())
