// gradcheck (f64 finite differences) for softmax, log_softmax, cross_entropy, mse_loss,
// layer_norm, batch_norm, embedding, dropout and index_select, with non-contiguous inputs and
// repeated indices; and the errors these ops throw, which must name shapes and dtypes.
#include <cmath>

#include "test_util.h"

namespace headroom {
namespace {

using testing::all_close;
using testing::grad_ok;
using testing::rand_f64;
using V = std::vector<Tensor>;

Tensor i64(std::initializer_list<double> v) {
  return Tensor::from_vector(v, {static_cast<int64_t>(v.size())}, DType::i64);
}

TEST(GradNnOps, SoftmaxAndLogSoftmaxEveryDim) {
  manual_seed(20);
  Tensor x = rand_f64({3, 4, 5});
  for (int64_t dim : {0, 1, -1}) {
    EXPECT_TRUE(grad_ok([dim](const V& v) { return softmax(v[0], dim); }, {x})) << "softmax dim " << dim;
    EXPECT_TRUE(grad_ok([dim](const V& v) { return log_softmax(v[0], dim); }, {x})) << "log_softmax dim " << dim;
  }
  // A transposed (non-contiguous) leaf, both dims.
  Tensor t = rand_f64({5, 4}, false).t().set_requires_grad(true);
  ASSERT_FALSE(t.is_contiguous());
  for (int64_t dim : {0, 1}) {
    EXPECT_TRUE(grad_ok([dim](const V& v) { return softmax(v[0], dim); }, {t})) << "dim " << dim;
    EXPECT_TRUE(grad_ok([dim](const V& v) { return log_softmax(v[0], dim); }, {t})) << "dim " << dim;
  }
  // Chained: softmax feeding further ops, and a 1-d input.
  EXPECT_TRUE(grad_ok([](const V& v) { return (softmax(v[0], 0) * v[0]).sum(); }, {rand_f64({6})}));
}

TEST(GradNnOps, SoftmaxSavedOutputIsVersionChecked) {
  Tensor x = rand_f64({2, 3});
  Tensor y = softmax(x, 1);
  {
    NoGradGuard g;
    y.detach().mul_(2.0);  // edits the saved output in place
  }
  EXPECT_THROW_WITH(y.sum().backward(), AutogradError, "softmax");
}

TEST(GradNnOps, CrossEntropyAllReductionsWithIgnoredTarget) {
  manual_seed(21);
  Tensor logits = rand_f64({5, 4});
  Tensor target = i64({3, -100, 0, 2, 0});
  for (const char* red : {"mean", "sum", "none"})
    EXPECT_TRUE(grad_ok([&target, red](const V& v) { return cross_entropy(v[0], target, red); }, {logits})) << red;
  // A non-negative ignore_index, and a non-contiguous logits leaf.
  Tensor t2 = i64({1, 1, 0, 3, 2});
  EXPECT_TRUE(grad_ok([&t2](const V& v) { return cross_entropy(v[0], t2, "mean", 1); }, {logits}));
  Tensor lt = rand_f64({4, 5}, false).t().set_requires_grad(true);
  EXPECT_TRUE(grad_ok([&target](const V& v) { return cross_entropy(v[0], target); }, {lt}));

  // The ignored row gets no gradient; the mean divides by the 4 rows that count.
  Tensor l = Tensor::randn({5, 4}).set_requires_grad(true);
  cross_entropy(l, target).backward();
  Tensor p = softmax(l.detach(), 1);
  std::vector<double> pv = p.to_vector<double>(), gv = l.grad().to_vector<double>();
  const int64_t tv[5] = {3, -100, 0, 2, 0};
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t j = 0; j < 4; ++j) {
      const auto k = static_cast<size_t>(i * 4 + j);
      const double want = tv[i] < 0 ? 0.0 : (pv[k] - (j == tv[i] ? 1.0 : 0.0)) / 4.0;
      EXPECT_NEAR(gv[k], want, 1e-6) << i << "," << j;
    }
}

TEST(GradNnOps, MseLoss) {
  Tensor a = rand_f64({3, 4}), b = rand_f64({3, 4});
  for (const char* red : {"mean", "sum", "none"})
    EXPECT_TRUE(grad_ok([red](const V& v) { return mse_loss(v[0], v[1], red); }, {a, b})) << red;
  EXPECT_NEAR(mse_loss(Tensor::from_vector({1, 2, 3}, {3}), Tensor::from_vector({1, 0, 0}, {3})).item<double>(),
              13.0 / 3, 1e-6);
}

TEST(GradNnOps, LayerNormWithAndWithoutAffine) {
  manual_seed(22);
  Tensor x = rand_f64({2, 3, 4});
  Tensor w = rand_f64({4}), b = rand_f64({4});
  EXPECT_TRUE(grad_ok([](const V& v) { return layer_norm(v[0], {4}, v[1], v[2]); }, {x, w, b}));
  EXPECT_TRUE(grad_ok([](const V& v) { return layer_norm(v[0], {4}, Tensor(), Tensor()); }, {x}));
  Tensor w2 = rand_f64({3, 4}), b2 = rand_f64({3, 4});
  EXPECT_TRUE(grad_ok([](const V& v) { return layer_norm(v[0], {3, 4}, v[1], v[2]); }, {x, w2, b2}));
  // Weight only; and a non-contiguous input.
  EXPECT_TRUE(grad_ok([](const V& v) { return layer_norm(v[0], {4}, v[1], Tensor()); }, {x, w}));
  Tensor xt = rand_f64({4, 3}, false).t().set_requires_grad(true);
  EXPECT_TRUE(grad_ok([](const V& v) { return layer_norm(v[0], {4}, v[1], v[2]); }, {xt, w, b}));
  // Parameters only (x constant).
  Tensor xc = rand_f64({2, 4}, false);
  EXPECT_TRUE(grad_ok([&xc](const V& v) { return layer_norm(xc, {4}, v[0], v[1]); }, {w, b}));
}

TEST(GradNnOps, BatchNormTrainingAndEval) {
  manual_seed(23);
  Tensor x = rand_f64({4, 3, 2, 2});
  Tensor w = rand_f64({3}), b = rand_f64({3});
  Tensor rm = Tensor::zeros({3}, DType::f64), rv = Tensor::ones({3}, DType::f64);
  EXPECT_TRUE(grad_ok([&](const V& v) { return batch_norm(v[0], v[1], v[2], rm, rv, true); }, {x, w, b}));
  EXPECT_TRUE(grad_ok([](const V& v) { return batch_norm(v[0], v[1], v[2], Tensor(), Tensor(), true); }, {x, w, b}));
  EXPECT_TRUE(grad_ok([](const V& v) { return batch_norm(v[0], Tensor(), Tensor(), Tensor(), Tensor(), true); }, {x}));
  Tensor x2 = rand_f64({6, 3});  // [N, C] without spatial dims
  EXPECT_TRUE(grad_ok([&](const V& v) { return batch_norm(v[0], v[1], v[2], rm, rv, true); }, {x2, w, b}));
  // Eval: the running statistics are constants.
  Tensor erm = Tensor::from_vector({0.5, -1, 2}, {3}, DType::f64),
         erv = Tensor::from_vector({2, 0.5, 1}, {3}, DType::f64);
  EXPECT_TRUE(grad_ok([&](const V& v) { return batch_norm(v[0], v[1], v[2], erm, erv, false); }, {x, w, b}));
  // Non-contiguous input.
  Tensor xp = rand_f64({3, 4, 5}, false).permute({1, 0, 2}).set_requires_grad(true);  // [4, 3, 5]
  EXPECT_TRUE(grad_ok([&](const V& v) { return batch_norm(v[0], v[1], v[2], rm, rv, true); }, {xp, w, b}));
}

TEST(GradNnOps, BatchNormRunningStatsAreBuffers) {
  Tensor x = Tensor::randn({8, 2, 3}).set_requires_grad(true);
  Tensor rm = Tensor::zeros({2}), rv = Tensor::ones({2});
  const uint64_t v0 = rm.version();
  Tensor y = batch_norm(x, Tensor(), Tensor(), rm, rv, true, 0.5);
  EXPECT_GT(rm.version(), v0);
  EXPECT_FALSE(rm.requires_grad());
  EXPECT_TRUE(y.requires_grad());
  EXPECT_TRUE(all_close(rm, x.detach().mean({0, 2}) * 0.5, 1e-6, 1e-5));
  EXPECT_TRUE(all_close(rv, x.detach().var({0, 2}) * 0.5 + 0.5, 1e-6, 1e-5));
  // Eval leaves them alone.
  const uint64_t v1 = rm.version();
  batch_norm(x, Tensor(), Tensor(), rm, rv, false);
  EXPECT_EQ(rm.version(), v1);
}

TEST(GradNnOps, EmbeddingWithRepeatedIndices) {
  Tensor w = rand_f64({5, 3});
  Tensor idx = Tensor::from_vector({1, 4, 1, 0, 1, 4}, {2, 3}, DType::i64);
  EXPECT_TRUE(grad_ok([&idx](const V& v) { return embedding(v[0], idx); }, {w}));
  Tensor out = embedding(w, idx);
  EXPECT_EQ(out.shape(), (Shape{2, 3, 3}));
  EXPECT_TRUE(all_close(out.select(0, 0).select(0, 2), w.detach().select(0, 1), 0, 0));
  // Gradient rows add up: row 1 is used three times.
  Tensor ws = Tensor::randn({5, 3}).set_requires_grad(true);
  embedding(ws, Tensor::from_vector({1, 1, 1, 3}, {4}, DType::i32)).sum().backward();
  EXPECT_TRUE(all_close(ws.grad().sum({1}), Tensor::from_vector({0, 9, 0, 3, 0}, {5})));
}

TEST(GradNnOps, DropoutWithFixedSeed) {
  Tensor x = rand_f64({4, 5});
  EXPECT_TRUE(grad_ok(
      [](const V& v) {
        manual_seed(1234);  // the same mask for every evaluation
        return dropout(v[0], 0.4, true);
      },
      {x}));
  // The same seed gives the same mask; the kept values are scaled by 1 / (1 - p).
  Tensor ones = Tensor::ones({200, 100});
  manual_seed(7);
  Tensor a = dropout(ones, 0.25, true);
  manual_seed(7);
  Tensor b = dropout(ones, 0.25, true);
  EXPECT_TRUE(all_close(a, b, 0, 0));
  std::vector<float> av = a.to_vector<float>();
  int64_t zeros = 0;
  for (float v : av) {
    if (v == 0) ++zeros;
    else EXPECT_NEAR(v, 1 / 0.75, 1e-6);
  }
  EXPECT_NEAR(static_cast<double>(zeros) / static_cast<double>(av.size()), 0.25, 0.02);
  // Identity when p = 0 or not training.
  EXPECT_TRUE(dropout(x, 0.0, true).is_same(x));
  EXPECT_TRUE(dropout(x, 0.5, false).is_same(x));
}

TEST(GradNnOps, IndexSelect) {
  Tensor x = rand_f64({4, 3});
  Tensor idx = i64({2, 0, 2, 3, 2});
  EXPECT_TRUE(grad_ok([&idx](const V& v) { return index_select(v[0], 0, idx); }, {x}));
  Tensor idx1 = i64({1, 1, 0});
  EXPECT_TRUE(grad_ok([&idx1](const V& v) { return index_select(v[0], 1, idx1); }, {x}));
  EXPECT_TRUE(grad_ok([&idx1](const V& v) { return index_select(v[0], -1, idx1); }, {x}));
  Tensor xt = rand_f64({3, 4, 2}, false).permute({2, 0, 1}).set_requires_grad(true);  // [2, 3, 4]
  EXPECT_TRUE(grad_ok([&idx1](const V& v) { return index_select(v[0], 1, idx1); }, {xt}));
}

TEST(GradNnOps, ErrorsNameShapesAndDtypes) {
  Tensor logits = Tensor::zeros({4, 3});
  EXPECT_THROW_WITH(cross_entropy(Tensor::zeros({4, 3, 2}), i64({0, 1, 2, 0})), ShapeError, "(4, 3, 2)");
  EXPECT_THROW_WITH(cross_entropy(logits, Tensor::zeros({4, 1}, DType::i64)), ShapeError, "(4, 1)");
  EXPECT_THROW_WITH(cross_entropy(logits, i64({0, 1, 2})), ShapeError, "4 samples but target (3,)");
  EXPECT_THROW_WITH(cross_entropy(logits, Tensor::zeros({4})), DTypeError, "integer tensor of class indices, got f32");
  EXPECT_THROW_WITH(cross_entropy(Tensor::zeros({4, 3}, DType::i32), i64({0, 1, 2, 0})), DTypeError, "i32");
  EXPECT_THROW_WITH(cross_entropy(logits, i64({0, 3, 0, 0})), ValueError, "target 3 at row 1");
  EXPECT_THROW_WITH(cross_entropy(logits, i64({0, 1, -2, 0})), ValueError, "target -2 at row 2");
  EXPECT_THROW_WITH(cross_entropy(logits, i64({0, 1, 2, 0}), "avg"), ValueError, "\"avg\"");

  EXPECT_THROW_WITH(mse_loss(Tensor::zeros({2, 3}), Tensor::zeros({3, 2})), ShapeError, "(2, 3) and target (3, 2)");
  EXPECT_THROW_WITH(mse_loss(Tensor::zeros({2}), Tensor::zeros({2}), "total"), ValueError, "reduction");

  Tensor x = Tensor::zeros({2, 3, 4});
  EXPECT_THROW_WITH(layer_norm(x, {3}, Tensor(), Tensor()), ShapeError, "normalized_shape (3,)");
  EXPECT_THROW_WITH(layer_norm(x, {4}, Tensor::ones({3}), Tensor()), ShapeError, "weight has shape (3,)");
  EXPECT_THROW_WITH(layer_norm(x, {4}, Tensor(), Tensor::ones({4, 1})), ShapeError, "bias has shape (4, 1)");
  EXPECT_THROW_WITH(layer_norm(Tensor::zeros({2, 4}, DType::i64), {4}, Tensor(), Tensor()), DTypeError, "i64");

  EXPECT_THROW_WITH(batch_norm(x, Tensor::ones({4}), Tensor(), Tensor(), Tensor(), true), ShapeError,
                    "weight has shape (4,) but the input (2, 3, 4) has 3 channels");
  EXPECT_THROW_WITH(batch_norm(x, Tensor(), Tensor::ones({2}), Tensor(), Tensor(), true), ShapeError, "bias");
  EXPECT_THROW_WITH(batch_norm(x, Tensor(), Tensor(), Tensor::zeros({5}), Tensor::ones({3}), true), ShapeError,
                    "running_mean has shape (5,)");
  EXPECT_THROW_WITH(batch_norm(x, Tensor(), Tensor(), Tensor::zeros({3}), Tensor::ones({3, 1}), false), ShapeError,
                    "running_var has shape (3, 1)");
  EXPECT_THROW_WITH(batch_norm(Tensor::zeros({3}), Tensor(), Tensor(), Tensor(), Tensor(), true), ShapeError,
                    "[N, C, ...]");
  EXPECT_THROW_WITH(batch_norm(Tensor::zeros({1, 3}), Tensor(), Tensor(), Tensor(), Tensor(), true), ValueError,
                    "more than one value per channel");

  Tensor w = Tensor::zeros({5, 2});
  EXPECT_THROW_WITH(embedding(w, Tensor::zeros({3})), DTypeError, "indices must be an integer tensor, got f32");
  EXPECT_THROW_WITH(embedding(Tensor::zeros({5}), i64({0})), ShapeError, "weight must be [num_embeddings, dim]");
  EXPECT_THROW_WITH(embedding(w, i64({0, 5})), ValueError, "index 5 at position 1 is out of range for dim 0 of size 5");

  EXPECT_THROW_WITH(dropout(x, 1.0, true), ValueError, "[0, 1), got 1");
  EXPECT_THROW_WITH(dropout(x, -0.1, false), ValueError, "got -0.1");
  EXPECT_THROW_WITH(softmax(Tensor::zeros({2, 3}, DType::i32), 0), DTypeError, "softmax");
  EXPECT_THROW_WITH(log_softmax(Tensor::zeros({2, 3}), 2), ValueError, "log_softmax");
}

}  // namespace
}  // namespace headroom
