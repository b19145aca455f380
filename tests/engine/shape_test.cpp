// Shape arithmetic at the edges (Note [shape arithmetic] in engine/shape.h), views checked
// against their storage, and arange's element count: the inputs an outside review found to
// overflow, read outside a buffer or quietly give an empty tensor.
#include <cmath>
#include <limits>

#include "test_util.h"

namespace headroom {
namespace {

constexpr int64_t k2_40 = int64_t{1} << 40;
constexpr int64_t k2_62 = int64_t{1} << 62;
constexpr int64_t kU32Max = 4294967295;  // 2^32 - 1, the largest IDX dim

TEST(ShapeArithmetic, NumelAndStridesOfOrdinaryShapes) {
  EXPECT_EQ(shape_numel({}), 1);
  EXPECT_EQ(shape_numel({2, 3, 4}), 24);
  EXPECT_EQ(shape_numel({2, 0, 4}), 0);
  EXPECT_EQ(contiguous_strides({2, 3, 4}), (Shape{12, 4, 1}));
  EXPECT_EQ(contiguous_strides({2, 0, 4}), (Shape{4, 4, 1}));  // a zero dim counts as 1
  EXPECT_EQ(shape_numel({k2_62, 1}), k2_62);
  EXPECT_EQ(contiguous_strides({0, 2, k2_62 / 2}), (Shape{k2_62, k2_62 / 2, 1}));
  EXPECT_EQ(shape_numel({0, 2, k2_62 / 2}), 0);
}

TEST(ShapeArithmetic, AZeroDimDoesNotHideAnOverflow) {
  // The product of the non-zero dims must fit, whichever order the dims come in: otherwise
  // the contiguous strides (products of the dims after each) overflow.
  for (const Shape& s : {Shape{0, kU32Max, kU32Max}, Shape{kU32Max, kU32Max, 0}, Shape{kU32Max, 0, kU32Max},
                         Shape{0, k2_40, k2_40}, Shape{k2_62, k2_62, 0}}) {
    EXPECT_THROW_WITH(shape_numel(s), ShapeError, shape_str(s));
    EXPECT_THROW_WITH(contiguous_strides(s), ShapeError, shape_str(s));
  }
  EXPECT_THROW_WITH(Tensor::empty({0, k2_40, k2_40}), ShapeError, "(0, 1099511627776, 1099511627776)");
  EXPECT_THROW_WITH(Tensor::empty_host({0, k2_40, k2_40}, DType::u8), ShapeError, "empty_host");
  EXPECT_THROW_WITH(Tensor::zeros({k2_40, 0, k2_40}), ShapeError, "int64");
}

TEST(ShapeArithmetic, AViewsByteCountCannotWrapAround) {
  // An expanded view may hold up to 2^63 - 1 elements, and 8 bytes each do not fit a size_t.
  Tensor big = Tensor::ones({1}, DType::f64).expand({3 * (int64_t{1} << 61)});
  EXPECT_EQ(big.numel(), 3 * (int64_t{1} << 61));
  EXPECT_THROW_WITH(big.nbytes(), ShapeError, "f64 (6917529027641081856,)");
  EXPECT_THROW_WITH(big.contiguous(), ShapeError, "6917529027641081856");
  EXPECT_THROW_WITH(Tensor::ones({1}).expand({k2_40, k2_40}), ShapeError, "(1099511627776, 1099511627776)");
}

TEST(ShapeArithmetic, TensorsWithoutElementsAreContiguous) {
  // Found by the IDX fuzz target: a file of dims (0, 2^32-1, 0) read back as a non-contiguous tensor.
  for (const Shape& s : {Shape{0}, Shape{0, 5}, Shape{5, 0}, Shape{0, kU32Max, 0}, Shape{3, 0, 2}}) {
    EXPECT_TRUE(Tensor::empty(s).is_contiguous()) << shape_str(s);
    EXPECT_TRUE(Tensor::empty_host(s, DType::u8).is_contiguous()) << shape_str(s);
  }
  EXPECT_TRUE(Tensor::zeros({4, 3}).slice(0, 2, 2).is_contiguous());
  EXPECT_FALSE(Tensor::zeros({4, 3}).t().is_contiguous());
}

TEST(ShapeArithmetic, NegativeDimsAreRefusedByName) {
  EXPECT_THROW_WITH(shape_numel({2, -3}), ShapeError, "(2, -3)");
  EXPECT_THROW_WITH(contiguous_strides({-1}), ShapeError, "(-1,)");
  EXPECT_THROW_WITH(Tensor::empty({3, -1}), ShapeError, "negative");
}

TEST(ShapeArithmetic, ReshapeInferenceCannotOverflow) {
  Tensor empty = Tensor::zeros({0});
  for (const Shape& s :
       {Shape{k2_62, k2_62, 0}, Shape{0, k2_62, k2_62}, Shape{k2_62, k2_62, 0, -1}, Shape{0, -1, k2_62, k2_62}})
    EXPECT_THROW_WITH(empty.reshape(s), ShapeError, shape_str(s));
  EXPECT_THROW_WITH(Tensor::zeros({4}).reshape({k2_62, 4, -1}), ShapeError, "reshape");
  EXPECT_THROW_WITH(empty.reshape({0, -1}), ShapeError, "cannot infer -1");
  EXPECT_THROW_WITH(empty.reshape({-1, -1}), ShapeError, "more than one -1");
  EXPECT_THROW_WITH(empty.reshape({2, -2}), ShapeError, "negative");
  // What still works: zero-element reshapes within int64, and inference at the edge.
  EXPECT_EQ(empty.reshape({0, k2_62}).shape(), (Shape{0, k2_62}));
  EXPECT_EQ(Tensor::zeros({6}).reshape({-1, 3}).shape(), (Shape{2, 3}));
  EXPECT_EQ(Tensor::zeros({6}).view({2, -1}).shape(), (Shape{2, 3}));
}

TEST(AsStrided, ViewsInsideTheStorageWork) {
  Tensor x = Tensor::arange(6);
  EXPECT_EQ(x.as_strided({2}, {1}, 4).to_vector<float>(), (std::vector<float>{4, 5}));
  EXPECT_EQ(x.as_strided({3}, {2}, 1).to_vector<float>(), (std::vector<float>{1, 3, 5}));
  EXPECT_EQ(x.as_strided({2, 3}, {0, 1}, 3).sum().item<double>(), 24.0);  // broadcast row
  EXPECT_EQ(x.as_strided({}, {}, 5).item<double>(), 5.0);
  // No element is reached, so any non-negative offset will do (a slice of an empty slice).
  EXPECT_EQ(x.as_strided({0}, {1}, 6).numel(), 0);
  EXPECT_EQ(x.as_strided({2, 0}, {1, 1}, 100).numel(), 0);
  // A size-1 dim never moves, whatever its stride.
  EXPECT_EQ(x.as_strided({1, 2}, {int64_t{1} << 60, 1}, 0).sum().item<double>(), 1.0);
}

TEST(AsStrided, ANegativeOffsetIsRefusedBeforeAnyRead) {
  // The review's case: sum() read 16 bytes before the buffer (ASan heap-buffer-overflow).
  Tensor x = Tensor::arange(6);
  EXPECT_THROW_WITH(x.as_strided({2}, {1}, -4).sum(), ValueError, "offset -4");
  EXPECT_THROW_WITH(x.as_strided({0}, {1}, -1), ValueError, "offset -1");
}

TEST(AsStrided, ViewsPastTheEndNameSizesStridesOffsetAndStorage) {
  Tensor x = Tensor::arange(6);
  EXPECT_THROW_WITH(x.as_strided({2}, {1}, 5), ValueError, "size (2,), stride (1,), offset 5");
  EXPECT_THROW_WITH(x.as_strided({3}, {2}, 2), ValueError, "storage of 6 f32 elements (24 bytes)");
  EXPECT_THROW_WITH(x.as_strided({2, 4}, {3, 1}, 0), ValueError, "reaches element 6");
  EXPECT_THROW_WITH(Tensor::arange(4, DType::f64).as_strided({5}, {1}, 0), ValueError, "4 f64 elements");
  EXPECT_THROW_WITH(x.as_strided({2}, {-1}, 1), ValueError, "negative stride");
  EXPECT_THROW_WITH(x.as_strided({-2}, {1}, 0), ShapeError, "(-2,)");
  EXPECT_THROW_WITH(x.as_strided({2, 3}, {1}, 0), ShapeError, "differ in length");
}

TEST(AsStrided, OffsetAndStrideArithmeticCannotWrapAround) {
  Tensor x = Tensor::arange(6);
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  EXPECT_THROW_WITH(x.as_strided({2}, {kMax}, 0), ValueError, "stride (9223372036854775807,)");
  EXPECT_THROW_WITH(x.as_strided({3}, {k2_62}, 0), ValueError, "int64");
  EXPECT_THROW_WITH(x.as_strided({2}, {1}, kMax), ValueError, "offset 9223372036854775807");
  EXPECT_THROW_WITH(x.as_strided({3, 3}, {k2_62, k2_62}, k2_62), ValueError, "int64");
}

TEST(Arange, CountsThatDoNotFitAreRefusedByValue) {
  EXPECT_THROW_WITH(Tensor::arange(0, 1e300), ValueError, "1e+300");
  EXPECT_THROW_WITH(Tensor::arange(1e300), ValueError, "1e+300");
  EXPECT_THROW_WITH(Tensor::arange(0, 1, 1e-300), ValueError, "1e-300");
  EXPECT_THROW_WITH(Tensor::arange(-1e308, 1e308), ValueError, "-1e+308");
}

TEST(Arange, NonFiniteArgumentsAreRefusedByValue) {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW_WITH(Tensor::arange(0, inf), ValueError, "end inf");
  EXPECT_THROW_WITH(Tensor::arange(-inf, 0), ValueError, "start -inf");
  EXPECT_THROW_WITH(Tensor::arange(nan), ValueError, "nan");
  EXPECT_THROW_WITH(Tensor::arange(0, 1, nan), ValueError, "step nan");
  EXPECT_THROW_WITH(Tensor::arange(0, 1, 0), ValueError, "step must not be zero");
}

TEST(Arange, OrdinaryAndEmptyRangesStillWork) {
  EXPECT_EQ(Tensor::arange(3, 0).numel(), 0);  // end before start: empty, as before
  EXPECT_EQ(Tensor::arange(0, 3, -1).numel(), 0);
  EXPECT_EQ(Tensor::arange(3, 0, -1).to_vector<float>(), (std::vector<float>{3, 2, 1}));
  EXPECT_EQ(Tensor::arange(0, 1, 0.3).numel(), 4);
}

}  // namespace
}  // namespace headroom
