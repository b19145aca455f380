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
// the tensor is on a cuda device (a backend bug otherwise).
class KernelScope {
 public:
  explicit KernelScope(const Tensor& t) : KernelScope(t.device()) {}
  explicit KernelScope(Device device);
  cudaStream_t stream() const { return stream_; }
  Device device() const { return device_; }

 private:
  Device device_;
  CudaDeviceGuard guard_;
  cudaStream_t stream_;
};

}  // namespace headroom::cuda
