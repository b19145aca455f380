// The fused nn ops on every device: softmax and log_softmax along each dim, cross_entropy
// (every reduction, ignored targets), layer_norm (with and without affine), batch_norm
// (training with running statistics, evaluation), embedding and index_select (whose gradient
// is index_add, repeated indices included).
//
// The references of the fused ops are composites of simpler public ops in f64 (exp, amax, sum,
// mean, ...), not the fused op itself, so even the cpu instance checks the fused kernels
// against an independent formula (embedding and index_select are their own reference). The
// length each op works along -- the softmax dim, the class count,
// the normalised row, the channel count, the embedding width -- takes every size in kSizes and
// a large one (2^18 elements along it, or a 1M-element input).
//
// Tolerances: these ops reduce along that length (a max, a sum of exponentials, a mean and a
// variance) and their backward kernels reduce again (sum of dy * y, of dy * xhat), so acc_tol of
// the length, times a small factor where the backward formula subtracts nearly equal terms
// (stated at each use). Their saved statistics are f64 for f64 data (Note [statistics dtype] in
// engine/backend.h), so f64 is held to f64's tolerance.
#include <cmath>

#include "device_test.h"

namespace headroom::testing {
namespace {

using V = std::vector<Tensor>;

constexpr int64_t kLong = int64_t{1} << 18;

// softmax and log_softmax as composites: the max shift keeps exp in range; its gradient
// cancels (softmax is shift-invariant), so detaching it changes nothing.
Tensor softmax_ref(const Tensor& x, int64_t dim) {
  Tensor z = x - amax(x, {dim}, true).detach();
  Tensor e = exp(z);
  return e / sum(e, {dim}, true);
}

Tensor log_softmax_ref(const Tensor& x, int64_t dim) {
  Tensor z = x - amax(x, {dim}, true).detach();
  return z - log(sum(exp(z), {dim}, true));
}

class Softmax : public DeviceTest {
 protected:
  void run(bool log) {
    const char* name = log ? "log_softmax" : "softmax";
    auto op = [log](const Tensor& x, int64_t d) { return log ? log_softmax(x, d) : softmax(x, d); };
    auto ref = [log](const Tensor& x, int64_t d) { return log ? log_softmax_ref(x, d) : softmax_ref(x, d); };
    struct Case {
      Shape shape;
      int64_t dim;
      bool transposed;
    };
    std::vector<Case> cases;
    for (int64_t s : kSizes) {
      cases.push_back({{5, s}, 1, false});     // rows
      cases.push_back({{s, 6}, 0, false});     // columns
      cases.push_back({{3, s, 4}, 1, false});  // the middle of three
      cases.push_back({{3, 4, s}, 2, false});
      cases.push_back({{s, 5}, 1, true});  // along the rows of a transposed input
    }
    cases.push_back({{4, kLong}, 1, false});
    cases.push_back({{kLong, 4}, 0, false});
    cases.push_back({{2, kLong / 2, 2}, 1, false});
    for (const Case& c : cases) {
      const int64_t len = c.transposed ? c.shape[0] : c.shape[static_cast<size_t>(c.dim)];
      // The gradient's sum over the row of dy * y (or of dy with softmax(x) for log) subtracts
      // from dy: acc_tol(len) x 2.
      const Tol tol = acc_tol(len).times(2);
      // Logits of spread 3: f16's exp stays in range, and along the 2^18-long rows most
      // exp(x - max) are below half an f32 ulp of a sequential running sum.
      const double spread = 3;
      const bool t = c.transposed;
      const int64_t d = c.dim;
      check_op(
          str_cat(name, " ", shape_str(c.shape), t ? "^T" : "", " dim ", d),
          [op, t, d](const V& v) { return op(t ? v[0].t() : v[0], d); }, {randn(c.shape, spread)}, tol, tol, true,
          [ref, t, d](const V& v) { return ref(t ? v[0].t() : v[0], d); });
    }
  }
};

TEST_P(Softmax, Softmax) { run(false); }
TEST_P(Softmax, LogSoftmax) { run(true); }

// ---- cross-entropy ----

class CrossEntropy : public DeviceTest {};

// -log_softmax(logits)[target] per row from one-hot masks; ignored rows (target ==
// ignore_index) give 0 and do not count in the mean.
Tensor cross_entropy_ref(const Tensor& logits, const Tensor& target, const std::string& reduction,
                         int64_t ignore_index) {
  const int64_t c = logits.size(1);
  Tensor classes = Tensor::arange(0, static_cast<double>(c), 1, DType::i64).reshape({1, c});
  Tensor onehot = cast(eq(target.reshape({-1, 1}), classes), DType::f64);
  Tensor losses = -sum(log_softmax_ref(logits, 1) * onehot, {1});
  if (reduction == "none") return losses;
  if (reduction == "sum") return sum(losses);
  Tensor valid = cast(ne(target, Tensor::scalar(static_cast<double>(ignore_index), DType::i64)), DType::f64);
  return sum(losses) / sum(valid);
}

TEST_P(CrossEntropy, EveryClassCountReductionAndLayout) {
  {                                                   // every class count, reduction and ignore_index
    std::vector<std::pair<int64_t, int64_t>> shapes;  // {rows, classes}
    for (int64_t s : kSizes) shapes.push_back({33, s});
    shapes.push_back({4, kLong});
    shapes.push_back({kLong / 64, 64});
    for (auto [n, c] : shapes)
      for (const char* reduction : {"mean", "sum", "none"})
        for (int64_t ignore : {int64_t{-100}, int64_t{-1}}) {
          // A fifth of the rows ignored (but never all: the mean would be 0/0).
          std::vector<int64_t> t = randint({n}, c).to_vector<int64_t>();
          for (size_t i = 1; i < t.size(); i += 5) t[i] = ignore;
          Tensor target = Tensor::from_vector(t, {n}, DType::i64);
          // The mean and the sum add n per-row losses; each row's gradient is a softmax row.
          const Tol tol = acc_tol(std::max(n, c)).times(2);
          check_op(
              str_cat("cross_entropy ", n, " x ", c, " ", reduction, " ignore_index ", ignore),
              [reduction, ignore](const V& v) { return cross_entropy(v[0], v[1], reduction, ignore); },
              {randn({n, c}, 2), target}, tol, tol, true,
              [reduction, ignore](const V& v) { return cross_entropy_ref(v[0], v[1], reduction, ignore); });
        }
  }

  {  // transposed (non-contiguous) logits and i32 targets
    Tensor target = cast(randint({127}, 255), DType::i32);
    const Tol tol = acc_tol(255).times(2);
    check_op(
        "transposed logits, i32 targets", [](const V& v) { return cross_entropy(v[0].t(), v[1]); },
        {randn({255, 127}, 2), target}, tol, tol, true,
        [](const V& v) { return cross_entropy_ref(v[0].t(), cast(v[1], DType::i64), "mean", -100); });
  }
}

// ---- layer norm ----

class LayerNorm : public DeviceTest {};

Tensor layer_norm_ref(const Tensor& x, int64_t k, const Tensor& w, const Tensor& b, double eps) {
  std::vector<int64_t> dims;
  for (int64_t i = 0; i < k; ++i) dims.push_back(x.dim() - 1 - i);
  Tensor xc = x - mean(x, dims, true);
  Tensor y = xc / sqrt(mean(xc * xc, dims, true) + eps);
  if (w.defined()) y = y * w;
  if (b.defined()) y = y + b;
  return y;
}

TEST_P(LayerNorm, EveryRowLengthAffineAndLayout) {
  {  // every row length, with and without affine parameters
    struct Case {
      Shape x, normalized;
    };
    std::vector<Case> cases;
    for (int64_t s : kSizes) cases.push_back({{9, s}, {s}});
    cases.push_back({{4, kLong}, {kLong}});
    cases.push_back({{2, 3, 8, 16}, {8, 16}});  // two normalised dims
    const double eps = 1e-5;
    for (const Case& c : cases)
      for (int affine = 0; affine < 3; ++affine) {  // none, weight and bias, weight only
        const int64_t n = shape_numel(c.normalized);
        const auto k = static_cast<int64_t>(c.normalized.size());
        // dx = rstd (dy w - mean(dy w) - xhat mean(dy w xhat)): two row sums subtracted from
        // dy w; dw and db sum over the rows. acc_tol(n) x 4 for the cancellation. dw sums
        // dy xhat over the rows, terms of size ~1 even where xhat is 0 by symmetry (a row of
        // one element, whose f32 mean is not exactly an f64 x): scale at least sqrt(rows).
        const int64_t rows = shape_numel(c.x) / n;
        const Tol tol = acc_tol(n).times(4).scale_at_least(std::sqrt(static_cast<double>(rows)));
        std::vector<Tensor> inputs = {randn(c.x, 2, 0.5)};
        if (affine >= 1) inputs.push_back(randn(c.normalized, 1, 1));
        if (affine == 1) inputs.push_back(randn(c.normalized));
        Shape ns = c.normalized;
        auto weight = [affine](const V& v) { return affine >= 1 ? v[1] : Tensor(); };
        auto bias = [affine](const V& v) { return affine == 1 ? v[2] : Tensor(); };
        check_op(
            str_cat("layer_norm ", shape_str(c.x), " over ", shape_str(ns),
                    affine == 0   ? " no affine"
                    : affine == 1 ? " affine"
                                  : " weight only"),
            [ns, eps, weight, bias](const V& v) { return layer_norm(v[0], ns, weight(v), bias(v), eps); }, inputs, tol,
            tol, true, [k, eps, weight, bias](const V& v) { return layer_norm_ref(v[0], k, weight(v), bias(v), eps); });
      }
  }

  const Tol tol = acc_tol(255).times(4);
  check_op(
      "layer_norm of a transposed input", [](const V& v) { return layer_norm(v[0].t(), {255}, v[1], v[2]); },
      {randn({255, 17}), randn({255}), randn({255})}, tol, tol, true,
      [](const V& v) { return layer_norm_ref(v[0].t(), 1, v[1], v[2], 1e-5); });
}

// ---- batch norm ----

class BatchNorm : public DeviceTest {};

// Training: batch statistics over every dim but the channels (biased variance for the
// output, unbiased for the running variance).
Tensor batch_norm_ref(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  std::vector<int64_t> dims = {0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  Shape bshape(static_cast<size_t>(x.dim()), 1);
  bshape[1] = x.size(1);
  Tensor xc = x - mean(x, dims, true);
  Tensor y = xc / sqrt(mean(xc * xc, dims, true) + eps);
  return y * w.reshape(bshape) + b.reshape(bshape);
}

TEST_P(BatchNorm, TrainingAndRunningStatistics) {
  {  // output and gradients of a training step
    std::vector<Shape> shapes;
    for (int64_t s : kSizes) shapes.push_back({6, s, 5, 3});
    shapes.push_back({16, 64, 32, 32});
    shapes.push_back({kLong / 4, 4});  // 2-d input, long per-channel reduction
    const double eps = 1e-5, momentum = 0.1;
    for (const Shape& xs : shapes) {
      const int64_t c = xs[1];
      const int64_t per_channel = shape_numel(xs) / c;
      SCOPED_TRACE(str_cat("batch_norm training ", shape_str(xs)));
      // Running statistics live with the layer, in the test dtype on the device (their update is
      // checked below).
      Tensor rm_dev = dev_in(randn({c}, 0.5)), rv_dev = dev_in(uniform({c}, 0.5, 2));
      // dx subtracts the channel means of dy and dy * xhat from dy: acc_tol(per channel) x 4.
      const Tol tol = acc_tol(per_channel).times(4);
      check_op(
          "forward and backward",
          [&](const V& v) { return batch_norm(v[0], v[1], v[2], rm_dev, rv_dev, true, momentum, eps); },
          {randn(xs, 2, 1), randn({c}, 1, 1), randn({c})}, tol, tol, true,
          [eps](const V& v) { return batch_norm_ref(v[0], v[1], v[2], eps); });
    }
  }

  {  // running = (1 - momentum) running + momentum batch statistic (unbiased variance)
    std::vector<Shape> shapes;
    for (int64_t s : kSizes) shapes.push_back({6, s, 5, 3});
    shapes.push_back({16, 64, 32, 32});
    const double eps = 1e-5, momentum = 0.1;
    for (const Shape& xs : shapes) {
      SCOPED_TRACE(str_cat("batch_norm running statistics ", shape_str(xs)));
      const int64_t c = xs[1];
      const int64_t per_channel = shape_numel(xs) / c;
      Tensor x = randn(xs, 2, 1), rm0 = randn({c}, 0.5), rv0 = uniform({c}, 0.5, 2);
      Tensor rm = dev_in(rm0), rv = dev_in(rv0);
      batch_norm(dev_in(x), Tensor(), Tensor(), rm, rv, true, momentum, eps);
      Tensor xr = ref_in(x);
      std::vector<int64_t> dims = {0, 2, 3};
      Tensor want_mean = ref_in(rm0) * (1 - momentum) + mean(xr, dims) * momentum;
      Tensor want_var = ref_in(rv0) * (1 - momentum) + var(xr, dims) * momentum;
      const Tol tol = acc_tol(per_channel);
      EXPECT_TRUE(close(rm, want_mean, tol));
      EXPECT_TRUE(close(rv, want_var, tol));
    }
  }
}

TEST_P(BatchNorm, Evaluation) {
  // Evaluation normalises with the running statistics: an affine map per channel, whose
  // gradient is dy * w * invstd (dw, db sum over the batch and the plane).
  std::vector<Shape> shapes;
  for (int64_t s : kSizes) shapes.push_back({4, s, 3, 5});
  shapes.push_back({16, 64, 32, 32});
  const double eps = 1e-5;
  for (const Shape& xs : shapes) {
    const int64_t c = xs[1];
    const Tol tol = acc_tol(shape_numel(xs) / c);
    Tensor rm = randn({c}, 0.5), rv = uniform({c}, 0.5, 2);
    Shape bshape = {1, c, 1, 1};
    check_op(
        str_cat("batch_norm eval ", shape_str(xs)),
        [eps](const V& v) { return batch_norm(v[0], v[1], v[2], v[3], v[4], false, 0.1, eps); },
        {randn(xs, 2, 1), randn({c}, 1, 1), randn({c}), rm, rv}, tol, tol, true,
        [eps, bshape](const V& v) {
          return (v[0] - v[3].reshape(bshape)) / sqrt(v[4].reshape(bshape) + eps) * v[1].reshape(bshape) +
                 v[2].reshape(bshape);
        },
        {true, true, true, false, false});
  }
}

// ---- embedding, index_select, index_add ----

class Indexing : public DeviceTest {};

TEST_P(Indexing, EmbeddingWithRepeatedIndices) {
  // The gradient of embedding is index_add of the output gradient into the weight: repeated
  // indices add up (in the dtype, one add per repeat on the cpu, atomics on a GPU), so acc_tol
  // of the most repeats a row gets.
  struct Case {
    int64_t num, dim;
    Shape idx;
  };
  std::vector<Case> cases;
  for (int64_t s : kSizes) {
    cases.push_back({50, s, {4, 9}});   // row width
    cases.push_back({s, 16, {3, 64}});  // table size
  }
  cases.push_back({1000, 256, {64, 64}});  // a 4096 x 256 output
  cases.push_back({7, 64, {kLong / 64}});  // ~600 repeats of each row
  for (const Case& c : cases) {
    Tensor idx = randint(c.idx, c.num);
    const int64_t repeats = std::max<int64_t>(1, 3 * shape_numel(c.idx) / c.num);
    const Tol tol = acc_tol(repeats);
    check_op(
        str_cat("embedding ", c.num, " x ", c.dim, " indices ", shape_str(c.idx)),
        [](const V& v) { return embedding(v[0], v[1]); }, {randn({c.num, c.dim}), idx}, tol, tol);
  }
}

TEST_P(Indexing, IndexSelectAlongEachDimAndRange) {
  {  // every dim, contiguous and permuted, and a large gather
    for (int64_t s : kSizes) {
      Tensor x = randn({s, 6, 5});
      for (int64_t dim : {0, 1, 2}) {
        const int64_t size = x.size(dim);
        Tensor idx = randint({2 * s + 3}, size);
        const Tol tol = acc_tol(std::max<int64_t>(1, 3 * (2 * s + 3) / size));
        check_op(
            str_cat("index_select dim ", dim, " of ", shape_str(x.shape())),
            [dim](const V& v) { return index_select(v[0], dim, v[1]); }, {x, idx}, tol, tol);
        check_op(
            str_cat("index_select dim ", dim, " of a permuted view"),
            [dim](const V& v) {
              return index_select(v[0].permute({2, 0, 1}), dim, v[1]);
            },
            {x, randint({s}, x.permute({2, 0, 1}).size(dim))}, tol, tol);
      }
    }
    // A large gather: 2^18 rows picked from 1000.
    Tensor big_idx = randint({kLong}, 1000);
    const Tol tol = acc_tol(3 * kLong / 1000);
    check_op(
        "index_select of 2^18 rows", [](const V& v) { return index_select(v[0], 0, v[1]); },
        {randn({1000, 4}), big_idx}, tol, tol);
  }

  {  // an index out of range throws on every device
    Tensor x = Tensor::zeros({10, 3}, opts());
    Tensor bad = Tensor::from_vector<int64_t>({1, 10, 2}, {3}, TensorOptions().dtype(DType::i64).device(device()));
    EXPECT_THROW_WITH(index_select(x, 0, bad), ValueError, "10");
    Tensor negative = Tensor::from_vector<int64_t>({-1}, {1}, TensorOptions().dtype(DType::i64).device(device()));
    EXPECT_THROW_WITH(embedding(x, negative), ValueError, "embedding");
  }
}

HR_DEVICE_DTYPE_SUITE(Softmax);
HR_DEVICE_DTYPE_SUITE(CrossEntropy);
HR_DEVICE_DTYPE_SUITE(LayerNorm);
HR_DEVICE_DTYPE_SUITE(BatchNorm);
HR_DEVICE_DTYPE_SUITE(Indexing);

}  // namespace
}  // namespace headroom::testing
