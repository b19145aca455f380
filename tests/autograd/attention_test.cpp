// scaled_dot_product_attention: the fused form against the textbook composite (forward and
// every gradient, causal and not, at lengths around the kernels' 64-row tiles), finite
// differences in f64, 16-bit storage, the errors, and the memory claim itself: the fused form's
// peak grows linearly in T, the naive form's quadratically. Bodies take a Device so that the
// same checks can run on cuda; here they run on cpu.
#include <cmath>

#include "autograd/functions/attention.h"
#include "engine/caching_allocator.h"
#include "test_util.h"

namespace headroom {
namespace {

using testing::all_close;
using testing::grad_ok;
using V = std::vector<Tensor>;

struct AttnResult {
  Tensor out, dq, dk, dv;
};

// Forward and backward of one form with a fixed output gradient; inputs are copied fresh leaves.
AttnResult run_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout, bool causal,
                         AttentionImpl impl) {
  Tensor ql = q.detach().clone().set_requires_grad(true);
  Tensor kl = k.detach().clone().set_requires_grad(true);
  Tensor vl = v.detach().clone().set_requires_grad(true);
  Tensor out = scaled_dot_product_attention(ql, kl, vl, causal, impl);
  out.backward(dout);
  return {out.detach(), ql.grad(), kl.grad(), vl.grad()};
}

void expect_forms_agree(Device dev, DType dtype, int64_t b, int64_t h, int64_t t, int64_t d, bool causal) {
  const TensorOptions opts = TensorOptions().dtype(dtype).device(dev);
  Tensor q = Tensor::randn({b, h, t, d}, opts), k = Tensor::randn({b, h, t, d}, opts);
  Tensor v = Tensor::randn({b, h, t, d}, opts), dout = Tensor::randn({b, h, t, d}, opts);
  AttnResult naive = run_attention(q, k, v, dout, causal, AttentionImpl::naive);
  AttnResult fused = run_attention(q, k, v, dout, causal, AttentionImpl::fused);
  const double tol = dtype == DType::f64 ? 1e-6 : 2e-4;  // f64: lse is kept in f32
  const std::string what = str_cat(dtype_name(dtype), " T=", t, " D=", d, causal ? " causal" : " full");
  EXPECT_TRUE(all_close(fused.out, naive.out, tol, tol)) << what << " out";
  EXPECT_TRUE(all_close(fused.dq, naive.dq, tol, tol)) << what << " dq";
  EXPECT_TRUE(all_close(fused.dk, naive.dk, tol, tol)) << what << " dk";
  EXPECT_TRUE(all_close(fused.dv, naive.dv, tol, tol)) << what << " dv";
}

TEST(Attention, FusedEqualsNaiveAroundTileSizes) {
  manual_seed(100);
  const Device cpu = Device::cpu();
  for (int64_t t : {1, 2, 63, 64, 65, 127, 128, 255})
    for (int64_t d : {16, 64}) expect_forms_agree(cpu, DType::f32, 1, 2, t, d, true);
  for (int64_t t : {1, 70, 128}) expect_forms_agree(cpu, DType::f32, 2, 3, t, 16, false);
  expect_forms_agree(cpu, DType::f32, 1, 1, 129, 128, true);  // the largest head dim cuda takes
  expect_forms_agree(cpu, DType::f32, 1, 1, 200, 40, false);  // D that is not a multiple of the 64-wide chunks
  for (int64_t t : {1, 65, 129}) {
    expect_forms_agree(cpu, DType::f64, 1, 2, t, 8, true);
    expect_forms_agree(cpu, DType::f64, 1, 1, t, 5, false);  // a head dim of no special size
  }
}

TEST(Attention, CausalMaskIsExact) {
  // Changing a future key or value must not change earlier outputs, in either form.
  manual_seed(101);
  const int64_t t = 70, d = 8;
  Tensor q = Tensor::randn({1, 1, t, d}), k = Tensor::randn({1, 1, t, d}), v = Tensor::randn({1, 1, t, d});
  for (AttentionImpl impl : {AttentionImpl::naive, AttentionImpl::fused}) {
    Tensor out = scaled_dot_product_attention(q, k, v, true, impl);
    Tensor k2 = k.clone(), v2 = v.clone();
    k2.slice(2, 66, 67).fill_(50.0);
    v2.slice(2, 66, 67).fill_(-50.0);
    Tensor out2 = scaled_dot_product_attention(q, k2, v2, true, impl);
    EXPECT_TRUE(all_close(out2.slice(2, 0, 66), out.slice(2, 0, 66), 0, 0)) << attention_impl_name(impl);
    EXPECT_FALSE(all_close(out2.slice(2, 66, t), out.slice(2, 66, t), 1e-3, 1e-3)) << attention_impl_name(impl);
    // The first query sees only the first key: its output is that key's value.
    EXPECT_TRUE(all_close(out.slice(2, 0, 1), v.slice(2, 0, 1), 1e-6, 1e-6)) << attention_impl_name(impl);
  }
}

TEST(Attention, FusedGradcheckF64) {
  manual_seed(102);
  for (bool causal : {true, false}) {
    Tensor q = testing::rand_f64({1, 2, 5, 3}), k = testing::rand_f64({1, 2, 5, 3}),
           v = testing::rand_f64({1, 2, 5, 3});
    EXPECT_TRUE(
        grad_ok([causal](const V& x) { return scaled_dot_product_attention(x[0], x[1], x[2], causal); }, {q, k, v}))
        << (causal ? "causal" : "full");
  }
  // Across a tile boundary (64 rows), and with an explicit scale.
  Tensor q = testing::rand_f64({1, 1, 67, 2}), k = testing::rand_f64({1, 1, 67, 2}),
         v = testing::rand_f64({1, 1, 67, 2});
  EXPECT_TRUE(grad_ok(
      [](const V& x) { return scaled_dot_product_attention(x[0], x[1], x[2], true, AttentionImpl::fused, 0.7); },
      {q, k, v}));
  // Non-contiguous inputs (a transposed view), and one tensor used as q, k and v.
  Tensor base = testing::rand_f64({1, 3, 2, 4}, false);
  Tensor qt = base.transpose(1, 2).set_requires_grad(true);  // [1, 2, 3, 4], not contiguous
  ASSERT_FALSE(qt.is_contiguous());
  EXPECT_TRUE(grad_ok([](const V& x) { return scaled_dot_product_attention(x[0], x[0], x[0], true); }, {qt}));
  EXPECT_TRUE(grad_ok([](const V& x) { return scaled_dot_product_attention(x[0], x[1], x[1], false); },
                      {qt, testing::rand_f64({1, 2, 3, 4})}));
}

TEST(Attention, NaiveGradcheckF64) {
  manual_seed(103);
  Tensor q = testing::rand_f64({2, 1, 4, 3}), k = testing::rand_f64({2, 1, 4, 3}), v = testing::rand_f64({2, 1, 4, 3});
  EXPECT_TRUE(
      grad_ok([](const V& x) { return scaled_dot_product_attention(x[0], x[1], x[2], true, AttentionImpl::naive); },
              {q, k, v}));
}

TEST(Attention, SixteenBitStorageMatchesF32) {
  manual_seed(104);
  for (DType dt : {DType::f16, DType::bf16}) {
    Tensor q = Tensor::randn({1, 2, 70, 16}), k = Tensor::randn({1, 2, 70, 16}), v = Tensor::randn({1, 2, 70, 16});
    Tensor dout = Tensor::randn({1, 2, 70, 16});
    // The reference sees the same rounded inputs, in f32.
    auto r = [dt](const Tensor& x) { return x.to(dt).to(DType::f32); };
    AttnResult ref = run_attention(r(q), r(k), r(v), r(dout), true, AttentionImpl::fused);
    AttnResult low = run_attention(q.to(dt), k.to(dt), v.to(dt), dout.to(dt), true, AttentionImpl::fused);
    EXPECT_EQ(low.out.dtype(), dt);
    EXPECT_EQ(low.dq.dtype(), dt);
    const double tol = dt == DType::f16 ? 5e-3 : 3e-2;
    EXPECT_TRUE(all_close(low.out.to(DType::f32), ref.out, tol, tol)) << dtype_name(dt);
    EXPECT_TRUE(all_close(low.dq.to(DType::f32), ref.dq, tol, tol)) << dtype_name(dt);
    EXPECT_TRUE(all_close(low.dk.to(DType::f32), ref.dk, tol, tol)) << dtype_name(dt);
    EXPECT_TRUE(all_close(low.dv.to(DType::f32), ref.dv, tol, tol)) << dtype_name(dt);
  }
}

TEST(Attention, LseIsTheLogSumExpOfEachRow) {
  // Through the backend directly: lse must be log sum_j exp(scale q.k_j) over the visible keys.
  manual_seed(105);
  const int64_t t = 66, d = 4;
  const double scale = 0.5;
  Tensor q = Tensor::randn({1, 1, t, d}, DType::f64), k = Tensor::randn({1, 1, t, d}, DType::f64);
  Tensor v = Tensor::randn({1, 1, t, d}, DType::f64);
  Tensor out = Tensor::empty({1, 1, t, d}, DType::f64), lse = Tensor::empty({1, 1, t}, DType::f64);  // f64 for f64
  backend_for(Device::cpu()).attention_forward(q, k, v, out, lse, scale, true);
  std::vector<double> qv = q.to_vector<double>(), kv = k.to_vector<double>();
  std::vector<double> lv = lse.to_vector<double>();
  for (int64_t i = 0; i < t; ++i) {
    double s = 0;
    for (int64_t j = 0; j <= i; ++j) {
      double dot = 0;
      for (int64_t c = 0; c < d; ++c) dot += qv[static_cast<size_t>(i * d + c)] * kv[static_cast<size_t>(j * d + c)];
      s += std::exp(scale * dot);
    }
    EXPECT_NEAR(lv[static_cast<size_t>(i)], std::log(s), 1e-12) << "row " << i;
  }
}

TEST(Attention, ErrorsNameShapesAndDtypes) {
  Tensor q = Tensor::randn({1, 2, 4, 8});
  EXPECT_THROW_WITH(scaled_dot_product_attention(q, Tensor::randn({1, 2, 5, 8}), q), ShapeError, "(1, 2, 5, 8)");
  EXPECT_THROW_WITH(scaled_dot_product_attention(Tensor::randn({2, 4, 8}), q, q), ShapeError, "[B, H, T, D]");
  EXPECT_THROW_WITH(scaled_dot_product_attention(q, q.to(DType::f64), q), DTypeError, "f64");
  Tensor qi = Tensor::zeros({1, 2, 4, 8}, DType::i64);
  EXPECT_THROW_WITH(scaled_dot_product_attention(qi, qi, qi), DTypeError, "scaled_dot_product_attention");
  EXPECT_THROW_WITH(parse_attention_impl("flash"), ValueError, "naive");
  EXPECT_EQ(parse_attention_impl("naive"), AttentionImpl::naive);
  EXPECT_STREQ(attention_impl_name(AttentionImpl::fused), "fused");
  // The backend checks what reaches it too.
  Tensor lse = Tensor::empty({1, 2, 4}, DType::f32);
  Tensor out = Tensor::empty({1, 2, 4, 8});
  Backend& be = backend_for(Device::cpu());
  Tensor vt = Tensor::randn({1, 2, 8, 4}).transpose(2, 3);  // [1, 2, 4, 8], not contiguous
  EXPECT_THROW_WITH(be.attention_forward(q, q, vt, out, lse, 1.0, true), ValueError, "contiguous");
  EXPECT_THROW_WITH(be.attention_forward(q, q, q, out, Tensor::empty({1, 2, 4}, DType::f64), 1.0, true), ValueError,
                    "lse");
}

// Peak bytes the allocator held above what was live before, during one forward + backward.
int64_t attention_peak_bytes(Device dev, int64_t t, AttentionImpl impl) {
  const int64_t b = 1, h = 2, d = 32;
  const TensorOptions opts = TensorOptions().device(dev);
  Tensor q = Tensor::randn({b, h, t, d}, opts).set_requires_grad(true);
  Tensor k = Tensor::randn({b, h, t, d}, opts).set_requires_grad(true);
  Tensor v = Tensor::randn({b, h, t, d}, opts).set_requires_grad(true);
  Tensor dout = Tensor::randn({b, h, t, d}, opts);
  CachingAllocator& alloc = caching_allocator(dev);
  alloc.reset_peak_stats();
  const int64_t before = alloc.stats().allocated_bytes.current;
  scaled_dot_product_attention(q, k, v, true, impl).backward(dout);
  return alloc.stats().allocated_bytes.peak - before;
}

TEST(Attention, FusedPeakMemoryIsLinearInTNaiveQuadratic) {
  manual_seed(106);
  const Device cpu = Device::cpu();
  const int64_t t = 128;
  const double fused_1 = static_cast<double>(attention_peak_bytes(cpu, t, AttentionImpl::fused));
  const double fused_4 = static_cast<double>(attention_peak_bytes(cpu, 4 * t, AttentionImpl::fused));
  const double naive_1 = static_cast<double>(attention_peak_bytes(cpu, t, AttentionImpl::naive));
  const double naive_4 = static_cast<double>(attention_peak_bytes(cpu, 4 * t, AttentionImpl::naive));
  // 4x the length: linear memory grows ~4x, quadratic memory ~16x (less its linear part).
  EXPECT_GT(fused_4 / fused_1, 3.0) << fused_1 << " -> " << fused_4;
  EXPECT_LT(fused_4 / fused_1, 5.0) << fused_1 << " -> " << fused_4;
  EXPECT_GT(naive_4 / naive_1, 10.0) << naive_1 << " -> " << naive_4;
  // And the fused form never holds a T x T matrix: at 4T its whole peak is below one [B, H, T, T]
  // f32 score tensor.
  EXPECT_LT(fused_4, 2.0 * 4 * t * 4 * t * 4) << fused_4;
  EXPECT_LT(fused_4 * 4, naive_4) << fused_4 << " vs " << naive_4;
}

}  // namespace
}  // namespace headroom
