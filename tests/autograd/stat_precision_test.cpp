// The statistics the fused ops save for backward (Note [statistics dtype] in engine/backend.h):
// cross-entropy's and fused attention's log-sum-exp, layer norm's, batch norm's and group norm's
// mean and rstd. They are kept in the input's precision for f64 and in f32 for f32, f16 and
// bf16, so that an f64 gradient is f64-accurate and gradcheck in f64 means what it says.
//
//  - F64 gradients of every such op (chunked_cross_entropy too) against the same function built
//    from simpler ops in f64 (the references of tests/backend/), relative to the reference's
//    largest element: below 1e-15 on the 2-core dev box, where statistics rounded to f32 left
//    5e-8 to 6e-7.
//  - gradcheck at tight tolerances (atol 1e-9, rtol 1e-7): central differences of step 1e-5
//    were good to 5e-11 .. 6e-10 on these inputs, statistics in f32 erred by 2e-8 .. 8e-7.
//  - The saved statistics' dtype, seen where it costs: the bytes the op keeps for backward as
//    activations (its inputs are parameters here, so only what the op itself saves is counted):
//    twice the f32 bytes for f64 inputs, the f32 bytes for f32 and bf16 ones. This also pins the
//    statistics' category (activation) and that nothing else is saved.
// HEADROOM_TEST_TOL_REPORT=1 prints each measured relative error.
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "autograd/functions/attention.h"
#include "engine/caching_allocator.h"
#include "nn/chunked_cross_entropy.h"
#include "test_util.h"

namespace headroom {
namespace {

using V = std::vector<Tensor>;
using Fn = std::function<Tensor(const V&)>;

// max |a - b| / max |b|: the error relative to the reference's scale.
double rel_error(const Tensor& a, const Tensor& b) {
  const std::vector<double> va = a.to_vector<double>(), vb = b.to_vector<double>();
  double diff = 0, scale = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    diff = std::max(diff, std::abs(va[i] - vb[i]));
    scale = std::max(scale, std::abs(vb[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

// The gradients of sum(fn(inputs) * w) with respect to every input (fresh leaves each call).
V gradients(const Fn& fn, const V& inputs, const Tensor& w) {
  V leaves;
  for (const Tensor& t : inputs) leaves.push_back(t.detach().clone().set_requires_grad(true));
  (fn(leaves) * w).sum().backward();
  V g;
  for (const Tensor& l : leaves) g.push_back(l.grad());
  return g;
}

// The largest relative error of fused's outputs and gradients against ref's.
double worst_error(const char* what, const Fn& fused, const Fn& ref, const V& inputs) {
  const Tensor out = fused(inputs).detach();
  const Tensor w = Tensor::randn(out.shape(), DType::f64);
  double worst = rel_error(out, ref(inputs).detach());
  const V g = gradients(fused, inputs, w), r = gradients(ref, inputs, w);
  for (size_t i = 0; i < g.size(); ++i) worst = std::max(worst, rel_error(g[i], r[i]));
  if (std::getenv("HEADROOM_TEST_TOL_REPORT")) std::printf("  [precision] %s: f64 relative error %.3g\n", what, worst);
  return worst;
}

// An f64 one-hot [N, C] of targets (a negative target: an all-zero row).
Tensor one_hot(const std::vector<int64_t>& target, int64_t c) {
  std::vector<double> v(target.size() * static_cast<size_t>(c), 0.0);
  for (size_t i = 0; i < target.size(); ++i)
    if (target[i] >= 0) v[i * static_cast<size_t>(c) + static_cast<size_t>(target[i])] = 1.0;
  return Tensor::from_vector(v, {static_cast<int64_t>(target.size()), c}, DType::f64);
}

// Mean cross-entropy over the rows whose target is not negative, from exp, log, sum and amax.
Tensor cross_entropy_ref(const Tensor& logits, const Tensor& onehot, double count) {
  Tensor z = logits - amax(logits, {1}, true).detach();
  Tensor lse = log(sum(exp(z), {1}, true));
  Tensor counted = sum(onehot, {1}, true);  // 1 for a counted row, 0 for an ignored one
  return (sum(lse * counted) - sum(z * onehot)) / count;
}

// Normalises x over `dims` with the biased variance (the norms' common core).
Tensor normalise_ref(const Tensor& x, const std::vector<int64_t>& dims, double eps) {
  Tensor xc = x - mean(x, dims, true);
  return xc / sqrt(mean(xc * xc, dims, true) + eps);
}

TEST(StatPrecision, F64GradientsMatchAnF64Reference) {
  manual_seed(700);
  const double tol = 1e-12;
  {
    // Logits of spread ~4, 300 classes: lse ~ 8, so an f32 lse errs by ~5e-7.
    const int64_t n = 40, c = 300;
    Tensor logits = Tensor::randn({n, c}, DType::f64) * 4.0;
    std::vector<int64_t> tv(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) tv[static_cast<size_t>(i)] = (i * 37 + 5) % c;
    tv[3] = -100;
    Tensor target = Tensor::from_vector(tv, {n}, DType::i64);
    Tensor oh = one_hot(tv, c);
    EXPECT_LT(worst_error(
                  "cross_entropy", [&](const V& v) { return cross_entropy(v[0], target); },
                  [&](const V& v) { return cross_entropy_ref(v[0], oh, n - 1.0); }, {logits}),
              tol);
    // chunked: h [n, 24] @ weight^T [24, c], three rows a chunk.
    Tensor h = Tensor::randn({n, 24}, DType::f64), w = Tensor::randn({c, 24}, DType::f64) * 0.8;
    EXPECT_LT(worst_error(
                  "chunked_cross_entropy", [&](const V& v) { return nn::chunked_cross_entropy(v[0], v[1], target, 3); },
                  [&](const V& v) { return cross_entropy_ref(matmul(v[0], v[1].t()), oh, n - 1.0); }, {h, w}),
              tol);
  }
  {
    // A large mean (3) against a unit spread: the f32 mean's rounding shows in xhat.
    Tensor x = Tensor::randn({6, 5, 64}, DType::f64) + 3.0;
    Tensor w = Tensor::randn({64}, DType::f64), b = Tensor::randn({64}, DType::f64);
    EXPECT_LT(worst_error(
                  "layer_norm", [](const V& v) { return layer_norm(v[0], {64}, v[1], v[2], 1e-5); },
                  [](const V& v) { return normalise_ref(v[0], {2}, 1e-5) * v[1] + v[2]; }, {x, w, b}),
              tol);
  }
  {
    Tensor x = Tensor::randn({8, 6, 10}, DType::f64) * 2.0 + 3.0;
    Tensor w = Tensor::randn({6}, DType::f64), b = Tensor::randn({6}, DType::f64);
    auto per_channel = [](const Tensor& p) { return p.reshape({1, 6, 1}); };
    EXPECT_LT(worst_error(
                  "batch_norm (training)",
                  [](const V& v) { return batch_norm(v[0], v[1], v[2], Tensor(), Tensor(), true, 0.1, 1e-5); },
                  [&](const V& v) {
                    return normalise_ref(v[0], {0, 2}, 1e-5) * per_channel(v[1]) + per_channel(v[2]);
                  },
                  {x, w, b}),
              tol);
    // Eval: the statistics come from the running buffers (f64 here), rstd = 1 / sqrt(var + eps).
    Tensor rm = Tensor::randn({6}, DType::f64), rv = Tensor::rand({6}, DType::f64) + 0.5;
    EXPECT_LT(
        worst_error(
            "batch_norm (eval)", [&](const V& v) { return batch_norm(v[0], v[1], v[2], rm, rv, false, 0.1, 1e-5); },
            [&](const V& v) {
              return (v[0] - per_channel(rm)) / sqrt(per_channel(rv) + 1e-5) * per_channel(v[1]) + per_channel(v[2]);
            },
            {x, w, b}),
        tol);
  }
  {
    // 4 groups of 3 channels x 20 positions.
    Tensor x = Tensor::randn({5, 12, 20}, DType::f64) * 1.5 + 3.0;
    Tensor w = Tensor::randn({12}, DType::f64), b = Tensor::randn({12}, DType::f64);
    EXPECT_LT(worst_error(
                  "group_norm", [](const V& v) { return group_norm(v[0], 4, v[1], v[2], 1e-5); },
                  [](const V& v) {
                    Tensor xhat = normalise_ref(v[0].reshape({5, 4, 60}), {2}, 1e-5).reshape({5, 12, 20});
                    return xhat * v[1].reshape({1, 12, 1}) + v[2].reshape({1, 12, 1});
                  },
                  {x, w, b}),
              tol);
  }
  for (bool causal : {true, false}) {
    // Scores of spread ~3 over 70 keys (across the 64-row tile): lse ~ 6.
    Tensor q = Tensor::randn({1, 2, 70, 8}, DType::f64), k = Tensor::randn({1, 2, 70, 8}, DType::f64) * 2.0;
    Tensor v = Tensor::randn({1, 2, 70, 8}, DType::f64);
    EXPECT_LT(worst_error(
                  causal ? "attention (causal)" : "attention (full)",
                  [causal](const V& x) {
                    return scaled_dot_product_attention(x[0], x[1], x[2], causal, AttentionImpl::fused);
                  },
                  [causal](const V& x) {
                    return scaled_dot_product_attention(x[0], x[1], x[2], causal, AttentionImpl::naive);
                  },
                  {q, k, v}),
              tol);
  }
}

// gradcheck at tolerances ten thousand times tighter than its defaults (atol 1e-5, rtol 1e-3); the
// largest difference from the central differences is reported.
::testing::AssertionResult tight_gradcheck(const char* what, const Fn& fn, const V& inputs) {
  const GradcheckResult r = gradcheck(fn, inputs, GradcheckOptions{1e-5, 1e-9, 1e-7});
  if (std::getenv("HEADROOM_TEST_TOL_REPORT"))
    std::printf("  [precision] %s: gradcheck max abs error %.3g\n", what, r.max_abs_error);
  if (r.ok) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": " << r.message;
}

TEST(StatPrecision, F64GradcheckHoldsAtTightTolerances) {
  manual_seed(701);
  Tensor logits = (Tensor::randn({4, 30}, DType::f64) * 4.0).set_requires_grad(true);
  Tensor target = Tensor::from_vector({3, 17, -100, 29}, {4}, DType::i64);
  EXPECT_TRUE(tight_gradcheck("cross_entropy", [&](const V& v) { return cross_entropy(v[0], target); }, {logits}));
  Tensor h = testing::rand_f64({4, 6}), wv = testing::rand_f64({30, 6});
  EXPECT_TRUE(tight_gradcheck("chunked_cross_entropy",
                              [&](const V& v) { return nn::chunked_cross_entropy(v[0], v[1] * 3.0, target, 3); },
                              {h, wv}));

  Tensor x = (Tensor::randn({3, 16}, DType::f64) + 3.0).set_requires_grad(true);
  Tensor w = testing::rand_f64({16}), b = testing::rand_f64({16});
  EXPECT_TRUE(tight_gradcheck("layer_norm", [](const V& v) { return layer_norm(v[0], {16}, v[1], v[2]); }, {x, w, b}));

  Tensor xb = (Tensor::randn({4, 3, 5}, DType::f64) * 2.0 + 3.0).set_requires_grad(true);
  Tensor wb = testing::rand_f64({3}), bb = testing::rand_f64({3});
  EXPECT_TRUE(tight_gradcheck(
      "batch_norm", [](const V& v) { return batch_norm(v[0], v[1], v[2], Tensor(), Tensor(), true); }, {xb, wb, bb}));

  Tensor xg = (Tensor::randn({2, 6, 5}, DType::f64) + 3.0).set_requires_grad(true);
  Tensor wg = testing::rand_f64({6}), bg = testing::rand_f64({6});
  EXPECT_TRUE(tight_gradcheck("group_norm", [](const V& v) { return group_norm(v[0], 3, v[1], v[2]); }, {xg, wg, bg}));

  Tensor q = testing::rand_f64({1, 2, 6, 4}), v = testing::rand_f64({1, 2, 6, 4});
  Tensor k = (Tensor::randn({1, 2, 6, 4}, DType::f64) * 3.0).set_requires_grad(true);
  EXPECT_TRUE(tight_gradcheck(
      "attention", [](const V& t) { return scaled_dot_product_attention(t[0], t[1], t[2], true); }, {q, k, v}));
}

int64_t rounded(int64_t bytes) { return (bytes + 511) / 512 * 512; }  // the allocator's unit

// Bytes the allocator holds as activations after fn runs (with grad) on inputs made by make
// as parameters, less those held before; the output is kept alive meanwhile.
template <typename Make, typename Run>
int64_t activation_bytes_saved(Make make, Run run) {
  CachingAllocator& alloc = caching_allocator(Device::cpu());
  V inputs;
  {
    CategoryScope params(MemoryCategory::parameter);
    inputs = make();
  }
  const int64_t before = alloc.stats().category(MemoryCategory::activation).current;
  Tensor out = run(inputs);
  return alloc.stats().category(MemoryCategory::activation).current - before;
}

TEST(StatPrecision, SavedStatisticsTakeTheInputsPrecision) {
  manual_seed(702);
  for (DType dt : {DType::f64, DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dt));
    const int64_t stat = dt == DType::f64 ? 8 : 4;  // bytes of one statistic
    const TensorOptions opts = TensorOptions().dtype(dt);
    auto leaf = [&](const Shape& s) { return Tensor::randn(s, opts).set_requires_grad(true); };

    // cross_entropy: the logits (a parameter here), the i64 targets as the kernel reads them and
    // an [N] lse; "sum" keeps no count.
    const int64_t n = 2048, c = 3;
    std::vector<int64_t> tv(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) tv[static_cast<size_t>(i)] = i % c;
    Tensor target = Tensor::from_vector(tv, {n}, DType::i64);
    EXPECT_EQ(activation_bytes_saved(
                  [&] {
                    return V{leaf({n, c})};
                  },
                  [&](const V& v) { return cross_entropy(v[0], target, "sum"); }),
              rounded(n * 8) + rounded(n * stat))
        << "cross_entropy";

    // layer_norm: [M] mean and rstd.
    const int64_t m = 2048;
    EXPECT_EQ(activation_bytes_saved(
                  [&] {
                    return V{leaf({m, 4}), leaf({4}), leaf({4})};
                  },
                  [](const V& v) { return layer_norm(v[0], {4}, v[1], v[2]); }),
              2 * rounded(m * stat))
        << "layer_norm";

    // batch_norm (training): [C] mean and invstd.
    const int64_t channels = 1024;
    EXPECT_EQ(activation_bytes_saved(
                  [&] {
                    return V{leaf({3, channels, 2}), leaf({channels}), leaf({channels})};
                  },
                  [](const V& v) { return batch_norm(v[0], v[1], v[2], Tensor(), Tensor(), true); }),
              2 * rounded(channels * stat))
        << "batch_norm";

    // group_norm: [N, G] mean and rstd; its parameters take the input's dtype.
    EXPECT_EQ(activation_bytes_saved(
                  [&] {
                    return V{leaf({64, 128, 2}), leaf({128}), leaf({128})};
                  },
                  [](const V& v) { return group_norm(v[0], 32, v[1], v[2]); }),
              2 * rounded(64 * 32 * stat))
        << "group_norm";

    // Fused attention: its output and the [B, H, T] lse.
    const int64_t bh = 4, t = 256, d = 8;
    EXPECT_EQ(
        activation_bytes_saved(
            [&] {
              return V{leaf({1, bh, t, d}), leaf({1, bh, t, d}), leaf({1, bh, t, d})};
            },
            [](const V& v) { return scaled_dot_product_attention(v[0], v[1], v[2], true, AttentionImpl::fused); }),
        rounded(bh * t * d * static_cast<int64_t>(dtype_size(dt))) + rounded(bh * t * stat))
        << "attention";

    // chunked_cross_entropy: h and the weight (parameters), the i64 targets, the [N] lse and the
    // count of rows that count (a scalar of the statistics' dtype).
    EXPECT_EQ(activation_bytes_saved(
                  [&] {
                    return V{leaf({n, 8}), leaf({c, 8})};
                  },
                  [&](const V& v) { return nn::chunked_cross_entropy(v[0], v[1], target, 512); }),
              rounded(n * 8) + rounded(n * stat) + rounded(stat))
        << "chunked_cross_entropy";
  }
}

}  // namespace
}  // namespace headroom
