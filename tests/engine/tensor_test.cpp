#include "test_util.h"

namespace headroom {
namespace {

using testing::all_close;

TEST(Tensor, FactoriesFillShapesAndDtypes) {
  Tensor z = Tensor::zeros({2, 3});
  EXPECT_EQ(z.shape(), (Shape{2, 3}));
  EXPECT_EQ(z.strides(), (Shape{3, 1}));
  EXPECT_EQ(z.dtype(), DType::f32);
  EXPECT_EQ(z.sum().item<double>(), 0.0);
  EXPECT_EQ(Tensor::ones({4}, DType::i32).sum().item<int64_t>(), 4);
  EXPECT_EQ(Tensor::full({2, 2}, 2.5, DType::f64).to_vector<double>(), (std::vector<double>{2.5, 2.5, 2.5, 2.5}));
  EXPECT_EQ(Tensor::arange(5).to_vector<float>(), (std::vector<float>{0, 1, 2, 3, 4}));
  EXPECT_EQ(Tensor::arange(1, 2, 0.25, DType::f64).to_vector<double>(), (std::vector<double>{1, 1.25, 1.5, 1.75}));
  for (DType d : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i32, DType::i64, DType::u8, DType::boolean}) {
    Tensor t = Tensor::ones({3, 5}, d);
    EXPECT_EQ(t.nbytes(), 15 * dtype_size(d)) << dtype_name(d);
    EXPECT_EQ(t.storage()->nbytes(), 15 * dtype_size(d)) << dtype_name(d);
    EXPECT_EQ(t.to_vector<double>()[14], 1.0) << dtype_name(d);
  }
}

TEST(Tensor, HalfAndBFloat16RoundTrip) {
  // Exactly representable values survive; others round to nearest even.
  for (float f : {0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.960464477539063e-08f})
    EXPECT_EQ(static_cast<float>(Half(f)), f) << f;
  EXPECT_EQ(static_cast<float>(Half(1.0f + 1.0f / 4096)), 1.0f);  // below half an ulp
  EXPECT_EQ(static_cast<float>(Half(1e6f)), INFINITY);
  EXPECT_TRUE(std::isnan(static_cast<float>(Half(NAN))));
  EXPECT_EQ(static_cast<float>(BFloat16(1.0f)), 1.0f);
  EXPECT_EQ(static_cast<float>(BFloat16(3.140625f)), 3.140625f);
  EXPECT_EQ(static_cast<float>(BFloat16(1.0f + 1.0f / 512)), 1.0f);
  Tensor x = Tensor::from_vector({0.1, 1.5, -3.25}, {3}, DType::f16);
  EXPECT_EQ(x.nbytes(), 6u);
  EXPECT_TRUE(all_close(x.to(DType::f32), Tensor::from_vector({0.1, 1.5, -3.25}, {3}), 1e-4, 0));
}

TEST(Tensor, DtypePromotion) {
  EXPECT_EQ(promote_types(DType::f16, DType::bf16), DType::f32);
  EXPECT_EQ(promote_types(DType::i64, DType::f16), DType::f16);
  EXPECT_EQ(promote_types(DType::u8, DType::i32), DType::i32);
  EXPECT_EQ(promote_types(DType::boolean, DType::u8), DType::u8);
  Tensor a = Tensor::ones({2}, DType::i32), b = Tensor::ones({2}, DType::f64);
  EXPECT_EQ((a + b).dtype(), DType::f64);
  EXPECT_EQ((a / a).dtype(), DType::f32);  // true division
  EXPECT_EQ((a * 2.0).dtype(), DType::i32);
  EXPECT_EQ((a * 0.5).dtype(), DType::f32);
}

TEST(Tensor, ViewsShareStorage) {
  Tensor x = Tensor::arange(12).reshape({3, 4});
  Tensor t = x.t();
  EXPECT_EQ(t.shape(), (Shape{4, 3}));
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_EQ(t.storage(), x.storage());
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
  Tensor s = x.slice(1, 1, 4, 2);
  EXPECT_EQ(s.shape(), (Shape{3, 2}));
  EXPECT_EQ(s.to_vector<float>(), (std::vector<float>{1, 3, 5, 7, 9, 11}));
  Tensor p = x.reshape({2, 2, 3}).permute({2, 0, 1});
  EXPECT_EQ(p.shape(), (Shape{3, 2, 2}));
  EXPECT_EQ(p.contiguous().to_vector<float>(), (std::vector<float>{0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11}));
  Tensor e = Tensor::arange(3).reshape({3, 1}).expand({3, 4});
  EXPECT_EQ(e.strides(), (Shape{1, 0}));
  EXPECT_EQ(e.sum().item<double>(), 12.0);
  // A write through a view is seen by the base.
  {
    NoGradGuard g;
    x.slice(0, 0, 1).fill_(-1);
  }
  EXPECT_EQ(x.sum().item<double>(), 66.0 - 6.0 - 4.0);
  // reshape of a non-contiguous tensor copies; view refuses and says why.
  EXPECT_NE(t.reshape({12}).storage(), x.storage());
  EXPECT_THROW_WITH(t.view({12}), ShapeError, "use reshape()");
  EXPECT_EQ(x.reshape({-1, 6}).shape(), (Shape{2, 6}));
  EXPECT_EQ(x.unsqueeze(0).squeeze(0).shape(), (Shape{3, 4}));
  EXPECT_EQ(x.select(1, -1).to_vector<float>(), (std::vector<float>{-1, 7, 11}));  // row 0 was filled
  EXPECT_EQ(x.flatten().shape(), (Shape{12}));
}

TEST(Tensor, BroadcastingArithmetic) {
  Tensor a = Tensor::arange(6, DType::f64).reshape({2, 3});
  Tensor b = Tensor::from_vector({10, 20, 30}, {3}, DType::f64);
  EXPECT_EQ((a + b).to_vector<double>(), (std::vector<double>{10, 21, 32, 13, 24, 35}));
  Tensor c = Tensor::from_vector({1, 2}, {2, 1}, DType::f64);
  EXPECT_EQ((a * c).to_vector<double>(), (std::vector<double>{0, 1, 2, 6, 8, 10}));
  EXPECT_THROW_WITH(a + Tensor::ones({4}, DType::f64), ShapeError, "(2, 3) and (4,)");
}

TEST(Tensor, ElementwiseValues) {
  Tensor x = Tensor::from_vector({-2.0, -0.5, 0.0, 0.5, 2.0}, {5}, DType::f64);
  auto v = [](const Tensor& t) { return t.to_vector<double>(); };
  EXPECT_EQ(v(relu(x)), (std::vector<double>{0, 0, 0, 0.5, 2}));
  EXPECT_EQ(v(abs(x)), (std::vector<double>{2, 0.5, 0, 0.5, 2}));
  EXPECT_NEAR(v(sigmoid(x))[4], 1 / (1 + std::exp(-2.0)), 1e-12);
  EXPECT_NEAR(v(tanh(x))[0], std::tanh(-2.0), 1e-12);
  EXPECT_NEAR(v(gelu(x))[3], 0.5 * 0.5 * (1 + std::tanh(std::sqrt(2 / M_PI) * (0.5 + 0.044715 * 0.125))), 1e-12);
  EXPECT_EQ(v(pow(x, 2.0)), (std::vector<double>{4, 0.25, 0, 0.25, 4}));
  EXPECT_EQ(gt(x, Tensor::scalar(0.0, DType::f64)).to_vector<bool>(),
            (std::vector<bool>{false, false, false, true, true}));
  EXPECT_EQ(v(where(lt(x, scalar_like(x, 0)), x * 0.0, x)), (std::vector<double>{0, 0, 0, 0.5, 2}));
  EXPECT_EQ(v(masked_fill(x, eq(x, scalar_like(x, 0)), 7)), (std::vector<double>{-2, -0.5, 7, 0.5, 2}));
  EXPECT_EQ(v(clamp(x, -1, 1)), (std::vector<double>{-1, -0.5, 0, 0.5, 1}));
  EXPECT_EQ(v(maximum(x, scalar_like(x, 0.2))), (std::vector<double>{0.2, 0.2, 0.2, 0.5, 2}));
}

TEST(Tensor, ReductionsOverAnyDims) {
  Tensor x = Tensor::arange(24, DType::f64).reshape({2, 3, 4});
  EXPECT_EQ(x.sum().item<double>(), 276);
  EXPECT_EQ(x.sum({1}).shape(), (Shape{2, 4}));
  EXPECT_EQ(x.sum({1}).to_vector<double>(), (std::vector<double>{12, 15, 18, 21, 48, 51, 54, 57}));
  EXPECT_EQ(x.sum({0, 2}, true).shape(), (Shape{1, 3, 1}));
  EXPECT_EQ(x.sum({0, 2}).to_vector<double>(), (std::vector<double>{60, 92, 124}));
  EXPECT_EQ(x.mean({-1}).to_vector<double>(), (std::vector<double>{1.5, 5.5, 9.5, 13.5, 17.5, 21.5}));
  EXPECT_EQ(x.max(1).to_vector<double>(), (std::vector<double>{8, 9, 10, 11, 20, 21, 22, 23}));
  EXPECT_EQ(x.argmax(2).to_vector<int64_t>(), (std::vector<int64_t>(6, 3)));
  EXPECT_EQ(x.argmax(2).dtype(), DType::i64);
  EXPECT_NEAR(x.var({2}).to_vector<double>()[0], 5.0 / 3.0, 1e-12);
  EXPECT_NEAR(x.var({2}, 0).to_vector<double>()[0], 1.25, 1e-12);
  // Non-contiguous input takes the general path and agrees.
  Tensor t = x.transpose(0, 2);
  EXPECT_EQ(t.sum({0, 2}).to_vector<double>(), x.sum({0, 2}).to_vector<double>());
  // Integer sums are i64; f16 sums accumulate in f32 or wider.
  EXPECT_EQ(Tensor::ones({1000}, DType::u8).sum().item<int64_t>(), 1000);
  EXPECT_EQ(Tensor::ones({4096}, DType::f16).sum().item<double>(), 4096);
  EXPECT_THROW_WITH(x.sum({3}), ValueError, "dim 3 is out of range");
}

TEST(Tensor, RandomIsSeededAndCounterBased) {
  manual_seed(42);
  Tensor a = Tensor::rand({1000});
  Tensor n = Tensor::randn({10000}, DType::f64);
  manual_seed(42);
  Tensor b = Tensor::rand({1000});
  EXPECT_EQ(a.to_vector<float>(), b.to_vector<float>());
  EXPECT_NE(a.to_vector<float>(), Tensor::rand({1000}).to_vector<float>());
  EXPECT_GE(amin(a).item<float>(), 0.0f);
  EXPECT_LT(amax(a).item<float>(), 1.0f);
  double m = n.mean().item<double>(), s = std::sqrt(var(n).item<double>());
  EXPECT_NEAR(m, 0.0, 0.05);
  EXPECT_NEAR(s, 1.0, 0.05);
  // Element i depends only on (seed, offset, i).
  EXPECT_EQ(philox_uniform(7, 3, 5), philox_uniform(7, 3, 5));
  EXPECT_NE(philox_uniform(7, 3, 5), philox_uniform(8, 3, 5));
}

TEST(Tensor, CopiesAndCasts) {
  Tensor x = Tensor::arange(6, DType::f32).reshape({2, 3});
  Tensor y = Tensor::zeros({3, 2}, DType::f64);
  {
    NoGradGuard g;
    y.copy_(x.t());
  }
  EXPECT_EQ(y.to_vector<double>(), (std::vector<double>{0, 3, 1, 4, 2, 5}));
  EXPECT_EQ(x.to(DType::bf16).to(DType::i64).to_vector<int64_t>(), (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(x.to(Device::cpu()).storage(), x.storage());
  EXPECT_THROW_WITH(x.to(Device::cuda(0)), DeviceError, "cuda:0");
  EXPECT_EQ(x.to(DType::boolean).to_vector<bool>(), (std::vector<bool>{false, true, true, true, true, true}));
}

TEST(Tensor, PrintsValuesAndMetadata) {
  Tensor x = Tensor::arange(6, DType::i64).reshape({2, 3});
  EXPECT_EQ(x.str(), "Tensor([[0, 1, 2],\n        [3, 4, 5]], shape=(2, 3), dtype=i64)");
  std::string big = Tensor::zeros({100, 100}).str();
  EXPECT_NE(big.find("..."), std::string::npos);
  EXPECT_LT(big.size(), 2000u);
  EXPECT_EQ(Tensor::scalar(1.5).str(), "Tensor(1.5, shape=(), dtype=f32)");
}

TEST(Tensor, ErrorsNameWhatWasWrong) {
  EXPECT_THROW_WITH(Tensor::zeros({2, 3}).reshape({4, 2}), ShapeError, "(2, 3)");
  EXPECT_THROW_WITH(Tensor::zeros({2}).item<float>(), ShapeError, "one element");
  EXPECT_THROW_WITH(Tensor::zeros({2}).data<double>(), DTypeError, "f32");
  EXPECT_THROW_WITH(Device::parse("tpu"), DeviceError, "tpu");
  EXPECT_THROW_WITH(dtype_from_name("f8"), DTypeError, "f8");
  EXPECT_THROW_WITH(Tensor::rand({2}, DType::i32), DTypeError, "i32");
  EXPECT_THROW_WITH(exp(Tensor::zeros({2}, DType::f32)).sum({5}), ValueError, "dim 5");
  EXPECT_THROW_WITH(Tensor::empty({int64_t{1} << 62}, DType::f32), ShapeError, "bytes");
  EXPECT_THROW_WITH(Tensor::empty({int64_t{1} << 40, int64_t{1} << 40}), ShapeError, "int64");
  EXPECT_THROW_WITH(Tensor::ones({1}).expand({-3}), ShapeError, "negative size");
}

}  // namespace
}  // namespace headroom
