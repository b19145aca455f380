// matmul, linear, conv2d and pooling: numpy-style result shapes and values, gradients by
// finite differences (f64) for every operand layout that takes its own path (1-d, batched,
// broadcast, transposed views), and the errors that quote the shapes.
#include "engine/caching_allocator.h"
#include "test_util.h"

namespace headroom {
namespace {

using testing::all_close;
using testing::grad_ok;
using testing::rand_f64;
using In = const std::vector<Tensor>&;

// ---- matmul ----

// Reference product of two 2-d tensors through sums of broadcast products (no matmul).
Tensor product_by_sums(const Tensor& a, const Tensor& b) {
  NoGradGuard no_grad;
  return (a.unsqueeze(2) * b.unsqueeze(0)).sum({1});
}

TEST(Matmul, ShapesFollowNumpy) {
  Tensor v3 = Tensor::randn({3}), m23 = Tensor::randn({2, 3}), m34 = Tensor::randn({3, 4});
  EXPECT_EQ(matmul(v3, v3).shape(), Shape{});
  EXPECT_EQ(matmul(m23, v3).shape(), (Shape{2}));
  EXPECT_EQ(matmul(v3, m34).shape(), (Shape{4}));
  EXPECT_EQ(matmul(m23, m34).shape(), (Shape{2, 4}));
  EXPECT_EQ(matmul(Tensor::randn({5, 1, 2, 3}), Tensor::randn({6, 3, 4})).shape(), (Shape{5, 6, 2, 4}));
  EXPECT_EQ(matmul(Tensor::randn({7, 2, 3}), v3).shape(), (Shape{7, 2}));
  EXPECT_EQ(matmul(v3, Tensor::randn({7, 3, 4})).shape(), (Shape{7, 4}));
  EXPECT_EQ(matmul(Tensor::randn({7, 2, 3}), m34).shape(), (Shape{7, 2, 4}));
  EXPECT_EQ(matmul(Tensor::randn({2, 0}), Tensor::randn({0, 3})).to_vector<float>(), std::vector<float>(6, 0.0f));
}

TEST(Matmul, ValuesMatchSumsOfProducts) {
  Tensor a = Tensor::randn({5, 7}, DType::f64), b = Tensor::randn({7, 3}, DType::f64);
  EXPECT_TRUE(all_close(matmul(a, b), product_by_sums(a, b)));
  EXPECT_TRUE(all_close(matmul(a.slice(0, 1, 2), b).reshape({3}), matmul(a.select(0, 1), b)));
  EXPECT_TRUE(all_close(matmul(a, b.select(1, 2)), product_by_sums(a, b).select(1, 2)));
  EXPECT_NEAR(matmul(a.select(0, 0), b.select(1, 0)).item<double>(),
              product_by_sums(a, b).select(0, 0).select(0, 0).item<double>(), 1e-12);
  // Batched with broadcast batch dims: each batch is its own 2-d product.
  Tensor x = Tensor::randn({2, 1, 5, 7}, DType::f64), y = Tensor::randn({3, 7, 3}, DType::f64);
  Tensor z = matmul(x, y);
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      EXPECT_TRUE(all_close(z.select(0, i).select(0, j), product_by_sums(x.select(0, i).select(0, 0), y.select(0, j))));
  // Batch dims that cannot merge into one stride (broadcast inside, transposed outside).
  Tensor p = Tensor::randn({3, 4, 5, 6}, DType::f64).permute({1, 0, 2, 3});  // [4, 3, 5, 6]
  Tensor q = Tensor::randn({4, 1, 6, 2}, DType::f64).expand({4, 3, 6, 2});
  Tensor r = matmul(p, q);
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 3; ++j)
      EXPECT_TRUE(all_close(r.select(0, i).select(0, j),
                            product_by_sums(p.select(0, i).select(0, j), q.select(0, i).select(0, j))));
}

TEST(Matmul, PromotesFloatDtypes) {
  Tensor a = Tensor::randn({3, 4}), b = Tensor::randn({4, 2}, DType::f64);
  Tensor c = matmul(a, b);
  EXPECT_EQ(c.dtype(), DType::f64);
  EXPECT_TRUE(all_close(c, product_by_sums(a.to(DType::f64), b)));
  EXPECT_EQ(matmul(a.to(DType::f16), b.to(DType::bf16)).dtype(), DType::f32);
  // Gradients come back in each operand's own dtype.
  Tensor x = Tensor::randn({3, 4}).set_requires_grad(true),
         w = Tensor::randn({4, 2}, DType::f64).set_requires_grad(true);
  matmul(x, w).sum().backward();
  EXPECT_EQ(x.grad().dtype(), DType::f32);
  EXPECT_EQ(w.grad().dtype(), DType::f64);
  EXPECT_TRUE(all_close(x.grad(), w.detach().sum({1}).unsqueeze(0).expand({3, 4})));
  EXPECT_TRUE(all_close(w.grad(), x.detach().to(DType::f64).sum({0}).unsqueeze(1).expand({4, 2})));
  EXPECT_THROW_WITH(matmul(Tensor::ones({2, 2}, DType::i64), a.slice(1, 0, 2)), DTypeError, "i64");
}

TEST(Matmul, Gradients) {
  // Every rank combination numpy allows, each a different path (squeezed views, the batch
  // folded into M, broadcast batches summed back).
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{4}, {4}},          {{4}, {4, 3}},    {{3, 4}, {4}},    {{3, 4}, {4, 2}},          {{2, 3, 4}, {4, 5}},
      {{3, 4}, {2, 4, 5}}, {{2, 3, 4}, {4}}, {{4}, {2, 4, 3}}, {{2, 1, 3, 4}, {3, 4, 2}}, {{1, 3, 4}, {2, 4, 2}},
  };
  for (const auto& [sa, sb] : cases)
    EXPECT_TRUE(grad_ok([](In in) { return matmul(in[0], in[1]); }, {rand_f64(sa), rand_f64(sb)}))
        << shape_str(sa) << " @ " << shape_str(sb);
}

TEST(Matmul, GradientsOfNonContiguousInputs) {
  auto mm = [](In in) { return matmul(in[0], in[1]); };
  // Leaves that are transposed views: column-major operands handed to BLAS as they are.
  Tensor at = rand_f64({4, 3}, false).t().set_requires_grad(true);
  Tensor bt = rand_f64({2, 4}, false).t().set_requires_grad(true);
  ASSERT_FALSE(at.is_contiguous());
  EXPECT_TRUE(grad_ok(mm, {at, bt}));
  // Batched, with the batch dim in the middle of the storage, and every other column.
  Tensor ab = rand_f64({3, 2, 4}, false).permute({1, 0, 2}).set_requires_grad(true);  // [2, 3, 4]
  Tensor bs = rand_f64({2, 4, 6}, false).slice(2, 0, 6, 2).set_requires_grad(true);   // [2, 4, 3]
  EXPECT_TRUE(grad_ok(mm, {ab, bs}));
  // A 3-d operand whose rows do not stack (no fold) times a 2-d one.
  Tensor nf = rand_f64({2, 4, 3}, false).transpose(1, 2).set_requires_grad(true);  // [2, 3, 4]
  EXPECT_TRUE(grad_ok(mm, {nf, rand_f64({4, 2})}));
  // The same tensor on both sides.
  EXPECT_TRUE(grad_ok([](In in) { return matmul(in[0], in[0].t()); }, {rand_f64({3, 5})}));
}

TEST(Matmul, ErrorsQuoteBothShapes) {
  EXPECT_THROW_WITH(matmul(Tensor::ones({4, 3}), Tensor::ones({5, 2})), ShapeError,
                    "matmul: cannot multiply (4, 3) by (5, 2)");
  EXPECT_THROW_WITH(matmul(Tensor::ones({3}), Tensor::ones({4})), ShapeError, "cannot multiply (3,) by (4,)");
  EXPECT_THROW_WITH(matmul(Tensor::ones({2, 3, 4}), Tensor::ones({5, 4, 2})), ShapeError,
                    "cannot broadcast the batch dims of (2, 3, 4) and (5, 4, 2)");
  EXPECT_THROW_WITH(matmul(Tensor::scalar(1.0), Tensor::ones({2})), ShapeError, "at least 1 dim");
  EXPECT_THROW_WITH(matmul(Tensor::ones({2, 2}), Tensor()), ValueError, "undefined");
}

TEST(Matmul, RejectsMixedDevices) {
  Tensor gpu;
  try {
    gpu = Tensor::ones({2, 2}, Device::cuda(0));
  } catch (const Error&) {
    GTEST_SKIP() << "no CUDA device in this build or machine";
  }
  EXPECT_THROW_WITH(matmul(Tensor::ones({2, 2}), gpu), DeviceError, "matmul: tensors are on different devices");
  EXPECT_THROW_WITH(linear(Tensor::ones({2, 2}), gpu, Tensor()), DeviceError, "linear");
  EXPECT_THROW_WITH(conv2d(Tensor::ones({1, 2, 3, 3}), gpu.reshape({1, 2, 2, 1}), Tensor()), DeviceError, "conv2d");
}

// ---- linear ----

TEST(Linear, MatchesMatmulWithTransposedWeight) {
  Tensor x = Tensor::randn({2, 3, 5}, DType::f64), w = Tensor::randn({4, 5}, DType::f64),
         b = Tensor::randn({4}, DType::f64);
  Tensor y = linear(x, w, b);
  EXPECT_EQ(y.shape(), (Shape{2, 3, 4}));
  EXPECT_TRUE(all_close(y, matmul(x, w.t()) + b));
  EXPECT_TRUE(all_close(linear(x, w, Tensor()), matmul(x, w.t())));
  EXPECT_EQ(linear(Tensor::randn({5}), w.to(DType::f32), Tensor()).shape(), (Shape{4}));
  // No input features: the output is the bias.
  EXPECT_TRUE(all_close(linear(Tensor::ones({3, 0}), Tensor::ones({2, 0}), Tensor::from_vector({1.0, 2.0}, {2})),
                        Tensor::from_vector({1.0, 2.0, 1.0, 2.0, 1.0, 2.0}, {3, 2})));
  // Mixed dtypes promote; f16 computes through f32.
  EXPECT_EQ(linear(x.to(DType::f32), w, Tensor()).dtype(), DType::f64);
  EXPECT_TRUE(all_close(linear(x.to(DType::f16), w.to(DType::f16), b.to(DType::f16)), y, 2e-2, 2e-2));
}

TEST(Linear, Gradients) {
  auto with_bias = [](In in) { return linear(in[0], in[1], in[2]); };
  auto without = [](In in) { return linear(in[0], in[1], Tensor()); };
  EXPECT_TRUE(grad_ok(with_bias, {rand_f64({3, 5}), rand_f64({4, 5}), rand_f64({4})}));
  EXPECT_TRUE(grad_ok(without, {rand_f64({3, 5}), rand_f64({4, 5})}));
  EXPECT_TRUE(grad_ok(with_bias, {rand_f64({2, 3, 5}), rand_f64({4, 5}), rand_f64({4})}));
  EXPECT_TRUE(grad_ok(with_bias, {rand_f64({5}), rand_f64({4, 5}), rand_f64({4})}));
  // A non-contiguous input (copied to rows) and a transposed weight view.
  Tensor xt = rand_f64({5, 3}, false).t().set_requires_grad(true);
  Tensor wt = rand_f64({5, 4}, false).t().set_requires_grad(true);
  EXPECT_TRUE(grad_ok(with_bias, {xt, wt, rand_f64({4})}));
  // Only some inputs need gradients.
  EXPECT_TRUE(grad_ok(with_bias, {rand_f64({3, 5}, false), rand_f64({4, 5}), rand_f64({4}, false)}));
  EXPECT_TRUE(grad_ok(with_bias, {rand_f64({3, 5}), rand_f64({4, 5}, false), rand_f64({4}, false)}));
}

TEST(Linear, ErrorsNameShapes) {
  EXPECT_THROW_WITH(linear(Tensor::ones({4, 3}), Tensor::ones({5, 4}), Tensor()), ShapeError,
                    "linear: input (4, 3) has 3 features but weight (5, 4) expects 4");
  EXPECT_THROW_WITH(linear(Tensor::ones({4, 3}), Tensor::ones({5, 3}), Tensor::ones({4})), ShapeError,
                    "bias (4,) does not match weight (5, 3) (expected (5,))");
  EXPECT_THROW_WITH(linear(Tensor::ones({4, 3}), Tensor::ones({3}), Tensor()), ShapeError, "weight must be 2-d");
}

// ---- conv2d ----

TEST(Conv2d, Gradients) {
  auto conv = [](const Conv2dParams& p, bool with_bias) {
    return [p, with_bias](In in) { return conv2d(in[0], in[1], with_bias ? in[2] : Tensor(), p); };
  };
  auto make = [](int64_t s, int64_t pad, int64_t d, int64_t g) {
    Conv2dParams p;
    p.stride_h = p.stride_w = s;
    p.pad_h = p.pad_w = pad;
    p.dilation_h = p.dilation_w = d;
    p.groups = g;
    return p;
  };
  EXPECT_TRUE(grad_ok(conv(make(1, 0, 1, 1), true), {rand_f64({2, 3, 5, 5}), rand_f64({4, 3, 3, 3}), rand_f64({4})}));
  EXPECT_TRUE(grad_ok(conv(make(1, 0, 1, 1), false), {rand_f64({2, 3, 5, 5}), rand_f64({4, 3, 3, 3})}));
  EXPECT_TRUE(grad_ok(conv(make(2, 1, 1, 1), true), {rand_f64({2, 2, 6, 5}), rand_f64({3, 2, 3, 3}), rand_f64({3})}));
  EXPECT_TRUE(grad_ok(conv(make(1, 2, 2, 1), true), {rand_f64({1, 2, 6, 6}), rand_f64({3, 2, 3, 3}), rand_f64({3})}));
  EXPECT_TRUE(grad_ok(conv(make(1, 1, 1, 2), true), {rand_f64({2, 4, 4, 5}), rand_f64({6, 2, 3, 2}), rand_f64({6})}));
  EXPECT_TRUE(grad_ok(conv(make(1, 1, 1, 3), false), {rand_f64({1, 3, 5, 4}), rand_f64({3, 1, 3, 3})}));  // depthwise
  // Asymmetric stride and padding through the params overload.
  Conv2dParams p = make(2, 0, 1, 1);
  p.stride_w = 1;
  p.pad_w = 1;
  EXPECT_TRUE(grad_ok(conv(p, true), {rand_f64({2, 2, 7, 4}), rand_f64({2, 2, 3, 2}), rand_f64({2})}));
  // A non-contiguous input and weight (made contiguous inside), and only some inputs needing grad.
  Tensor xp = rand_f64({2, 5, 5, 3}, false).permute({0, 3, 1, 2}).set_requires_grad(true);  // [2, 3, 5, 5]
  Tensor wt = rand_f64({3, 4, 3, 3}, false).transpose(0, 1).set_requires_grad(true);        // [4, 3, 3, 3]
  ASSERT_FALSE(xp.is_contiguous());
  EXPECT_TRUE(grad_ok(conv(make(1, 1, 1, 1), true), {xp, wt, rand_f64({4})}));
  EXPECT_TRUE(grad_ok(conv(make(1, 1, 1, 1), true),
                      {rand_f64({2, 3, 4, 4}, false), rand_f64({4, 3, 3, 3}), rand_f64({4}, false)}));
  EXPECT_TRUE(grad_ok(conv(make(1, 1, 1, 1), false), {rand_f64({2, 3, 4, 4}), rand_f64({4, 3, 3, 3}, false)}));
}

TEST(Conv2d, OverloadsShapesAndDtypes) {
  Tensor x = Tensor::randn({2, 4, 9, 8}, DType::f64), w = Tensor::randn({6, 2, 3, 3}, DType::f64);
  Tensor b = Tensor::randn({6}, DType::f64);
  Conv2dParams p;
  p.stride_h = p.stride_w = 2;
  p.pad_h = p.pad_w = 1;
  p.groups = 2;
  Tensor y = conv2d(x, w, b, 2, 1, 2);
  EXPECT_EQ(y.shape(), (Shape{2, 6, 5, 4}));
  EXPECT_TRUE(all_close(y, conv2d(x, w, b, p)));
  // One image as a 3-d input.
  EXPECT_TRUE(all_close(conv2d(x.select(0, 1), w, b, p), y.select(0, 1)));
  // A 1x1 convolution is a linear map of the channels at every pixel.
  Tensor w1 = Tensor::randn({5, 4, 1, 1}, DType::f64);
  Tensor as_linear = linear(x.permute({0, 2, 3, 1}), w1.reshape({5, 4}), b.slice(0, 0, 5)).permute({0, 3, 1, 2});
  EXPECT_TRUE(all_close(conv2d(x, w1, b.slice(0, 0, 5)), as_linear));
  // Mixed dtypes promote; f16 computes through f32.
  EXPECT_EQ(conv2d(x.to(DType::f32), w, Tensor(), p).dtype(), DType::f64);
  EXPECT_TRUE(all_close(conv2d(x.to(DType::f16), w.to(DType::f16), b.to(DType::f16), p), y, 5e-2, 2e-2));
  // The bias gradient is dout summed over N, H and W.
  Tensor bb = Tensor::zeros({6}, DType::f64).set_requires_grad(true);
  Tensor dout = Tensor::randn(y.shape(), DType::f64);
  conv2d(x, w, bb, p).backward(dout);
  EXPECT_TRUE(all_close(bb.grad(), dout.sum({0, 2, 3})));
}

TEST(Conv2d, ErrorsNameShapes) {
  Tensor x = Tensor::ones({2, 4, 5, 5}), w = Tensor::ones({6, 2, 3, 3});
  EXPECT_THROW_WITH(conv2d(Tensor::ones({4, 5}), w, Tensor()), ShapeError, "4-d input [N, C, H, W], got (4, 5)");
  EXPECT_THROW_WITH(conv2d(x, Tensor::ones({6, 2, 3}), Tensor()), ShapeError,
                    "4-d weight [O, C / groups, KH, KW], got (6, 2, 3)");
  EXPECT_THROW_WITH(conv2d(x, w, Tensor()), ShapeError,
                    "weight (6, 2, 3, 3) with groups=1 expects 2 input channels, but input (2, 4, 5, 5) has 4");
  EXPECT_THROW_WITH(conv2d(x, w, Tensor(), 1, 0, 3), ShapeError, "input (2, 4, 5, 5) has 4 channels, which groups=3");
  EXPECT_THROW_WITH(conv2d(x, Tensor::ones({5, 2, 3, 3}), Tensor(), 1, 0, 2), ShapeError,
                    "weight (5, 2, 3, 3) has 5 output channels, which groups=2");
  EXPECT_THROW_WITH(conv2d(x, w, Tensor::ones({5}), 1, 0, 2), ShapeError,
                    "bias (5,) does not match weight (6, 2, 3, 3) (expected (6,))");
  EXPECT_THROW_WITH(conv2d(x, w, Tensor(), 1, 0, 2, 3), ShapeError,
                    "input (2, 4, 5, 5) with padding (0, 0) is too small for weight (6, 2, 3, 3) at dilation (3, 3)");
  EXPECT_THROW_WITH(conv2d(x, w, Tensor(), 0, 0, 2), ValueError, "stride (0, 0)");
  EXPECT_THROW_WITH(conv2d(x, w, Tensor(), 1, 0, 0), ValueError, "groups must be positive");
  EXPECT_THROW_WITH(conv2d(x.to(DType::i32), w, Tensor()), DTypeError, "i32");
}

// ---- pooling ----

TEST(Pool2d, Gradients) {
  Tensor x = rand_f64({2, 3, 7, 6});
  EXPECT_TRUE(grad_ok([](In in) { return max_pool2d(in[0], 2); }, {x}));
  EXPECT_TRUE(grad_ok([](In in) { return max_pool2d(in[0], 3, 2, 1); }, {x}));  // overlapping windows
  EXPECT_TRUE(grad_ok([](In in) { return max_pool2d(in[0], 3, 1, 1); }, {rand_f64({1, 2, 4, 5})}));
  EXPECT_TRUE(grad_ok([](In in) { return avg_pool2d(in[0], 2); }, {x}));
  EXPECT_TRUE(grad_ok([](In in) { return avg_pool2d(in[0], 3, 2, 1); }, {x}));
  EXPECT_TRUE(grad_ok([](In in) { return avg_pool2d(in[0], 3, 2, 1, false); }, {x}));
  // A non-contiguous input.
  Tensor xt = rand_f64({2, 3, 6, 7}, false).transpose(2, 3).set_requires_grad(true);
  EXPECT_TRUE(grad_ok([](In in) { return max_pool2d(in[0], 2, 1); }, {xt}));
  EXPECT_TRUE(grad_ok([](In in) { return avg_pool2d(in[0], 2, 1, 1); }, {xt}));
}

TEST(Pool2d, ValuesAndDefaults) {
  Tensor x = Tensor::arange(16, DType::f64).reshape({1, 1, 4, 4});
  EXPECT_EQ(max_pool2d(x, 2).to_vector<double>(), (std::vector<double>{5, 7, 13, 15}));
  EXPECT_EQ(avg_pool2d(x, 2).to_vector<double>(), (std::vector<double>{2.5, 4.5, 10.5, 12.5}));
  // Padding counts in the divisor unless told otherwise; it never wins a max.
  EXPECT_EQ(avg_pool2d(x, 2, 2, 1).to_vector<double>()[0], 0.0 / 4);
  EXPECT_EQ(avg_pool2d(x + 1.0, 2, 2, 1, false).to_vector<double>()[0], 1.0);
  EXPECT_EQ(max_pool2d(x - 100.0, 2, 2, 1).to_vector<double>()[0], -100.0);
  EXPECT_EQ(max_pool2d(x, 3, 1).shape(), (Shape{1, 1, 2, 2}));
  EXPECT_EQ(max_pool2d(x.select(0, 0), 2).shape(), (Shape{1, 2, 2}));  // 3-d: one image
  EXPECT_EQ(max_pool2d(x.to(DType::bf16), 2).dtype(), DType::bf16);
}

// What max pooling keeps for backward is the output's size in window offsets, one byte each for
// windows of up to 256 cells (four past that), not the input or an i64 plane position: with the
// output, 5 bytes per f32 output element (2 + 1 under bf16) where i64 indices took 12.
TEST(Pool2d, MaxPoolKeepsOneByteIndices) {
  manual_seed(7);
  CachingAllocator& alloc = caching_allocator(Device::cpu());
  for (int64_t k : {2, 17}) {  // 4 cells: u8; 289 cells: i32
    Tensor x = Tensor::randn({8, 16, 34, 34}).set_requires_grad(true);
    const int64_t before = alloc.stats().allocated_bytes.current;
    Tensor y = max_pool2d(x, k, 1);
    const int64_t held = alloc.stats().allocated_bytes.current - before;  // y and the saved indices
    const int64_t n = y.numel(), index_bytes = k * k <= 256 ? 1 : 4;
    auto rounded = [](int64_t bytes) { return (bytes + 511) / 512 * 512; };  // the allocator's unit
    EXPECT_EQ(held, rounded(n * 4) + rounded(n * index_bytes)) << "kernel " << k;
    y.sum().backward();  // and the gradient still lands on the winners
    EXPECT_NEAR(x.grad().sum().item<double>(), static_cast<double>(n), 1e-6 * static_cast<double>(n));
  }
}

TEST(Pool2d, ErrorsNameShapes) {
  Tensor x = Tensor::ones({1, 1, 4, 4});
  EXPECT_THROW_WITH(max_pool2d(Tensor::ones({4, 4}), 2), ShapeError, "4-d input [N, C, H, W], got (4, 4)");
  EXPECT_THROW_WITH(max_pool2d(x, 5), ShapeError, "input (1, 1, 4, 4) with padding 0 is too small for kernel 5");
  EXPECT_THROW_WITH(avg_pool2d(x, 2, 2, 2), ValueError, "padding 2 must be between 0 and half the kernel 2");
  EXPECT_THROW_WITH(avg_pool2d(x, 0), ValueError, "kernel 0");
  EXPECT_THROW_WITH(max_pool2d(x.to(DType::i64), 2), DTypeError, "i64");
}

}  // namespace
}  // namespace headroom
