// The CPU backend: every Backend op on host memory. One op family a file in this folder
// (copy.cpp, elementwise.cpp, reduce.cpp, matmul.cpp, conv.cpp, pool.cpp, softmax.cpp,
// norm.cpp, index.cpp, optim.cpp, amp.cpp). f16 and bf16 are converted to f32 per element,
// computed, and rounded back; reductions accumulate in f32 (f64 for f64). Large loops are split over
// the cores by parallel_for (parallel.cpp); matmul goes through OpenBLAS.
#pragma once

#include "engine/backend.h"

namespace headroom::cpu {

class CpuBackend final : public Backend {
 public:
  DeviceType device_type() const override { return DeviceType::cpu; }

  void copy(const Tensor& dst, const Tensor& src) override;
  void copy_to_host(void* host_dst, const void* src, size_t nbytes, Device device, bool non_blocking) override;
  void copy_from_host(void* dst, const void* host_src, size_t nbytes, Device device, bool non_blocking) override;
  void fill(const Tensor& out, double value) override;
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

}  // namespace headroom::cpu
