// The CPU kernels for softmax, cross-entropy, layer norm, batch norm and indexing, checked
// against plain double-precision loops written here (no kernel computes its own reference),
// at sizes that take both the serial and the OpenMP paths, and in f16/bf16 against f32.
#include <cmath>
#include <vector>

#include "engine/backend.h"
#include "test_util.h"

namespace headroom {
namespace {

using testing::all_close;

Backend& cpu() { return backend_for(Device::cpu()); }

Tensor from_doubles(const std::vector<double>& v, const Shape& shape, DType dtype = DType::f64) {
  return Tensor::from_vector<double>(v, shape, TensorOptions().dtype(dtype));
}

// Softmax (or log-softmax) along dim of a row-major [outer, n, inner] array, in double.
std::vector<double> ref_softmax(const std::vector<double>& x, int64_t outer, int64_t n, int64_t inner, bool log) {
  std::vector<double> y(x.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      auto at = [&](int64_t j) { return static_cast<size_t>((o * n + j) * inner + i); };
      double mx = -INFINITY, s = 0;
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, x[at(j)]);
      for (int64_t j = 0; j < n; ++j) s += std::exp(x[at(j)] - mx);
      for (int64_t j = 0; j < n; ++j) y[at(j)] = log ? x[at(j)] - mx - std::log(s) : std::exp(x[at(j)] - mx) / s;
    }
  return y;
}

struct Geometry {
  int64_t outer, n, inner;
};
Geometry around(const Shape& s, int64_t dim) {
  Geometry g{1, s[static_cast<size_t>(dim)], 1};
  for (int64_t d = 0; d < static_cast<int64_t>(s.size()); ++d) {
    if (d < dim) g.outer *= s[static_cast<size_t>(d)];
    if (d > dim) g.inner *= s[static_cast<size_t>(d)];
  }
  return g;
}

// ---- softmax ----

TEST(NnKernels, SoftmaxMatchesReferenceAndRowsSumToOne) {
  manual_seed(1);
  // The second shape is large enough for the parallel paths (inner == 1 and inner > 1).
  for (const Shape& shape : {Shape{3, 4, 5}, Shape{40, 300, 6}}) {
    Tensor x = Tensor::randn(shape, DType::f64) * 3.0;
    std::vector<double> xv = x.to_vector<double>();
    for (int64_t dim = 0; dim < 3; ++dim) {
      Geometry g = around(shape, dim);
      for (bool log : {false, true}) {
        Tensor y = log ? log_softmax(x, dim) : softmax(x, dim);
        EXPECT_TRUE(all_close(y, from_doubles(ref_softmax(xv, g.outer, g.n, g.inner, log), shape), 1e-12, 1e-10))
            << "dim " << dim << " log " << log << " shape " << shape_str(shape);
        Tensor p = log ? y.exp() : y;
        EXPECT_TRUE(all_close(p.sum({dim}), Tensor::ones(p.sum({dim}).shape(), DType::f64), 1e-12, 0)) << "dim " << dim;
      }
    }
    // f32 through the same path.
    Tensor xf = x.to(DType::f32);
    for (int64_t dim = 0; dim < 3; ++dim)
      EXPECT_TRUE(all_close(softmax(xf, dim), softmax(x, dim).to(DType::f32), 1e-6, 1e-5)) << "dim " << dim;
  }
}

TEST(NnKernels, LogSoftmaxIsLogOfSoftmax) {
  manual_seed(2);
  Tensor x = Tensor::randn({6, 9});
  for (int64_t dim : {0, 1, -1}) EXPECT_TRUE(all_close(log_softmax(x, dim), softmax(x, dim).log(), 1e-5, 1e-5));
}

TEST(NnKernels, LargeLogitsStayFinite) {
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor x = Tensor::from_vector({1000, 1001, 1002, -1000, -1001, -1002}, {2, 3}, dt);
    Tensor y = softmax(x, 1), ly = log_softmax(x, 1);
    for (double v : y.to_vector<double>()) EXPECT_TRUE(std::isfinite(v)) << dtype_name(dt);
    for (double v : ly.to_vector<double>()) EXPECT_TRUE(std::isfinite(v)) << dtype_name(dt);
    // Shifting a row does not change its softmax: compare with the rows [0, 1, 2] and [0, -1, -2].
    std::vector<double> small = ref_softmax({0, 1, 2, 0, -1, -2}, 2, 3, 1, false);
    EXPECT_TRUE(all_close(y, from_doubles(small, {2, 3}, dt), 1e-6, 1e-6)) << dtype_name(dt);
    std::vector<double> small_log = ref_softmax({0, 1, 2, 0, -1, -2}, 2, 3, 1, true);
    EXPECT_TRUE(all_close(ly, from_doubles(small_log, {2, 3}, dt), 1e-5, 1e-6)) << dtype_name(dt);
    // Cross-entropy of huge logits is finite too.
    Tensor losses = cross_entropy(x, Tensor::from_vector({2, 0}, {2}, DType::i64), "none");
    EXPECT_TRUE(all_close(losses, from_doubles({-small_log[2], -small_log[3]}, {2}, dt), 1e-5, 1e-6));
  }
}

TEST(NnKernels, SoftmaxBackwardMatchesFormula) {
  manual_seed(3);
  for (const Shape& shape : {Shape{4, 7}, Shape{3, 5, 4}, Shape{20, 100, 30}}) {
    for (int64_t dim = 0; dim < static_cast<int64_t>(shape.size()); ++dim) {
      for (bool log : {false, true}) {
        Tensor x = Tensor::randn(shape, DType::f64);
        Tensor y = Tensor::empty(shape, DType::f64);
        cpu().softmax_forward(x, y, dim, log);
        Tensor dy = Tensor::randn(shape, DType::f64);
        Tensor dx = Tensor::empty(shape, DType::f64);
        cpu().softmax_backward(y, dy, dx, dim, log);
        Geometry g = around(shape, dim);
        std::vector<double> yv = y.to_vector<double>(), dyv = dy.to_vector<double>(), ref(yv.size());
        for (int64_t o = 0; o < g.outer; ++o)
          for (int64_t i = 0; i < g.inner; ++i) {
            auto at = [&](int64_t j) { return static_cast<size_t>((o * g.n + j) * g.inner + i); };
            double s = 0;
            for (int64_t j = 0; j < g.n; ++j) s += log ? dyv[at(j)] : dyv[at(j)] * yv[at(j)];
            for (int64_t j = 0; j < g.n; ++j)
              ref[at(j)] = log ? dyv[at(j)] - std::exp(yv[at(j)]) * s : yv[at(j)] * (dyv[at(j)] - s);
          }
        EXPECT_TRUE(all_close(dx, from_doubles(ref, shape), 1e-12, 1e-10))
            << shape_str(shape) << " dim " << dim << " log " << log;
      }
    }
  }
}

TEST(NnKernels, SoftmaxRejectsMismatchedOperands) {
  Tensor x = Tensor::zeros({2, 3});
  EXPECT_THROW_WITH(cpu().softmax_forward(x, Tensor::zeros({3, 2}), 1, false), ShapeError, "(2, 3)");
  EXPECT_THROW_WITH(cpu().softmax_forward(x, Tensor::zeros({2, 3}, DType::f64), 1, false), DTypeError, "f64");
  EXPECT_THROW_WITH(cpu().softmax_forward(x.t(), Tensor::zeros({3, 2}), 1, false), ValueError, "contiguous");
}

// ---- cross-entropy ----

TEST(NnKernels, CrossEntropyIsMinusLogSoftmaxAtTarget) {
  manual_seed(4);
  for (auto [n, c] : {std::pair<int64_t, int64_t>{5, 7}, {700, 100}}) {
    Tensor logits = Tensor::randn({n, c}, DType::f64) * 4.0;
    std::vector<int64_t> tv(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) tv[static_cast<size_t>(i)] = (i * 7 + 3) % c;
    tv[1] = -1;  // ignored
    Tensor target = Tensor::from_vector<int64_t>(tv, {n}, DType::i64);
    Tensor losses = Tensor::empty({n}, DType::f64), lse = Tensor::empty({n}, DType::f64);  // f64 statistics for f64
    cpu().cross_entropy_forward(logits, target, losses, lse);
    std::vector<double> xv = logits.to_vector<double>();
    std::vector<double> ls = ref_softmax(xv, n, c, 1, true);
    std::vector<double> ref_loss(static_cast<size_t>(n)), ref_lse(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const auto t = tv[static_cast<size_t>(i)];
      ref_loss[static_cast<size_t>(i)] = t < 0 ? 0.0 : -ls[static_cast<size_t>(i * c + t)];
      ref_lse[static_cast<size_t>(i)] = xv[static_cast<size_t>(i * c)] - ls[static_cast<size_t>(i * c)];
    }
    EXPECT_TRUE(all_close(losses, from_doubles(ref_loss, {n}), 1e-12, 1e-10));
    EXPECT_TRUE(all_close(lse, from_doubles(ref_lse, {n}), 1e-12, 1e-12));
    EXPECT_EQ(losses.to_vector<double>()[1], 0.0);

    // Backward: dlogits = dloss * (softmax - onehot), zero for the ignored row.
    Tensor dl = Tensor::randn({n}, DType::f64);
    Tensor dlogits = Tensor::empty({n, c}, DType::f64);
    cpu().cross_entropy_backward(logits, target, lse, dl, dlogits);
    std::vector<double> dlv = dl.to_vector<double>(), ref(static_cast<size_t>(n * c));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < c; ++j) {
        const auto t = tv[static_cast<size_t>(i)];
        const auto k = static_cast<size_t>(i * c + j);
        ref[k] = t < 0 ? 0.0 : dlv[static_cast<size_t>(i)] * (std::exp(ls[k]) - (j == t ? 1.0 : 0.0));
      }
    // lse is kept in f32, so the rebuilt softmax carries f32 rounding.
    EXPECT_TRUE(all_close(dlogits, from_doubles(ref, {n, c}), 1e-6, 1e-5));
    for (int64_t j = 0; j < c; ++j) EXPECT_EQ(dlogits.to_vector<double>()[static_cast<size_t>(c + j)], 0.0);
  }
}

TEST(NnKernels, CrossEntropyTargetOutOfRangeNamesRowAndValue) {
  Tensor logits = Tensor::zeros({3, 4});
  Tensor target = Tensor::from_vector({0, 1, 4}, {3}, DType::i64);
  Tensor losses = Tensor::empty({3}), lse = Tensor::empty({3});
  EXPECT_THROW_WITH(cpu().cross_entropy_forward(logits, target, losses, lse), ValueError, "target 4 at row 2");
  EXPECT_THROW_WITH(cross_entropy(logits, target), ValueError, "out of range for 4 classes");
}

TEST(NnKernels, CrossEntropyIgnoreIndexAndReductions) {
  manual_seed(5);
  Tensor logits = Tensor::randn({4, 3}, DType::f64);
  Tensor target = Tensor::from_vector({2, 7, 0, 1}, {4}, DType::i64);  // 7 is ignore_index
  Tensor ls = log_softmax(logits, 1);
  std::vector<double> lv = ls.to_vector<double>();
  double a = -lv[2], b = -lv[6], c = -lv[10];
  Tensor none = cross_entropy(logits, target, "none", 7);
  EXPECT_TRUE(all_close(none, from_doubles({a, 0, b, c}, {4})));
  EXPECT_NEAR(cross_entropy(logits, target, "sum", 7).item<double>(), a + b + c, 1e-12);
  EXPECT_NEAR(cross_entropy(logits, target, "mean", 7).item<double>(), (a + b + c) / 3, 1e-12);
  // Default ignore_index -100; i32 targets work too.
  Tensor t32 = Tensor::from_vector({2, -100, 0, 1}, {4}, DType::i32);
  EXPECT_NEAR(cross_entropy(logits, t32).item<double>(), (a + b + c) / 3, 1e-12);
  // Every sample ignored: the mean is 0 / 0.
  EXPECT_TRUE(std::isnan(cross_entropy(logits, Tensor::full({4}, -100, DType::i64)).item<double>()));
}

// ---- layer norm ----

TEST(NnKernels, LayerNormRowsHaveMeanZeroVarianceOne) {
  manual_seed(6);
  for (auto [m, n] : {std::pair<int64_t, int64_t>{6, 10}, {300, 257}}) {
    Tensor x = Tensor::randn({m, n}, DType::f64) * 5.0 + 3.0;
    Tensor y = Tensor::empty({m, n}, DType::f64);
    Tensor mean = Tensor::empty({m}, DType::f64), rstd = Tensor::empty({m}, DType::f64);  // f64 statistics for f64
    cpu().layer_norm_forward(x, Tensor(), Tensor(), 0.0, y, mean, rstd);
    std::vector<double> xv = x.to_vector<double>(), yv = y.to_vector<double>();
    std::vector<double> mv = mean.to_vector<double>(), rv = rstd.to_vector<double>();
    for (int64_t r = 0; r < m; ++r) {
      double s = 0, ss = 0, xs = 0, xss = 0;
      for (int64_t j = 0; j < n; ++j) {
        const double v = yv[static_cast<size_t>(r * n + j)];
        s += v;
        ss += v * v;
        xs += xv[static_cast<size_t>(r * n + j)];
      }
      const double mu = xs / static_cast<double>(n);
      for (int64_t j = 0; j < n; ++j) xss += std::pow(xv[static_cast<size_t>(r * n + j)] - mu, 2);
      EXPECT_NEAR(s / static_cast<double>(n), 0.0, 1e-12) << "row " << r;
      EXPECT_NEAR(ss / static_cast<double>(n), 1.0, 1e-10) << "row " << r;
      EXPECT_NEAR(mv[static_cast<size_t>(r)], mu, 1e-5) << "row " << r;
      EXPECT_NEAR(rv[static_cast<size_t>(r)], 1 / std::sqrt(xss / static_cast<double>(n)), 1e-6) << "row " << r;
    }
  }
}

TEST(NnKernels, LayerNormAffineAndBackwardSums) {
  manual_seed(7);
  const int64_t m = 200, n = 300;
  Tensor x = Tensor::randn({m, n}, DType::f64);
  Tensor w = Tensor::randn({n}, DType::f64), b = Tensor::randn({n}, DType::f64);
  Tensor y = Tensor::empty({m, n}, DType::f64), mean = Tensor::empty({m}, DType::f64),
         rstd = Tensor::empty({m}, DType::f64);
  const double eps = 1e-5;
  cpu().layer_norm_forward(x, w, b, eps, y, mean, rstd);
  std::vector<double> xv = x.to_vector<double>(), wv = w.to_vector<double>(), bv = b.to_vector<double>();
  std::vector<double> xhat(xv.size()), ref(xv.size());
  for (int64_t r = 0; r < m; ++r) {
    double mu = 0, var = 0;
    for (int64_t j = 0; j < n; ++j) mu += xv[static_cast<size_t>(r * n + j)];
    mu /= static_cast<double>(n);
    for (int64_t j = 0; j < n; ++j) var += std::pow(xv[static_cast<size_t>(r * n + j)] - mu, 2);
    var /= static_cast<double>(n);
    for (int64_t j = 0; j < n; ++j) {
      const auto k = static_cast<size_t>(r * n + j);
      xhat[k] = (xv[k] - mu) / std::sqrt(var + eps);
      ref[k] = xhat[k] * wv[static_cast<size_t>(j)] + bv[static_cast<size_t>(j)];
    }
  }
  EXPECT_TRUE(all_close(y, from_doubles(ref, {m, n}), 1e-12, 1e-10));

  Tensor dy = Tensor::randn({m, n}, DType::f64);
  Tensor dx = Tensor::empty({m, n}, DType::f64), dw = Tensor::full({n}, 7.0, DType::f64);
  Tensor db = Tensor::full({n}, 7.0, DType::f64);  // written, not accumulated into
  cpu().layer_norm_backward(dy, x, w, mean, rstd, dx, dw, db);
  std::vector<double> dyv = dy.to_vector<double>(), rdw(static_cast<size_t>(n)), rdb(static_cast<size_t>(n));
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < n; ++j) {
      const auto k = static_cast<size_t>(r * n + j);
      rdw[static_cast<size_t>(j)] += dyv[k] * xhat[k];
      rdb[static_cast<size_t>(j)] += dyv[k];
    }
  EXPECT_TRUE(all_close(dw, from_doubles(rdw, {n}), 1e-5, 1e-5));
  EXPECT_TRUE(all_close(db, from_doubles(rdb, {n}), 1e-10, 1e-10));
  // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w, all in double here.
  std::vector<double> rdx(xv.size());
  for (int64_t r = 0; r < m; ++r) {
    double mu = 0, var = 0, mg = 0, mgx = 0;
    for (int64_t j = 0; j < n; ++j) mu += xv[static_cast<size_t>(r * n + j)] / static_cast<double>(n);
    for (int64_t j = 0; j < n; ++j)
      var += std::pow(xv[static_cast<size_t>(r * n + j)] - mu, 2) / static_cast<double>(n);
    for (int64_t j = 0; j < n; ++j) {
      const auto k = static_cast<size_t>(r * n + j);
      const double g = dyv[k] * wv[static_cast<size_t>(j)];
      mg += g / static_cast<double>(n);
      mgx += g * xhat[k] / static_cast<double>(n);
    }
    for (int64_t j = 0; j < n; ++j) {
      const auto k = static_cast<size_t>(r * n + j);
      rdx[k] = (dyv[k] * wv[static_cast<size_t>(j)] - mg - xhat[k] * mgx) / std::sqrt(var + eps);
    }
  }
  EXPECT_TRUE(all_close(dx, from_doubles(rdx, {m, n}), 1e-11, 1e-11));  // f64 mean/rstd (was 1e-5 with f32)
  // Undefined dweight/dbias are skipped; dx is unchanged by that.
  Tensor dx2 = Tensor::empty({m, n}, DType::f64);
  cpu().layer_norm_backward(dy, x, w, mean, rstd, dx2, Tensor(), Tensor());
  EXPECT_TRUE(all_close(dx2, dx, 0, 0));
}

// ---- batch norm ----

TEST(NnKernels, BatchNormTrainingEvalAndRunningStatistics) {
  manual_seed(8);
  const int64_t n = 4, c = 3, h = 5;
  const double momentum = 0.1, eps = 1e-5;
  Tensor w = Tensor::from_vector({1.5, -0.5, 2.0}, {c}, DType::f64);
  Tensor b = Tensor::from_vector({0.1, 0.2, -0.3}, {c}, DType::f64);
  Tensor rm = Tensor::zeros({c}, DType::f64), rv = Tensor::ones({c}, DType::f64);
  std::vector<double> ref_rm(3, 0.0), ref_rv(3, 1.0);
  for (int step = 0; step < 4; ++step) {
    Tensor x = Tensor::randn({n, c, h, h}, DType::f64) * (1.0 + step) + static_cast<double>(step);
    Tensor y = batch_norm(x, w, b, rm, rv, true, momentum, eps);
    std::vector<double> xv = x.to_vector<double>(), yv = y.to_vector<double>();
    const int64_t s = h * h, count = n * s;
    for (int64_t ch = 0; ch < c; ++ch) {
      double mu = 0, ss = 0;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t k = 0; k < s; ++k) mu += xv[static_cast<size_t>((i * c + ch) * s + k)];
      mu /= static_cast<double>(count);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t k = 0; k < s; ++k) ss += std::pow(xv[static_cast<size_t>((i * c + ch) * s + k)] - mu, 2);
      const double var_biased = ss / static_cast<double>(count), var_unbiased = ss / static_cast<double>(count - 1);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t k = 0; k < s; ++k) {
          const auto at = static_cast<size_t>((i * c + ch) * s + k);
          const double want =
              (xv[at] - mu) / std::sqrt(var_biased + eps) * w.to_vector<double>()[static_cast<size_t>(ch)] +
              b.to_vector<double>()[static_cast<size_t>(ch)];
          ASSERT_NEAR(yv[at], want, 1e-10) << "step " << step << " channel " << ch;
        }
      ref_rm[static_cast<size_t>(ch)] = (1 - momentum) * ref_rm[static_cast<size_t>(ch)] + momentum * mu;
      ref_rv[static_cast<size_t>(ch)] = (1 - momentum) * ref_rv[static_cast<size_t>(ch)] + momentum * var_unbiased;
    }
    EXPECT_TRUE(all_close(rm, from_doubles(ref_rm, {c}), 1e-12, 1e-12)) << "step " << step;
    EXPECT_TRUE(all_close(rv, from_doubles(ref_rv, {c}), 1e-12, 1e-12)) << "step " << step;
  }
  // Eval uses (and does not touch) the running statistics.
  Tensor x = Tensor::randn({n, c, h}, DType::f64);
  Tensor y = batch_norm(x, w, b, rm, rv, false, momentum, eps);
  EXPECT_TRUE(all_close(rm, from_doubles(ref_rm, {c}), 0, 0));
  std::vector<double> xv = x.to_vector<double>(), yv = y.to_vector<double>(), ref(xv.size());
  std::vector<double> wv = w.to_vector<double>(), bv = b.to_vector<double>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t k = 0; k < h; ++k) {
        const auto at = static_cast<size_t>((i * c + ch) * h + k);
        const auto cu = static_cast<size_t>(ch);
        ref[at] = (xv[at] - ref_rm[cu]) / std::sqrt(ref_rv[cu] + eps) * wv[cu] + bv[cu];
      }
  EXPECT_TRUE(all_close(y, from_doubles(ref, {n, c, h}), 1e-12, 1e-10));
  // Training output differs from eval output for the same input.
  EXPECT_FALSE(all_close(batch_norm(x, w, b, Tensor(), Tensor(), true), y, 1e-3, 1e-3));
}

TEST(NnKernels, BatchNormNoAffineLargeAndBackwardSums) {
  manual_seed(9);
  const int64_t n = 16, c = 8, s = 1000;  // 128k elements: the parallel paths
  Tensor x = Tensor::randn({n, c, s}, DType::f64) * 2.0 - 1.0;
  Tensor y = Tensor::empty({n, c, s}, DType::f64), sm = Tensor::empty({c}, DType::f64),
         si = Tensor::empty({c}, DType::f64);
  cpu().batch_norm_forward(x, Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 0.0, y, sm, si);
  // Per channel: mean 0 and biased variance 1.
  Tensor per_channel_mean = y.mean({0, 2});
  Tensor per_channel_var = y.var({0, 2}, 0);
  EXPECT_TRUE(all_close(per_channel_mean, Tensor::zeros({c}, DType::f64), 1e-12, 0));
  EXPECT_TRUE(all_close(per_channel_var, Tensor::ones({c}, DType::f64), 1e-10, 0));
  // Backward: dbias = sum(dy), dweight = sum(dy * xhat), and training dx sums to zero per channel.
  Tensor dy = Tensor::randn({n, c, s}, DType::f64);
  Tensor dx = Tensor::empty({n, c, s}, DType::f64), dw = Tensor::empty({c}, DType::f64),
         db = Tensor::empty({c}, DType::f64);
  cpu().batch_norm_backward(dy, x, Tensor(), sm, si, true, dx, dw, db);
  EXPECT_TRUE(all_close(db, dy.sum({0, 2}), 1e-9, 1e-9));
  EXPECT_TRUE(all_close(dw, (dy * y).sum({0, 2}), 1e-3, 1e-5));                     // xhat from f32 statistics
  EXPECT_TRUE(all_close(dx.sum({0, 2}), Tensor::zeros({c}, DType::f64), 1e-5, 0));  // 16000 terms of O(1)
  // Eval backward is dy * invstd.
  cpu().batch_norm_backward(dy, x, Tensor(), sm, si, false, dx, Tensor(), Tensor());
  EXPECT_TRUE(all_close(dx, dy * si.to(DType::f64).reshape({1, c, 1}), 1e-12, 1e-12));
}

// ---- indexing ----

TEST(NnKernels, IndexSelectAnyDimAndStrides) {
  Tensor base = Tensor::arange(60, DType::f64).reshape({3, 4, 5});
  Tensor idx = Tensor::from_vector({2, 0, 2, 1}, {4}, DType::i64);
  for (bool transposed : {false, true}) {
    Tensor x = transposed ? base.permute({2, 0, 1}) : base;  // (5, 3, 4) non-contiguous
    std::vector<double> xv = x.contiguous().to_vector<double>();
    for (int64_t dim = 0; dim < 3; ++dim) {
      Shape shape = x.shape();
      shape[static_cast<size_t>(dim)] = 4;
      Tensor out = Tensor::empty(shape, DType::f64);
      cpu().index_select(x, dim, idx, out);
      std::vector<double> ref(static_cast<size_t>(shape_numel(shape)));
      const Shape& xs = x.shape();
      for (int64_t a = 0; a < shape[0]; ++a)
        for (int64_t bb = 0; bb < shape[1]; ++bb)
          for (int64_t cc = 0; cc < shape[2]; ++cc) {
            int64_t src[3] = {a, bb, cc};
            src[dim] = std::vector<int64_t>{2, 0, 2, 1}[static_cast<size_t>(src[dim])];
            ref[static_cast<size_t>((a * shape[1] + bb) * shape[2] + cc)] =
                xv[static_cast<size_t>((src[0] * xs[1] + src[1]) * xs[2] + src[2])];
          }
      EXPECT_TRUE(all_close(out, from_doubles(ref, shape), 0, 0)) << "dim " << dim << " transposed " << transposed;
    }
  }
  // Every dtype (the kernel moves bytes by element size).
  for (DType dt : {DType::f16, DType::bf16, DType::i32, DType::i64, DType::u8, DType::boolean, DType::f32}) {
    Tensor x = Tensor::arange(12).reshape({4, 3}).to(dt);
    Tensor out = index_select(x, 0, Tensor::from_vector({3, 3, 0}, {3}, DType::i64));
    EXPECT_TRUE(
        all_close(out.to(DType::f64),
                  Tensor::from_vector({9, 10, 11, 9, 10, 11, 0, 1, 2}, {3, 3}, DType::f64).to(dt).to(DType::f64), 0, 0))
        << dtype_name(dt);
  }
}

TEST(NnKernels, IndexSelectOutOfRangeNamesIndexPositionAndSize) {
  Tensor x = Tensor::zeros({5, 2});
  Tensor out = Tensor::empty({3, 2});
  EXPECT_THROW_WITH(cpu().index_select(x, 0, Tensor::from_vector({1, 5, 0}, {3}, DType::i64), out), ValueError,
                    "index 5 at position 1 is out of range for dim 0 of size 5");
  EXPECT_THROW_WITH(cpu().index_select(x, 0, Tensor::from_vector({1, 0, -1}, {3}, DType::i64), out), ValueError,
                    "index -1 at position 2");
  EXPECT_THROW_WITH(index_select(x, 1, Tensor::from_vector({2}, {1}, DType::i64)), ValueError, "of size 2");
}

TEST(NnKernels, IndexAddAccumulatesRepeatedIndices) {
  manual_seed(10);
  // Small, every dim, accumulating into existing values.
  for (int64_t dim = 0; dim < 3; ++dim) {
    Shape out_shape{3, 4, 5};
    Shape src_shape = out_shape;
    src_shape[static_cast<size_t>(dim)] = 6;
    std::vector<int64_t> iv{1, 0, 1, 2, 1, 0};
    Tensor out = Tensor::randn(out_shape, DType::f64), src = Tensor::randn(src_shape, DType::f64);
    std::vector<double> ref = out.to_vector<double>(), sv = src.to_vector<double>();
    for (int64_t a = 0; a < src_shape[0]; ++a)
      for (int64_t bb = 0; bb < src_shape[1]; ++bb)
        for (int64_t cc = 0; cc < src_shape[2]; ++cc) {
          int64_t dst[3] = {a, bb, cc};
          dst[dim] = iv[static_cast<size_t>(dst[dim])];
          ref[static_cast<size_t>((dst[0] * 4 + dst[1]) * 5 + dst[2])] +=
              sv[static_cast<size_t>((a * src_shape[1] + bb) * src_shape[2] + cc)];
        }
    cpu().index_add(out, dim, Tensor::from_vector<int64_t>(iv, {6}, DType::i64), src);
    EXPECT_TRUE(all_close(out, from_doubles(ref, out_shape), 1e-12, 1e-12)) << "dim " << dim;
  }
  // Large: 20000 indices into 50 rows of 300, threads over columns, all rows hit many times.
  const int64_t k = 20000, rows = 50, cols = 300;
  std::vector<int64_t> iv(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) iv[static_cast<size_t>(i)] = (i * 37) % rows;
  Tensor src = Tensor::randn({k, cols}, DType::f64);
  Tensor out = Tensor::zeros({rows, cols}, DType::f64);
  cpu().index_add(out, 0, Tensor::from_vector<int64_t>(iv, {k}, DType::i64), src);
  std::vector<double> sv = src.to_vector<double>(), ref(static_cast<size_t>(rows * cols), 0.0);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < cols; ++j)
      ref[static_cast<size_t>(iv[static_cast<size_t>(i)] * cols + j)] += sv[static_cast<size_t>(i * cols + j)];
  EXPECT_TRUE(all_close(out, from_doubles(ref, {rows, cols}), 1e-9, 1e-9));
  // Non-contiguous destination (a transposed view) and an integer dtype.
  Tensor base = Tensor::zeros({4, 3}, DType::i32);
  Tensor dst = base.t();  // (3, 4)
  cpu().index_add(dst, 1, Tensor::from_vector({3, 3, 0}, {3}, DType::i64),
                  Tensor::from_vector({1, 2, 3, 4, 5, 6, 7, 8, 9}, {3, 3}, DType::i32));
  EXPECT_EQ(base.to_vector<int32_t>(), (std::vector<int32_t>{3, 6, 9, 0, 0, 0, 0, 0, 0, 3, 9, 15}));
  EXPECT_THROW_WITH(
      cpu().index_add(Tensor::zeros({2, 2}), 0, Tensor::from_vector({2}, {1}, DType::i64), Tensor::zeros({1, 2})),
      ValueError, "index 2 at position 0 is out of range for dim 0 of size 2");
}

TEST(NnKernels, IndexAddHalfSumsRepeatsInFloat) {
  // 3000 ones added to one f16 element: an f16 running sum would get stuck at 2048 (2048 + 1
  // rounds back to 2048), but a group of equal indices is summed in f32 and rounded once.
  const int64_t k = 3000;
  Tensor out = Tensor::zeros({2, 1}, DType::f16);
  std::vector<int64_t> iv(static_cast<size_t>(k), 1);
  cpu().index_add(out, 0, Tensor::from_vector<int64_t>(iv, {k}, DType::i64), Tensor::ones({k, 1}, DType::f16));
  EXPECT_EQ(out.to_vector<double>(), (std::vector<double>{0, 3000}));  // 3000 is exact in f16
}

// ---- reduced precision ----

TEST(NnKernels, HalfAndBFloat16MatchFloat) {
  manual_seed(11);
  Tensor x = Tensor::randn({16, 33, 5}) * 2.0;
  Tensor logits = Tensor::randn({16, 10}) * 2.0;
  Tensor target = Tensor::from_vector({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, -100, 2, 3, 4, 5}, {16}, DType::i64);
  Tensor w = Tensor::randn({5}), b = Tensor::randn({5});
  Tensor wc = Tensor::randn({33}), bc = Tensor::randn({33});
  for (DType dt : {DType::f16, DType::bf16}) {
    const double tol = dt == DType::f16 ? 4e-3 : 3e-2;
    Tensor xl = x.to(dt).to(DType::f32);  // the same values at f32, so only the op's rounding differs
    for (int64_t dim : {0, 1, 2}) {
      Tensor y = softmax(x.to(dt), dim);
      EXPECT_EQ(y.dtype(), dt);
      EXPECT_TRUE(all_close(y.to(DType::f32), softmax(xl, dim), tol, tol)) << dtype_name(dt) << " dim " << dim;
      EXPECT_TRUE(all_close(log_softmax(x.to(dt), dim).to(DType::f32), log_softmax(xl, dim), tol * 4, tol))
          << dtype_name(dt) << " dim " << dim;
    }
    Tensor ll = logits.to(dt).to(DType::f32);
    EXPECT_TRUE(all_close(cross_entropy(logits.to(dt), target, "none").to(DType::f32),
                          cross_entropy(ll, target, "none"), tol * 4, tol))
        << dtype_name(dt);
    Tensor ln = layer_norm(x.to(dt), {5}, w.to(dt), b.to(dt));
    EXPECT_EQ(ln.dtype(), dt);
    EXPECT_TRUE(all_close(ln.to(DType::f32), layer_norm(xl, {5}, w.to(dt).to(DType::f32), b.to(dt).to(DType::f32)),
                          tol * 4, tol * 2))
        << dtype_name(dt);
    // f16 activations with f32 parameters and running statistics (mixed precision).
    Tensor rm = Tensor::zeros({33}), rv = Tensor::ones({33});
    Tensor rm_ref = Tensor::zeros({33}), rv_ref = Tensor::ones({33});
    Tensor bn = batch_norm(x.to(dt), wc, bc, rm, rv, true);
    EXPECT_EQ(bn.dtype(), dt);
    EXPECT_TRUE(all_close(bn.to(DType::f32), batch_norm(xl, wc, bc, rm_ref, rv_ref, true), tol * 4, tol * 2))
        << dtype_name(dt);
    EXPECT_TRUE(all_close(rm, rm_ref, 1e-6, 1e-5)) << dtype_name(dt);
    EXPECT_TRUE(all_close(rv, rv_ref, 1e-6, 1e-5)) << dtype_name(dt);
  }
}

}  // namespace
}  // namespace headroom
