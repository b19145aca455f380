// Shape arithmetic at the edges (Note [shape arithmetic] in engine/shape.h): the inputs an
// outside review found to overflow.
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

TEST(ShapeArithmetic, NegativeDimsAreRefusedByName) {
  EXPECT_THROW_WITH(shape_numel({2, -3}), ShapeError, "(2, -3)");
  EXPECT_THROW_WITH(contiguous_strides({-1}), ShapeError, "(-1,)");
  EXPECT_THROW_WITH(Tensor::empty({3, -1}), ShapeError, "negative");
}

TEST(ShapeArithmetic, ReshapeInferenceCannotOverflow) {
  Tensor empty = Tensor::zeros({0});
  for (const Shape& s : {Shape{k2_62, k2_62, 0}, Shape{0, k2_62, k2_62}, Shape{k2_62, k2_62, 0, -1},
                         Shape{0, -1, k2_62, k2_62}})
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

}  // namespace
}  // namespace headroom
