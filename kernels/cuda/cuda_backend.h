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
  DeviceType device_type() const override { return DeviceType::cuda; }

  void copy(const Tensor& dst, const Tensor& src) override;
  void copy_to_host(void* host_dst, const void* src, size_t nbytes, Device device, bool non_blocking) override;
  void copy_from_host(void* dst, const void* host_src, size_t nbytes, Device device, bool non_blocking) override;
  void fill(const Tensor& out, double value) override;

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

  void arange(const Tensor& out, double start, double step) override;
  void random_uniform(const Tensor& out, uint64_t seed, uint64_t offset) override;
  void random_normal(const Tensor& out, uint64_t seed, uint64_t offset) override;

  void unary(UnaryOp op, const Tensor& x, const Tensor& out) override;
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override;
  void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) override;

  void reduce(ReduceOp op, const Tensor& x, const Tensor& out) override;

  void matmul(const Tensor& a, const Tensor& b, const Tensor& out, double beta) override;

  void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out,
                      const Conv2dParams& p) override;
  void conv2d_backward_input(const Tensor& dout, const Tensor& w, const Tensor& dx,
                             const Conv2dParams& p) override;
  void conv2d_backward_weight(const Tensor& dout, const Tensor& x, const Tensor& dw,
                              const Conv2dParams& p) override;
  void max_pool2d_forward(const Tensor& x, const Tensor& out, const Tensor& indices,
                          const Pool2dParams& p) override;
  void max_pool2d_backward(const Tensor& dout, const Tensor& indices, const Tensor& dx,
                           const Pool2dParams& p) override;
  void avg_pool2d_forward(const Tensor& x, const Tensor& out, const Pool2dParams& p) override;
  void avg_pool2d_backward(const Tensor& dout, const Tensor& dx, const Pool2dParams& p) override;

  void softmax_forward(const Tensor& x, const Tensor& y, int64_t dim, bool log) override;
  void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx, int64_t dim, bool log) override;
  void cross_entropy_forward(const Tensor& logits, const Tensor& target, const Tensor& losses,
                             const Tensor& lse) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& lse,
                              const Tensor& dlosses, const Tensor& dlogits) override;
  void layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                          const Tensor& y, const Tensor& mean, const Tensor& rstd) override;
  void layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                           const Tensor& mean, const Tensor& rstd, const Tensor& dx,
                           const Tensor& dweight, const Tensor& dbias) override;
  void batch_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                          const Tensor& running_mean, const Tensor& running_var, bool training,
                          double momentum, double eps, const Tensor& y, const Tensor& save_mean,
                          const Tensor& save_invstd) override;
  void batch_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                           const Tensor& save_mean, const Tensor& save_invstd, bool training,
                           const Tensor& dx, const Tensor& dweight, const Tensor& dbias) override;
  void group_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups, double eps,
                          const Tensor& y, const Tensor& save_mean, const Tensor& save_rstd) override;
  void group_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& save_mean,
                           const Tensor& save_rstd, int64_t groups, const Tensor& dx, const Tensor& dweight,
                           const Tensor& dbias) override;

  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                         double scale, bool causal) override;
  void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& dout,
                          const Tensor& lse, const Tensor& dq, const Tensor& dk, const Tensor& dv, double scale,
                          bool causal) override;

  void sgd_update(const Tensor& p, const Tensor& g, const Tensor& buf, bool first, double lr, double momentum,
                  double weight_decay, bool nesterov) override;
  void adam_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const AdamStep& step) override;

  void unscale_and_check(const std::vector<Tensor>& grads, double inv_scale, const Tensor& found_inf) override;

  void index_select(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) override;
  void index_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override;
};

// The registered instance (backend_for(Device::cuda(i)) returns it).
CudaBackend& cuda_backend();

}  // namespace headroom::cuda
