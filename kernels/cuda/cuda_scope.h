// The scope every CUDA backend op opens: its tensors' GPU made current, and the stream to
// launch on -- the device's current stream (engine/memory.h current_stream, Note [cuda streams]
// in cuda_memory.h), so that a StreamGuard moves kernels, library calls and the allocator's
// per-stream bookkeeping together. Plain C++: usable from .cpp (cuBLAS, cuDNN) and .cu files.
#pragma once

#include <cuda_runtime_api.h>

#include "engine/memory.h"
#include "engine/tensor.h"
#include "kernels/cuda/cuda_memory.h"

namespace headroom::cuda {

// The stream kernels for `device` go to: its current stream (engine/memory.h).
inline cudaStream_t stream_for(Device device) { return cuda_stream(current_stream(device)); }

// Makes a tensor's GPU current for the scope and names the stream to launch on. Checks that
// the tensor is on a cuda device (a backend bug otherwise). `name` labels the op in the op
// profile (op_profile.h): by default the function that opens the scope -- the backend method,
// "matmul" -- or what the caller passes ("binary add").
class KernelScope {
 public:
  explicit KernelScope(const Tensor& t, const char* name = __builtin_FUNCTION()) : KernelScope(t.device(), name) {}
  explicit KernelScope(Device device, const char* name = __builtin_FUNCTION());
  ~KernelScope() { profile_close(); }
  KernelScope(const KernelScope&) = delete;
  KernelScope& operator=(const KernelScope&) = delete;
  cudaStream_t stream() const { return stream_; }
  Device device() const { return device_; }

 private:
  // Note [op profile] (op_profile.cpp): events around the outermost scope while a profile runs.
  void profile_open(const char* name) noexcept;
  void profile_close() noexcept;

  Device device_;
  CudaDeviceGuard guard_;
  cudaStream_t stream_;
  int64_t profile_slot_ = -1;
  uint64_t profile_generation_ = 0;
};

}  // namespace headroom::cuda
