// Each layer's forward against its functional op and, where it is short to write, against an
// independent formula built from elementwise ops (or a naive loop), in f64; plus the layers'
// argument and shape errors.
#include <cmath>
#include <numbers>

#include "nn/nn.h"
#include "test_util.h"

namespace headroom {
namespace {

using testing::all_close;
using testing::rand_f64;

TEST(Layers, LinearMatchesFormulaAndFunctional) {
  manual_seed(1);
  nn::Linear lin(5, 3);
  lin.to(DType::f64);
  Tensor x = rand_f64({4, 5}, false);
  Tensor y = lin(x);
  EXPECT_EQ(y.shape(), (Shape{4, 3}));
  Tensor ref = (x.unsqueeze(1) * lin.weight.unsqueeze(0)).sum({2}) + lin.bias;  // [4, 3, 5] summed over in
  EXPECT_TRUE(all_close(y, ref));
  EXPECT_TRUE(all_close(y, linear(x, lin.weight, lin.bias)));
  // Gradients reach the parameters and agree with the formula's.
  y.sum().backward();
  Tensor dw = lin.weight.grad(), db = lin.bias.grad();
  lin.zero_grad();
  ref.sum().backward();
  EXPECT_TRUE(all_close(dw, lin.weight.grad()));
  EXPECT_TRUE(all_close(db, lin.bias.grad()));
  // Leading batch dims pass through; no bias means no bias.
  nn::Linear nb(5, 2, false);
  nb.to(DType::f64);
  EXPECT_FALSE(nb.bias.defined());
  EXPECT_EQ(nb.parameters().size(), 1u);
  Tensor x3 = rand_f64({2, 3, 5}, false);
  EXPECT_TRUE(all_close(nb(x3), (x3.unsqueeze(2) * nb.weight).sum({3})));
  EXPECT_THROW_WITH(nn::Linear(0, 3), ValueError, "in=0");
}

// out[n, o, i, j] = b[o] + sum over c in o's group, kh, kw of w[o, c, kh, kw] x[n, g*cg + c, i*s + kh - p, j*s + kw - p]
Tensor naive_conv2d(const Tensor& x, const Tensor& w, const Tensor& b, int64_t s, int64_t p, int64_t groups) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t O = w.size(0), CG = w.size(1), K = w.size(2);
  const int64_t OH = (H + 2 * p - K) / s + 1, OW = (W + 2 * p - K) / s + 1;
  auto xv = x.to_vector<double>(), wv = w.to_vector<double>(), bv = b.to_vector<double>();
  std::vector<double> out(static_cast<size_t>(N * O * OH * OW));
  const int64_t og = O / groups;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < OH; ++i)
        for (int64_t j = 0; j < OW; ++j) {
          double acc = bv[static_cast<size_t>(o)];
          for (int64_t c = 0; c < CG; ++c)
            for (int64_t kh = 0; kh < K; ++kh)
              for (int64_t kw = 0; kw < K; ++kw) {
                const int64_t hi = i * s + kh - p, wi = j * s + kw - p;
                if (hi < 0 || hi >= H || wi < 0 || wi >= W) continue;
                const int64_t ci = (o / og) * CG + c;
                acc += wv[static_cast<size_t>(((o * CG + c) * K + kh) * K + kw)] *
                       xv[static_cast<size_t>(((n * C + ci) * H + hi) * W + wi)];
              }
          out[static_cast<size_t>(((n * O + o) * OH + i) * OW + j)] = acc;
        }
  return Tensor::from_vector(out, {N, O, OH, OW}, DType::f64);
}

TEST(Layers, Conv2dMatchesNaiveLoopAndFunctional) {
  manual_seed(2);
  for (auto [stride, pad, groups] :
       std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 0, 1}, {2, 1, 1}, {1, 1, 2}}) {
    nn::Conv2d conv(4, 6, 3, stride, pad, groups);
    conv.to(DType::f64);
    Tensor x = rand_f64({2, 4, 7, 6}, false);
    Tensor y = conv(x);
    SCOPED_TRACE(conv.name());
    EXPECT_TRUE(all_close(y, naive_conv2d(x, conv.weight, conv.bias, stride, pad, groups)));
    EXPECT_TRUE(all_close(y, conv2d(x, conv.weight, conv.bias, stride, pad, groups)));
  }
  nn::Conv2d c(3, 8, 5, 2, 2, 1, false);
  EXPECT_EQ(c.name(), "Conv2d(3, 8, kernel=5, stride=2, padding=2, bias=false)");
  EXPECT_THROW_WITH(c(Tensor::zeros({1, 4, 8, 8})), ShapeError, "expected input [N, 3, H, W], got (1, 4, 8, 8)");
  EXPECT_THROW_WITH(nn::Conv2d(6, 4, 3, 1, 0, 4), ValueError, "divisible by groups 4");
}

TEST(Layers, BatchNorm2dTrainAndEval) {
  manual_seed(3);
  nn::BatchNorm2d bn(3, 1e-5, 0.1);
  bn.to(DType::f64);
  {
    NoGradGuard g;
    bn.weight.copy_(Tensor::from_vector({1.0, 2.0, 0.5}, {3}));
    bn.bias.copy_(Tensor::from_vector({0.0, -1.0, 3.0}, {3}));
  }
  Tensor x = rand_f64({4, 3, 5, 2}, false) * 2.0 + 1.0;
  Tensor w = bn.weight.reshape({1, 3, 1, 1}), b = bn.bias.reshape({1, 3, 1, 1});
  Tensor mean = x.mean({0, 2, 3}, true);
  Tensor var = square(x - mean).mean({0, 2, 3}, true);  // biased, for normalising
  Tensor y = bn(x);
  EXPECT_TRUE(all_close(y, (x - mean) / sqrt(var + 1e-5) * w + b));
  const double n = 4 * 5 * 2;
  EXPECT_TRUE(all_close(bn.running_mean, mean.flatten() * 0.1));
  EXPECT_TRUE(all_close(bn.running_var, var.flatten() * (n / (n - 1)) * 0.1 + 0.9));  // unbiased
  EXPECT_EQ(bn.num_batches_tracked.item<int64_t>(), 1);
  EXPECT_TRUE(all_close(y, batch_norm(x, bn.weight, bn.bias, Tensor(), Tensor(), true, 0.1, 1e-5)));

  bn.eval();
  Tensor rm = bn.running_mean.clone(), rv = bn.running_var.clone();
  Tensor ye = bn(x);
  EXPECT_TRUE(all_close(ye, (x - rm.reshape({1, 3, 1, 1})) / sqrt(rv.reshape({1, 3, 1, 1}) + 1e-5) * w + b));
  EXPECT_TRUE(all_close(bn.running_mean, rm, 0, 0));  // eval leaves the statistics alone
  EXPECT_EQ(bn.num_batches_tracked.item<int64_t>(), 1);
  EXPECT_THROW_WITH(bn(Tensor::zeros({2, 4, 3, 3}, DType::f64)), ShapeError, "expected input [N, 3, H, W]");
}

TEST(Layers, LayerNormMatchesFormula) {
  nn::LayerNorm ln({4, 3});
  ln.to(DType::f64);
  {
    NoGradGuard g;
    ln.weight.copy_(rand_f64({4, 3}, false));
    ln.bias.copy_(rand_f64({4, 3}, false));
  }
  Tensor x = rand_f64({2, 5, 4, 3}, false);
  Tensor mean = x.mean({2, 3}, true);
  Tensor var = square(x - mean).mean({2, 3}, true);
  Tensor y = ln(x);
  EXPECT_TRUE(all_close(y, (x - mean) / sqrt(var + 1e-5) * ln.weight + ln.bias));
  EXPECT_TRUE(all_close(y, layer_norm(x, {4, 3}, ln.weight, ln.bias, 1e-5)));
  EXPECT_EQ(ln.name(), "LayerNorm((4, 3))");
  EXPECT_THROW_WITH(ln(Tensor::zeros({2, 3, 4}, DType::f64)), ShapeError, "(2, 3, 4) does not end in (4, 3)");
}

TEST(Layers, EmbeddingLooksUpRows) {
  nn::Embedding emb(10, 4);
  Tensor idx = Tensor::from_vector({3, 0, 9, 3, 1, 7}, {2, 3}, DType::i64);
  Tensor y = emb(idx);
  EXPECT_EQ(y.shape(), (Shape{2, 3, 4}));
  EXPECT_TRUE(all_close(y, index_select(emb.weight, 0, idx.flatten()).reshape({2, 3, 4}), 0, 0));
  EXPECT_TRUE(all_close(y, embedding(emb.weight, idx), 0, 0));
  y.sum().backward();  // row 3 used twice, rows 2, 4, 5, 6, 8 never
  std::vector<float> counts = emb.weight.grad().sum({1}).to_vector<float>();
  EXPECT_EQ(counts, (std::vector<float>{4, 4, 0, 8, 0, 0, 0, 4, 0, 4}));
  EXPECT_THROW_WITH(emb(Tensor::zeros({2})), DTypeError, "indices must be an integer tensor");
}

TEST(Layers, DropoutFollowsTrainingMode) {
  manual_seed(4);
  nn::Dropout drop(0.3);
  Tensor x = Tensor::ones({200, 500});
  Tensor y = drop(x);
  std::vector<float> v = y.to_vector<float>();
  int64_t zeros = 0;
  for (float e : v) {
    if (e == 0.0f) {
      ++zeros;
    } else {
      EXPECT_FLOAT_EQ(e, 1.0f / 0.7f);
    }
  }
  EXPECT_NEAR(static_cast<double>(zeros) / static_cast<double>(v.size()), 0.3, 0.005);
  drop.eval();
  EXPECT_TRUE(all_close(drop(x), x, 0, 0));
  EXPECT_TRUE(all_close(nn::Dropout(0.0)(x), x, 0, 0));
  EXPECT_THROW_WITH(nn::Dropout(1.5), ValueError, "p must be in [0, 1]");
}

TEST(Layers, ActivationsAndFlatten) {
  Tensor x = rand_f64({3, 4}, false);
  nn::ReLU relu_layer;
  nn::GELU gelu_layer;
  EXPECT_TRUE(all_close(relu_layer(x), relu(x), 0, 0));
  EXPECT_TRUE(all_close(relu_layer(x), maximum(x, Tensor::zeros({1}, DType::f64))));
  EXPECT_TRUE(all_close(gelu_layer(x), gelu(x), 0, 0));
  const double c = std::sqrt(2.0 / std::numbers::pi);
  EXPECT_TRUE(all_close(gelu_layer(x), 0.5 * x * (1.0 + tanh(c * (x + 0.044715 * x * x * x)))));
  Tensor img = Tensor::arange(120).reshape({2, 3, 4, 5});
  EXPECT_EQ(nn::Flatten()(img).shape(), (Shape{2, 60}));
  EXPECT_EQ(nn::Flatten(0, 1)(img).shape(), (Shape{6, 4, 5}));
  EXPECT_EQ(nn::Flatten(2)(img).shape(), (Shape{2, 3, 20}));
  EXPECT_TRUE(all_close(nn::Flatten()(img), img.reshape({2, 60}), 0, 0));
}

TEST(Layers, PoolingMatchesStridedSlices) {
  Tensor x = rand_f64({2, 3, 4, 6}, false);
  auto corner = [&](int64_t i, int64_t j) { return x.slice(2, i, 4, 2).slice(3, j, 6, 2); };
  Tensor max_ref = maximum(maximum(corner(0, 0), corner(0, 1)), maximum(corner(1, 0), corner(1, 1)));
  Tensor avg_ref = (corner(0, 0) + corner(0, 1) + corner(1, 0) + corner(1, 1)) / 4.0;
  nn::MaxPool2d mp(2);
  nn::AvgPool2d ap(2);
  EXPECT_TRUE(all_close(mp(x), max_ref, 0, 0));
  EXPECT_TRUE(all_close(ap(x), avg_ref));
  EXPECT_TRUE(all_close(nn::MaxPool2d(3, 1, 1)(x), max_pool2d(x, 3, 1, 1), 0, 0));
  EXPECT_TRUE(all_close(nn::AvgPool2d(3, 2, 1)(x), avg_pool2d(x, 3, 2, 1)));
  EXPECT_EQ(nn::MaxPool2d(3, 1, 1).name(), "MaxPool2d(3, stride=1, padding=1)");
  EXPECT_THROW_WITH(nn::MaxPool2d(2, 2, 2), ValueError, "at most half the kernel");
}

TEST(Layers, SequentialChainsItsChildren) {
  manual_seed(5);
  auto l1 = std::make_shared<nn::Linear>(4, 8);
  auto l2 = std::make_shared<nn::Linear>(8, 2);
  nn::Sequential seq(std::vector<std::shared_ptr<nn::Module>>{l1, std::make_shared<nn::ReLU>()});
  seq.push_back(l2);
  EXPECT_EQ(seq.size(), 3);
  EXPECT_EQ(seq.at(2), l2);
  Tensor x = Tensor::randn({5, 4});
  EXPECT_TRUE(all_close(seq(x), (*l2)(relu((*l1)(x))), 0, 0));
  EXPECT_EQ(seq.name(), "Sequential(3 modules)");
}

TEST(Layers, LossCallables) {
  Tensor logits = rand_f64({4, 3});
  Tensor target = Tensor::from_vector({0, 2, 1, 2}, {4}, DType::i64);
  nn::CrossEntropyLoss ce;
  Tensor loss = ce(logits, target);
  // -log softmax at the target, averaged.
  Tensor lse = log(exp(logits).sum({1}));
  double ref = 0;
  auto lv = logits.to_vector<double>(), lsev = lse.to_vector<double>();
  const int64_t t[4] = {0, 2, 1, 2};
  for (int i = 0; i < 4; ++i) ref += lsev[static_cast<size_t>(i)] - lv[static_cast<size_t>(i * 3 + t[i])];
  EXPECT_NEAR(loss.item<double>(), ref / 4, 1e-10);
  EXPECT_NEAR(nn::CrossEntropyLoss("sum")(logits, target).item<double>(), ref, 1e-10);
  Tensor a = rand_f64({3, 2}), b = rand_f64({3, 2}, false);
  EXPECT_NEAR(nn::MSELoss()(a, b).item<double>(), square(a - b).mean().item<double>(), 1e-12);
  EXPECT_EQ(nn::MSELoss("none")(a, b).shape(), (Shape{3, 2}));
  EXPECT_THROW_WITH(nn::MSELoss("avg"), ValueError, "reduction must be");
}

}  // namespace
}  // namespace headroom
