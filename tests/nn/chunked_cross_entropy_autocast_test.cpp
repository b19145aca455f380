// chunked_cross_entropy under autocast (autograd/autocast.h): f32 loss close to the f32 run,
// gradients reaching the f32 h and weight, 16-bit chunk buffers (about half the peak), the
// weight cast once per scope through the cast cache, and f64 left alone.
//
// Tolerances are in units of the low dtype's unit roundoff u (2^-8 for bf16, 2^-11 for f16):
// h and the weight are rounded once each, every logit and dlogit once more, dweight once per
// chunk as it is accumulated in the low dtype. With the features scaled so that logits are
// O(1), each rounding is at most u relative to the largest value, and they partly cancel: the
// gradients measured here are 1-2u off f32's (of the largest entry), the mean loss far less.
// The bound is 4u; an f32-only run is ~1e-7 off, and the test checks the 16-bit run is not.
#include <algorithm>
#include <cmath>

#include "autograd/autocast.h"
#include "engine/caching_allocator.h"
#include "engine/memory.h"
#include "nn/chunked_cross_entropy.h"
#include "test_util.h"

namespace headroom {
namespace {

double unit_roundoff(DType d) { return d == DType::bf16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11); }

// max |a - b| over max |b|, both read as f64.
double relative_max_error(const Tensor& a, const Tensor& b) {
  const std::vector<double> av = a.to(DType::f64).contiguous().to_vector<double>();
  const std::vector<double> bv = b.to(DType::f64).contiguous().to_vector<double>();
  double err = 0, scale = 0;
  for (size_t i = 0; i < av.size(); ++i) {
    err = std::max(err, std::abs(av[i] - bv[i]));
    scale = std::max(scale, std::abs(bv[i]));
  }
  return scale > 0 ? err / scale : err;
}

Tensor targets(int64_t n, int64_t vocab) {
  std::vector<int64_t> tv(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) tv[static_cast<size_t>(i)] = i % 7 == 3 ? -100 : (i * 13 + 5) % vocab;
  return Tensor::from_vector(tv, {n}, TensorOptions().dtype(DType::i64));
}

struct LossAndGrads {
  Tensor loss, dh, dw;
};

// Loss and gradients of chunked_cross_entropy on fresh f32 (or f64) leaves copied from h0, w0,
// inside an autocast scope of `low` when amp is set. Backward runs outside the scope.
LossAndGrads run_chunked(const Tensor& h0, const Tensor& w0, const Tensor& target, int64_t rows, bool amp, DType low) {
  Tensor h = h0.clone().set_requires_grad(true), w = w0.clone().set_requires_grad(true);
  Tensor loss;
  {
    AutocastGuard guard(Device::cpu(), low, amp);
    loss = nn::chunked_cross_entropy(h, w, target, rows);
  }
  loss.backward();
  return {loss, h.grad(), w.grad()};
}

TEST(ChunkedCrossEntropyAutocast, LossIsF32AndCloseToF32WithGradientsInF32) {
  manual_seed(300);
  const int64_t n = 37, c = 16, vocab = 50;
  // Features scaled by 1/sqrt(c): logits of order 1.
  Tensor h0 = Tensor::randn({n, c}) * (1.0 / std::sqrt(static_cast<double>(c)));
  Tensor w0 = Tensor::randn({vocab, c});
  Tensor target = targets(n, vocab);
  for (int64_t rows : {5, 0}) {  // eight chunks (a tail of 2), and one
    const LossAndGrads ref = run_chunked(h0, w0, target, rows, false, DType::bf16);
    ASSERT_EQ(ref.loss.dtype(), DType::f32);
    for (DType low : {DType::bf16, DType::f16}) {
      const std::string what = str_cat(dtype_name(low), " rows=", rows);
      const LossAndGrads amp = run_chunked(h0, w0, target, rows, true, low);
      const double u = unit_roundoff(low);
      EXPECT_EQ(amp.loss.dtype(), DType::f32) << what;
      EXPECT_EQ(amp.loss.dim(), 0) << what;
      ASSERT_TRUE(amp.dh.defined() && amp.dw.defined()) << what;
      EXPECT_EQ(amp.dh.dtype(), DType::f32) << what;
      EXPECT_EQ(amp.dw.dtype(), DType::f32) << what;
      const double dl = std::abs(amp.loss.item<double>() - ref.loss.item<double>());
      EXPECT_LE(dl, 4 * u * std::abs(ref.loss.item<double>()))
          << what << ": loss " << amp.loss.item<double>() << " vs f32 " << ref.loss.item<double>();
      EXPECT_LE(relative_max_error(amp.dh, ref.dh), 4 * u) << what << " dh";
      EXPECT_LE(relative_max_error(amp.dw, ref.dw), 4 * u) << what << " dweight";
      // The run really was 16-bit: it is not the f32 result to f32 accuracy.
      EXPECT_GT(relative_max_error(amp.dw, ref.dw), 1e-5) << what << " dweight equals f32's";
    }
  }
}

// The peak of MemoryCategory::temporary during forward + backward, above its live bytes: the
// chunk buffers (chunked_cross_entropy counts them there in backward as well).
template <typename F>
int64_t temporary_peak_during(F&& loss_fn) {
  CachingAllocator& alloc = caching_allocator(Device::cpu());
  alloc.reset_peak_stats();
  const int64_t before = alloc.stats().category(MemoryCategory::temporary).current;
  loss_fn().backward();
  return alloc.stats().category(MemoryCategory::temporary).peak - before;
}

TEST(ChunkedCrossEntropyAutocast, ChunkBuffersTakeHalfTheBytes) {
  manual_seed(301);
  const int64_t n = 512, c = 16, vocab = 4096, rows = 128;
  // Made outside the temporary category: saving h and w for backward moves them to activation.
  Tensor h, w;
  {
    CategoryScope as_parameters(MemoryCategory::parameter);
    h = Tensor::randn({n, c}).set_requires_grad(true);
    w = Tensor::randn({vocab, c}).set_requires_grad(true);
  }
  Tensor target = targets(n, vocab);
  // Backward holds one chunk of logits and one of dlogits: 2 x 128 x 4096 elements.
  const int64_t chunk_elems = 2 * rows * vocab;
  const int64_t f32 = temporary_peak_during([&] { return nn::chunked_cross_entropy(h, w, target, rows); });
  h.zero_grad();
  w.zero_grad();
  const int64_t bf16 = temporary_peak_during([&] {
    AutocastGuard amp(Device::cpu(), DType::bf16);
    return nn::chunked_cross_entropy(h, w, target, rows);
  });
  EXPECT_GE(f32, chunk_elems * 4) << f32;
  EXPECT_GE(bf16, chunk_elems * 2) << bf16;
  // The temporaries are the chunk buffers and a few [N] vectors: half of f32's, within 5%.
  EXPECT_LE(bf16, f32 * 55 / 100) << bf16 << " vs f32 " << f32;
  EXPECT_GE(bf16, f32 * 45 / 100) << bf16 << " vs f32 " << f32;
  // Not compared: the total. The CPU backend multiplies 16-bit matrices through f32 scratch
  // (kernels/cpu/matmul.cpp, MemoryCategory::workspace), which holds an f32 copy of a chunk
  // during each gemm; a GPU gemm reads the 16-bit buffers directly.
}

TEST(ChunkedCrossEntropyAutocast, TiedWeightIsCastOncePerScope) {
  manual_seed(302);
  const int64_t n = 12, c = 8, vocab = 20;
  Tensor y = Tensor::randn({n, vocab}) * 0.3;  // an input: neither a parameter nor cached
  Tensor w0 = Tensor::randn({vocab, c});
  Tensor target = targets(n, vocab);
  // The weight used three times, as tied embeddings are: to make h (matmul) and twice as the
  // head. Returns the summed loss.
  auto three_uses = [&](const Tensor& w) {
    Tensor h = matmul(y, w);  // [n, c]
    return nn::chunked_cross_entropy(h, w, target, 5) + nn::chunked_cross_entropy(h, w, target, 3);
  };
  Tensor w = w0.clone().set_requires_grad(true);
  Tensor loss;
  reset_autocast_cache_stats();
  {
    AutocastGuard amp(Device::cpu(), DType::bf16);
    loss = three_uses(w);
    const AutocastCacheStats s = autocast_cache_stats();
    EXPECT_EQ(s.casts, 1);  // cast by matmul, found by both chunked_cross_entropy calls
    EXPECT_EQ(s.hits, 2);
    EXPECT_EQ(s.entries, 1);
  }
  EXPECT_EQ(autocast_cache_stats().entries, 0);
  EXPECT_EQ(loss.dtype(), DType::f32);
  loss.backward();
  ASSERT_TRUE(w.grad().defined());
  EXPECT_EQ(w.grad().dtype(), DType::f32);
  // All three uses reach the f32 weight.
  Tensor w1 = w0.clone().set_requires_grad(true);
  three_uses(w1).backward();
  EXPECT_LE(relative_max_error(w.grad(), w1.grad()), 4 * unit_roundoff(DType::bf16));
}

TEST(ChunkedCrossEntropyAutocast, F64IsNotCast) {
  manual_seed(303);
  Tensor h0 = testing::rand_f64({9, 4}, false), w0 = testing::rand_f64({6, 4}, false);
  Tensor target = targets(9, 6);
  const LossAndGrads ref = run_chunked(h0, w0, target, 4, false, DType::bf16);
  reset_autocast_cache_stats();
  for (DType low : {DType::bf16, DType::f16}) {
    const LossAndGrads amp = run_chunked(h0, w0, target, 4, true, low);
    EXPECT_EQ(amp.loss.dtype(), DType::f64);
    EXPECT_EQ(amp.dh.dtype(), DType::f64);
    EXPECT_EQ(amp.dw.dtype(), DType::f64);
    // Bit for bit: the same f64 arithmetic, nothing rounded to 16 bits.
    EXPECT_TRUE(testing::all_close(amp.loss, ref.loss, 0, 0)) << dtype_name(low);
    EXPECT_TRUE(testing::all_close(amp.dh, ref.dh, 0, 0)) << dtype_name(low);
    EXPECT_TRUE(testing::all_close(amp.dw, ref.dw, 0, 0)) << dtype_name(low);
  }
  EXPECT_EQ(autocast_cache_stats().casts, 0);
  // Under autocast f32 mixes with 16-bit (the tied test above), f64 with nothing.
  AutocastGuard amp(Device::cpu(), DType::bf16);
  EXPECT_THROW_WITH(nn::chunked_cross_entropy(h0, w0.to(DType::f32), target), DTypeError, "f64");
  EXPECT_THROW_WITH(nn::chunked_cross_entropy(h0.to(DType::f32), w0.to(DType::i64), target), DTypeError, "weight");
}

}  // namespace
}  // namespace headroom
