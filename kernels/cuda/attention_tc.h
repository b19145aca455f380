// Fused attention on tensor cores (kernels/cuda/attention_tc.cu), for the shapes that dominate
// transformer training: f16/bf16 with head dim 64 or 128 on an sm_80+ GPU. Everything else --
// f32, f64, other head dims, older GPUs, views whose data is not 16-byte aligned -- runs on the
// CUDA-core kernels of attention.cu, which hold the same contract (engine/backend.h).
//
// The switch is public so that a benchmark or a test can compare the two kernels on one GPU:
//   cuda::set_attention_tensor_cores(false);   // every call takes the CUDA-core kernels
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "engine/device.h"
#include "engine/dtype.h"

namespace headroom::cuda {

// Whether fused attention may use the tensor-core kernels (on by default). Returns the
// previous setting. Process-wide.
bool set_attention_tensor_cores(bool allow);

// Whether a call with this dtype and head dim on `device` takes the tensor-core kernels now
// (the switch is on, the GPU is sm_80 or newer, the kernels were compiled for it, and the
// shape is one they handle). Data alignment is checked per call as well.
bool attention_uses_tensor_cores(Device device, DType dtype, int64_t head_dim);

namespace attention_tc {

// Raw launches, for attention.cu once it has checked the contract. q, k, v, out, dout, dq, dk,
// dv: [bh, t, d] contiguous of `dtype`, 16-byte aligned; lse: [bh, t] f32 (natural log);
// drow: [bh, t] f32, rowsum(dout * out).
struct Geometry {
  int64_t bh;
  int t, d;
};
void forward(cudaStream_t stream, DType dtype, const Geometry& g, const void* q, const void* k, const void* v,
             void* out, float* lse, float scale, bool causal);
void backward(cudaStream_t stream, DType dtype, const Geometry& g, const void* q, const void* k, const void* v,
              const void* dout, const float* lse, const float* drow, void* dq, void* dk, void* dv, float scale,
              bool causal);

}  // namespace attention_tc
}  // namespace headroom::cuda
