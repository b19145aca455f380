// GroupNorm against a naive per-(sample, group) loop in f64, its gradients by gradcheck
// (contiguous, non-contiguous, 3-d and 4-d inputs, with and without affine), per-sample
// independence (what makes it safe under batch splitting), and its argument errors.
#include "nn/layers/group_norm.h"
#include "nn/nn.h"
#include "test_util.h"

namespace headroom {
namespace {

using testing::all_close;
using testing::grad_ok;
using testing::rand_f64;

// Normalises each (sample, group) slice with its own mean and biased variance, one at a time.
Tensor naive_group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias, double eps) {
  const int64_t n = x.size(0), c = x.size(1), cg = c / groups;
  std::vector<Tensor> samples;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<Tensor> parts;
    for (int64_t g = 0; g < groups; ++g) {
      Tensor part = x.select(0, i).slice(0, g * cg, (g + 1) * cg);
      Tensor mu = part.mean();
      Tensor var = square(part - mu).mean();
      parts.push_back((part - mu) / sqrt(var + eps));
    }
    samples.push_back(cat(parts, 0));
  }
  Tensor y = stack(samples, 0);
  Shape s(static_cast<size_t>(x.dim()), 1);
  s[1] = c;
  return y * reshape(weight, s) + reshape(bias, s);
}

TEST(GroupNorm, MatchesANaiveLoop) {
  manual_seed(1);
  nn::GroupNorm gn(3, 6);
  gn.to(DType::f64);
  {
    NoGradGuard g;
    gn.weight.copy_(rand_f64({6}, false));
    gn.bias.copy_(rand_f64({6}, false));
  }
  Tensor x = rand_f64({4, 6, 5, 3}, false) * 3.0 + 1.0;
  EXPECT_TRUE(all_close(gn(x), naive_group_norm(x, 3, gn.weight, gn.bias, 1e-5)));
  Tensor x3 = rand_f64({2, 6, 7}, false);
  EXPECT_TRUE(all_close(gn(x3), naive_group_norm(x3, 3, gn.weight, gn.bias, 1e-5)));
  EXPECT_EQ(gn.name(), "GroupNorm(3, 6)");
  EXPECT_EQ(gn.parameters().size(), 2u);
  EXPECT_TRUE(nn::GroupNorm(2, 4, 1e-5, /*affine=*/false).parameters().empty());
}

TEST(GroupNorm, EachSampleIsNormalisedOnItsOwn) {
  manual_seed(2);
  Tensor x = rand_f64({6, 4, 3, 3}, false);
  Tensor w = rand_f64({4}, false), b = rand_f64({4}, false);
  Tensor whole = nn::group_norm(x, 2, w, b);
  Tensor parts = cat({nn::group_norm(x.slice(0, 0, 1), 2, w, b), nn::group_norm(x.slice(0, 1, 6), 2, w, b)}, 0);
  EXPECT_TRUE(all_close(whole, parts, 1e-12, 1e-12));
}

TEST(GroupNorm, Gradcheck) {
  manual_seed(3);
  Tensor w = rand_f64({6}), b = rand_f64({6});
  auto f = [](int64_t groups) {
    return [groups](const std::vector<Tensor>& in) { return nn::group_norm(in[0], groups, in[1], in[2]); };
  };
  EXPECT_TRUE(grad_ok(f(3), {rand_f64({2, 6, 3, 2}), w, b}));
  EXPECT_TRUE(grad_ok(f(2), {rand_f64({3, 6, 4}), w, b}));
  EXPECT_TRUE(grad_ok(f(6), {rand_f64({2, 6, 2, 2}), w, b}));  // instance norm
  // Non-contiguous input: channels last, permuted into NCHW.
  Tensor nhwc = rand_f64({2, 3, 2, 6});
  EXPECT_TRUE(grad_ok(
      [](const std::vector<Tensor>& in) {
        return nn::group_norm(permute(in[0], {0, 3, 1, 2}), 2, in[1], in[2]);
      },
      {nhwc, w, b}));
  EXPECT_TRUE(grad_ok([](const std::vector<Tensor>& in) { return nn::group_norm(in[0], 3, Tensor(), Tensor()); },
                      {rand_f64({2, 6, 3})}));
}

TEST(GroupNorm, F32MatchesF64) {
  manual_seed(4);
  Tensor x = rand_f64({3, 8, 4, 4}, false);
  Tensor w = rand_f64({8}, false), b = rand_f64({8}, false);
  Tensor ref = nn::group_norm(x, 4, w, b);
  Tensor y = nn::group_norm(x.to(DType::f32), 4, w.to(DType::f32), b.to(DType::f32));
  EXPECT_EQ(y.dtype(), DType::f32);
  EXPECT_TRUE(all_close(y.to(DType::f64), ref, 1e-5, 1e-4));
}

TEST(GroupNorm, Errors) {
  EXPECT_THROW_WITH(nn::GroupNorm(4, 6), ValueError, "multiple of groups");
  nn::GroupNorm gn(2, 4);
  EXPECT_THROW_WITH(gn(Tensor::zeros({2, 3, 5})), ShapeError, "expected input [N, 4, *], got (2, 3, 5)");
  EXPECT_THROW_WITH(nn::group_norm(Tensor::zeros({2, 6, 3}), 4, Tensor(), Tensor()), ValueError,
                    "6 channels of input (2, 6, 3) cannot be split into 4 groups");
  EXPECT_THROW_WITH(nn::group_norm(Tensor::zeros({2, 6, 3}), 3, Tensor::ones({5}), Tensor()), ShapeError,
                    "weight has shape (5,), expected (6,)");
  EXPECT_THROW_WITH(nn::group_norm(Tensor::zeros({2, 6, 3}), 3, Tensor::ones({6}, DType::f64), Tensor()), DTypeError,
                    "weight is f64");
  EXPECT_THROW_WITH(nn::group_norm(Tensor::zeros({6}), 3, Tensor(), Tensor()), ShapeError, "[N, C, *]");
}

}  // namespace
}  // namespace headroom
