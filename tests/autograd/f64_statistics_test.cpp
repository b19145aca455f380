// Note [statistics dtype] (engine/backend.h): for f64 inputs the statistics an op keeps for its
// backward -- cross-entropy's and attention's log-sum-exp, layer/batch/group norm's mean and
// rstd -- are f64, so f64 gradients are f64-accurate. Each fused op's f64 gradient is compared
// with the same function written in primitive ops (whose backward keeps nothing rounded to
// f32). Measured on the CPU, 2026-12-02: with f32 statistics the worst relative differences
// here were 2.9e-7 (batch_norm) to 2.2e-5 (chunked cross-entropy); with f64 statistics
// 6.2e-16 (cross_entropy) to 3.4e-13 (fused attention).
#include <cmath>
#include <iostream>

#include "autograd/functions/attention.h"
#include "nn/chunked_cross_entropy.h"
#include "test_util.h"

namespace headroom {
namespace {

// The largest |a - b| / (|b| + 1e-3) over every element of the gradients.
double worst_relative(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const std::vector<double> va = a[i].to_vector<double>(), vb = b[i].to_vector<double>();
    for (size_t j = 0; j < va.size(); ++j) worst = std::max(worst, std::abs(va[j] - vb[j]) / (std::abs(vb[j]) + 1e-3));
  }
  return worst;
}

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

// Gradients of sum(fn(inputs) * probe) with respect to every input.
std::vector<Tensor> grads_of(const Fn& fn, const std::vector<Tensor>& inputs, uint64_t seed) {
  std::vector<Tensor> leaves;
  for (const Tensor& x : inputs) leaves.push_back(x.detach().clone().set_requires_grad(true));
  Tensor y = fn(leaves);
  manual_seed(seed);
  Tensor probe = Tensor::randn(y.shape(), DType::f64);
  sum(y * probe).backward();
  std::vector<Tensor> g;
  for (const Tensor& l : leaves) g.push_back(l.grad());
  return g;
}

void expect_f64_accurate(const Fn& fused, const Fn& reference, const std::vector<Tensor>& inputs, const char* what) {
  const double worst = worst_relative(grads_of(fused, inputs, 9), grads_of(reference, inputs, 9));
  std::cout << what << ": worst relative gradient difference " << worst << "\n";
  EXPECT_LT(worst, 1e-11) << what << ": f64 gradients differ from the primitive-op reference by " << worst;
}

Tensor one_hot_f64(const std::vector<int64_t>& target, int64_t classes) {
  std::vector<double> v(target.size() * static_cast<size_t>(classes), 0.0);
  for (size_t i = 0; i < target.size(); ++i) v[i * static_cast<size_t>(classes) + static_cast<size_t>(target[i])] = 1;
  return Tensor::from_vector(v, {static_cast<int64_t>(target.size()), classes}, DType::f64);
}

// log-sum-exp over the last dim in primitive ops (the max shift is a constant).
Tensor logsumexp_ref(const Tensor& x) {
  Tensor m = amax(x, {-1}, true).detach();
  return log(sum(exp(x - m), {-1}, true)) + m;
}

TEST(F64Statistics, CrossEntropy) {
  manual_seed(1);
  const std::vector<int64_t> t = {3, 0, 6, 2, 5};
  Tensor logits = Tensor::randn({5, 7}, DType::f64) * 6.0;
  Tensor target = Tensor::from_vector(t, {5}, DType::i64), hot = one_hot_f64(t, 7);
  expect_f64_accurate([&](const std::vector<Tensor>& in) { return cross_entropy(in[0], target, "none"); },
                      [&](const std::vector<Tensor>& in) {
                        return reshape(logsumexp_ref(in[0]), {5}) - sum(in[0] * hot, {1});
                      },
                      {logits}, "cross_entropy");
}

TEST(F64Statistics, ChunkedCrossEntropy) {
  manual_seed(2);
  const std::vector<int64_t> t = {3, 0, 6, 2, 5, 1};
  Tensor h = Tensor::randn({6, 4}, DType::f64) * 3.0, w = Tensor::randn({7, 4}, DType::f64);
  Tensor target = Tensor::from_vector(t, {6}, DType::i64), hot = one_hot_f64(t, 7);
  expect_f64_accurate(
      [&](const std::vector<Tensor>& in) { return reshape(nn::chunked_cross_entropy(in[0], in[1], target, 4), {1}); },
      [&](const std::vector<Tensor>& in) {
        Tensor logits = matmul(in[0], transpose(in[1], 0, 1));
        return reshape(mean(reshape(logsumexp_ref(logits), {6}) - sum(logits * hot, {1})), {1});
      },
      {h, w}, "chunked_cross_entropy");
}

TEST(F64Statistics, LayerNorm) {
  manual_seed(3);
  Tensor x = Tensor::randn({6, 9}, DType::f64) * 4.0 + 2.0;
  Tensor w = Tensor::randn({9}, DType::f64), b = Tensor::randn({9}, DType::f64);
  expect_f64_accurate([](const std::vector<Tensor>& in) { return layer_norm(in[0], {9}, in[1], in[2], 1e-5); },
                      [](const std::vector<Tensor>& in) {
                        Tensor mu = mean(in[0], {1}, true);
                        Tensor var = mean(square(in[0] - mu), {1}, true);
                        return (in[0] - mu) / sqrt(var + 1e-5) * in[1] + in[2];
                      },
                      {x, w, b}, "layer_norm");
}

TEST(F64Statistics, BatchNorm) {
  manual_seed(4);
  Tensor x = Tensor::randn({4, 3, 5}, DType::f64) * 3.0 - 1.0;
  Tensor w = Tensor::randn({3}, DType::f64), b = Tensor::randn({3}, DType::f64);
  expect_f64_accurate(
      [](const std::vector<Tensor>& in) { return batch_norm(in[0], in[1], in[2], Tensor(), Tensor(), true, 0.1, 1e-5); },
      [](const std::vector<Tensor>& in) {
        Tensor mu = mean(in[0], {0, 2}, true);
        Tensor var = mean(square(in[0] - mu), {0, 2}, true);
        return (in[0] - mu) / sqrt(var + 1e-5) * reshape(in[1], {1, 3, 1}) + reshape(in[2], {1, 3, 1});
      },
      {x, w, b}, "batch_norm");
}

TEST(F64Statistics, GroupNorm) {
  manual_seed(5);
  Tensor x = Tensor::randn({2, 6, 4}, DType::f64) * 2.0 + 5.0;
  Tensor w = Tensor::randn({6}, DType::f64), b = Tensor::randn({6}, DType::f64);
  expect_f64_accurate([](const std::vector<Tensor>& in) { return group_norm(in[0], 3, in[1], in[2], 1e-5); },
                      [](const std::vector<Tensor>& in) {
                        Tensor g = reshape(in[0], {2, 3, 8});
                        Tensor mu = mean(g, {2}, true);
                        Tensor var = mean(square(g - mu), {2}, true);
                        Tensor y = reshape((g - mu) / sqrt(var + 1e-5), {2, 6, 4});
                        return y * reshape(in[1], {1, 6, 1}) + reshape(in[2], {1, 6, 1});
                      },
                      {x, w, b}, "group_norm");
}

TEST(F64Statistics, FusedAttention) {
  manual_seed(6);
  Tensor q = Tensor::randn({1, 2, 9, 4}, DType::f64) * 2.0, k = Tensor::randn({1, 2, 9, 4}, DType::f64) * 2.0;
  Tensor v = Tensor::randn({1, 2, 9, 4}, DType::f64);
  expect_f64_accurate(
      [](const std::vector<Tensor>& in) {
        return scaled_dot_product_attention(in[0], in[1], in[2], true, AttentionImpl::fused);
      },
      [](const std::vector<Tensor>& in) {
        return scaled_dot_product_attention(in[0], in[1], in[2], true, AttentionImpl::naive);
      },
      {q, k, v}, "fused attention");
}

TEST(F64Statistics, SavedStatisticsFollowTheInputsPrecision) {
  EXPECT_EQ(statistics_dtype(DType::f64), DType::f64);
  for (DType d : {DType::f32, DType::f16, DType::bf16}) EXPECT_EQ(statistics_dtype(d), DType::f32);
  // Through the backend: an f64 call with f32 statistics is refused, naming what it wants.
  Tensor x = Tensor::randn({3, 4}, DType::f64), y = Tensor::empty({3, 4}, DType::f64);
  Tensor m32 = Tensor::empty({3}), r32 = Tensor::empty({3});
  EXPECT_THROW_WITH(backend_for(Device::cpu()).layer_norm_forward(x, Tensor(), Tensor(), 1e-5, y, m32, r32),
                    ValueError, "must be a contiguous f64 (3,) for f64 data");
}

}  // namespace
}  // namespace headroom
