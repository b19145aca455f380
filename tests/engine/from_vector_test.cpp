// Tensor::from_vector with integer lists: exact values (no trip through double), and
// DTypeError where the target dtype would change a value.
#include <cstdint>
#include <vector>

#include "test_util.h"

namespace headroom {
namespace {

TEST(FromVector, IntegerListsAreExact) {
  Tensor a = Tensor::from_vector({1, 2, 3}, {3}, DType::i64);
  EXPECT_EQ(a.dtype(), DType::i64);
  EXPECT_EQ(a.to_vector<int64_t>(), (std::vector<int64_t>{1, 2, 3}));
  // Past 2^53 a double cannot hold every integer: 2^53 + 1 would come back as 2^53.
  const int64_t big = (int64_t{1} << 53) + 1;
  Tensor b = Tensor::from_vector({big, big + 2, -big, INT64_MAX, INT64_MIN}, {5}, DType::i64);
  EXPECT_EQ(b.to_vector<int64_t>(), (std::vector<int64_t>{big, big + 2, -big, INT64_MAX, INT64_MIN}));
  Tensor c = Tensor::from_vector({9007199254740993, 9007199254740995}, {2},
                                 TensorOptions().dtype(DType::i64).device(Device::cpu(1)));
  EXPECT_EQ(c.device(), Device::cpu(1));
  EXPECT_EQ(c.to_vector<int64_t>(), (std::vector<int64_t>{9007199254740993, 9007199254740995}));
  EXPECT_EQ(Tensor::from_vector({uint64_t{1} << 62}, {1}, DType::i64).item_double(), 0x1p62);
  EXPECT_THROW_WITH(Tensor::from_vector({uint64_t{1} << 63}, {1}, DType::i64), DTypeError, "does not fit i64");
  Tensor d = Tensor::from_vector({-7, 2147483647}, {2}, DType::i32);
  EXPECT_EQ(d.to_vector<int32_t>(), (std::vector<int32_t>{-7, 2147483647}));
  EXPECT_EQ(Tensor::from_vector({0u, 255u}, {2}, DType::u8).to_vector<int64_t>(), (std::vector<int64_t>{0, 255}));
  EXPECT_EQ(Tensor::from_vector(std::vector<int64_t>{big}, {1}, DType::i64).item<int64_t>(), big);
  // Integer lists into float dtypes (the default f32 included) as before, when exact.
  Tensor f = Tensor::from_vector({1, 2, 3, 4}, {2, 2});
  EXPECT_EQ(f.dtype(), DType::f32);
  EXPECT_EQ(f.to_vector<float>(), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(Tensor::from_vector({16777216, -3}, {2}, DType::f32).to_vector<double>(),
            (std::vector<double>{16777216, -3}));
  EXPECT_EQ(Tensor::from_vector({2048, 4096}, {2}, DType::f16).to_vector<double>(), (std::vector<double>{2048, 4096}));
  // Mixed and floating lists keep the double overload; floats round as floats do.
  EXPECT_EQ(Tensor::from_vector({1, 2.5}, {2}, DType::f64).to_vector<double>(), (std::vector<double>{1, 2.5}));
  EXPECT_NO_THROW(Tensor::from_vector({0.1, 1e-30}, {2}, DType::f16));
  EXPECT_EQ(Tensor::from_vector({2.0, -3.0}, {2}, DType::i64).to_vector<int64_t>(), (std::vector<int64_t>{2, -3}));
  // bool takes any value: nonzero is true.
  EXPECT_EQ(Tensor::from_vector({0, 1, 5}, {3}, DType::boolean).to_vector<int64_t>(), (std::vector<int64_t>{0, 1, 1}));
}

TEST(FromVector, ValuesTheDtypeWouldChangeThrow) {
  const int64_t big = (int64_t{1} << 53) + 1;
  EXPECT_THROW_WITH(
      Tensor::from_vector({big}, {1}, DType::f64), DTypeError,
      "from_vector: value 9007199254740993 at index 0 is not exactly representable in f64 (it would be rounded)");
  EXPECT_THROW_WITH(Tensor::from_vector({1, 16777217}, {2}, DType::f32), DTypeError, "value 16777217 at index 1");
  EXPECT_THROW_WITH(Tensor::from_vector({2049}, {1}, DType::f16), DTypeError, "f16");
  EXPECT_THROW_WITH(Tensor::from_vector({int64_t{1} << 40}, {1}, DType::i32), DTypeError, "i32 (out of range)");
  EXPECT_THROW_WITH(Tensor::from_vector({256}, {1}, DType::u8), DTypeError, "out of range");
  EXPECT_THROW_WITH(Tensor::from_vector({-1}, {1}, DType::u8), DTypeError, "out of range");
  EXPECT_THROW_WITH(Tensor::from_vector({1.5, 2.0}, {2}, DType::i64), DTypeError, "value 1.5 at index 0");
  EXPECT_THROW_WITH(Tensor::from_vector({1.0, 3e9}, {2}, DType::i32), DTypeError, "(out of range)");
  EXPECT_THROW_WITH(Tensor::from_vector({9.3e18}, {1}, DType::i64), DTypeError, "out of range");
  EXPECT_THROW_WITH(Tensor::from_vector(std::vector<double>{std::nan("")}, {1}, DType::i64), DTypeError,
                    "not an integer");
}

}  // namespace
}  // namespace headroom
