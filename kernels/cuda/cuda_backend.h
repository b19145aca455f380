// The CUDA backend: every Backend op on NVIDIA GPUs, one op family a file in this folder.
//
//   copy.cu        copy and cast, host<->device, fill, arange, Philox random (same numbers as cpu)
//   elementwise.cu unary, binary, where
//   reduce.cu      sum, mean, max, min, argmax, argmin
//   matmul.cpp     cuBLAS (tensor cores for f16/bf16, TF32 for f32 behind set_allow_tf32)
//   conv.cpp       cuDNN convolution with its algorithm search, workspace counted as workspace
//   pool.cu        max and average pooling
//   softmax.cu     softmax, log-softmax, fused cross-entropy
//   layer_norm.cu  layer norm
//   batch_norm.cpp cuDNN batch norm
//   group_norm.cu  group norm (own kernels: a block per (n, group), a block per channel)
//   optim.cu       fused SGD and Adam updates
//   amp.cu         fused unscale-and-check of gradients (GradScaler)
//   index.cu       index_select, index_add
//   attention.cu   fused causal attention (online softmax, no T x T scores)
//   streams.cpp    synchronisation and events (engine/event.h)
// and beside them: cuda_common.cuh (device types, dispatch, strided indexing, launching),
// cuda_scope.h (device + current stream), cuda_libs.* (cuBLAS/cuDNN handles and checks, TF32
// switch, workspaces), cudnn_util.* (descriptors, the conv algorithm cache, cudnn switches),
// dnn_kernels.* (own kernels conv.cpp and batch_norm.cpp launch), pinned_memory.* (the
// page-locked host allocator behind Tensor::empty_pinned), cuda_memory.* (device memory).
//
// f16 and bf16 are computed and accumulated in f32 (cuda_common.cuh). Every kernel runs on the
// current stream of its tensors' device; every CUDA, cuBLAS and cuDNN call is checked and every
// launch is followed by a launch check (cuda_check.h, cuda_libs.h).
#pragma once

#include "engine/backend.h"

namespace headroom::cuda {

class CudaBackend final : public Backend {
 public:
  // Under meta execution (engine/meta.h) matmul runs to its operand copies and the cuBLAS
  // workspace, attention backward to its scratch; the other kernels are skipped.
  CudaBackend() : Backend(OpSet::all(), OpSet{OpId::matmul, OpId::attention_backward}) {}
  DeviceType device_type() const override { return DeviceType::cuda; }

  void copy_to_host(void* host_dst, const void* src, size_t nbytes, Device device, bool non_blocking) override;
  void copy_from_host(void* dst, const void* host_src, size_t nbytes, Device device, bool non_blocking) override;

  // streams.cpp
  void synchronize(Stream stream) override;
  void synchronize_device(Device device) override;
  uint64_t event_create(Device device, bool timing) override;
  void event_destroy(Device device, uint64_t event) override;
  void event_record(uint64_t event, Stream stream) override;
  void event_wait(uint64_t event, Stream stream) override;
  void event_synchronize(uint64_t event) override;
  bool event_query(uint64_t event) override;
  double event_elapsed_ms(uint64_t start, uint64_t end) override;

  // cuda_backend.cpp: the card's name and memory; op_profile.cpp's profile.
  std::string device_description(Device device) override;
  DeviceProperties properties(Device device) override;
  bool copy_between_devices(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) override;
  void start_op_profile() override;
  std::vector<OpTime> stop_op_profile() override;

 protected:
  // A kernel for every op of the table (engine/op_table.h); Backend::name checks, then calls it.
  HEADROOM_OP_OVERRIDES
};

// The registered instance (backend_for(Device::cuda(i)) returns it).
CudaBackend& cuda_backend();

}  // namespace headroom::cuda
