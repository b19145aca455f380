// Reductions on every device: sum, mean, amax, amin and var over one dim (rows, columns, the
// middle of three), several dims, all dims, with and without keepdim, on contiguous and
// non-contiguous inputs; argmax and argmin (exact indices, the first one on ties); integer
// and bool inputs; NaN and empty inputs.
//
// The reduced dim takes every size in kSizes and a large one (a 2^18-long row, a 2^18-long
// column, and all of a transposed 1024 x 1024), so one-warp, one-block and many-block
// reductions all run. Tolerance: acc_tol(n) for the n-term sums (device_test.h); amax/amin
// pick an input element, exact up to output rounding, which the default covers.
#include <cmath>
#include <limits>

#include "device_test.h"

namespace headroom::testing {
namespace {

using V = std::vector<Tensor>;

constexpr int64_t kLong = int64_t{1} << 18;

struct Case {
  std::string name;
  Shape shape;
  std::vector<int64_t> dims;  // empty: all
  bool keepdim;
  bool transposed;  // reduce over x.t() of a tensor made with the transposed shape
  int64_t count;    // elements per output
};

std::vector<Case> cases() {
  std::vector<Case> c;
  for (int64_t s : kSizes) {
    c.push_back({str_cat("row ", s), {7, s}, {1}, false, false, s});
    c.push_back({str_cat("column ", s), {s, 7}, {0}, true, false, s});
    c.push_back({str_cat("middle ", s), {3, s, 5}, {1}, false, false, s});
    c.push_back({str_cat("outer two ", s), {2, s, 3}, {0, 2}, true, false, 6});
    c.push_back({str_cat("last two ", s), {3, 4, s}, {-1, 1}, false, false, 4 * s});
    c.push_back({str_cat("all ", s), {s, 3}, {}, false, false, 3 * s});
    c.push_back({str_cat("transposed row ", s), {s, 6}, {1}, false, true, s});
  }
  c.push_back({"long row", {4, kLong}, {1}, false, false, kLong});
  c.push_back({"long column", {kLong, 4}, {0}, false, false, kLong});
  c.push_back({"all of transposed 1024x1024", {1024, 1024}, {}, true, true, 1024 * 1024});
  return c;
}

Tensor view_of(const Tensor& x, const Case& c) { return c.transposed ? x.t() : x; }

class Reduce : public DeviceTest {
 protected:
  using Op = Tensor (*)(const Tensor&, const std::vector<int64_t>&, bool);
  void run(const char* name, Op op, Tol extra = {}) {
    for (const Case& c : cases()) {
      // amax/amin's gradient goes to the winners; a tie splits it, on both sides alike.
      Tol tol = acc_tol(c.count).times(extra.abs);
      check_op(
          str_cat(name, " ", c.name), [c, op](const V& v) { return op(view_of(v[0], c), c.dims, c.keepdim); },
          {randn(c.shape)}, tol, tol);
    }
  }
};

Tensor var1(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) { return var(x, dims, 1, keepdim); }

TEST_P(Reduce, SumMean) {
  run("sum", sum);
  run("mean", mean);
}

TEST_P(Reduce, AmaxAmin) {
  run("amax", amax);
  run("amin", amin);
}

// var = sum((x - mean)^2) / (n - 1): a composite whose centring rounds in the dtype first.
TEST_P(Reduce, Var) {
  for (const Case& c : cases()) {
    if (c.count < 2) continue;  // no degrees of freedom
    // var is a composite in the input's dtype: in f16 its sum of squares (and the count as an
    // f16 scalar) overflow past 65504 elements, giving inf/NaN on every device. A limitation
    // of autograd/functions/reduce.cpp var() (it should compute in f32), reported; not a kernel
    // matter, so the f16 instance stops below that count.
    if (dtype() == DType::f16 && c.count > 65504) continue;
    Tol tol = acc_tol(c.count).times(2);
    check_op(
        str_cat("var ", c.name), [c](const V& v) { return var1(view_of(v[0], c), c.dims, c.keepdim); },
        {randn(c.shape)}, tol, tol);
  }
}

TEST_P(Reduce, ArgmaxArgmin) {
  // Exact indices against the reference's on the same rounded values; rounding to f16/bf16 (and
  // the small integers mixed in) makes ties, where the first index must win, as on the cpu.
  for (const Case& c : cases()) {
    if (c.dims.size() != 1) continue;
    const int64_t dim = c.dims[0];
    Tensor x = randn(c.shape);
    Tensor ints = cast(cast(randn(c.shape, 2), DType::i64), DType::f64);
    Tensor mixed = where(lt(uniform(c.shape, 0, 1), Tensor::scalar(0.3, DType::f64)), ints, x);
    check_op(
        str_cat("argmax ", c.name), [c, dim](const V& v) { return argmax(view_of(v[0], c), dim, c.keepdim); }, {mixed},
        {}, {}, false);
    check_op(
        str_cat("argmin ", c.name), [c, dim](const V& v) { return argmin(view_of(v[0], c), dim, c.keepdim); }, {mixed},
        {}, {}, false);
  }
}

TEST_P(Reduce, NanAndEmptyInputs) {
  {
    // As on the cpu: max/min return NaN when a NaN is in the reduced slice, argmax/argmin the
    // first NaN's index, and sums are NaN.
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (int64_t s : {int64_t{127}, int64_t{256}, kLong}) {
      SCOPED_TRACE(str_cat("row length ", s));
      std::vector<double> v = randn({4, s}).to_vector<double>();
      v[static_cast<size_t>(1 * s + s / 3)] = nan;
      v[static_cast<size_t>(1 * s + s - 1)] = nan;
      v[static_cast<size_t>(3 * s + s - 1)] = nan;
      Tensor x = Tensor::from_vector(v, {4, s}, DType::f64);
      Tensor xr = ref_in(x), xd = dev_in(x);
      EXPECT_TRUE(same(amax(xd, {1}), amax(xr, {1}).to(dtype())));
      EXPECT_TRUE(same(amin(xd, {1}), amin(xr, {1}).to(dtype())));
      EXPECT_TRUE(same(argmax(xd, 1), argmax(xr, 1)));
      EXPECT_TRUE(same(argmin(xd, 1), argmin(xr, 1)));
      std::vector<double> m = host64(sum(xd, {1})).to_vector<double>();
      EXPECT_TRUE(std::isnan(m[1]) && std::isnan(m[3]) && !std::isnan(m[0]) && !std::isnan(m[2]));
      EXPECT_EQ(argmax(xd, 1).to_vector<int64_t>()[1], s / 3);
    }
  }

  {
    // Sums over an empty dim are 0, means NaN; max over one throws, on every device.
    Tensor e = Tensor::zeros({0, 5}, opts());
    EXPECT_TRUE(same(sum(e, {0}), Tensor::zeros({5}, DType::f64)));
    EXPECT_TRUE(std::isnan(host64(mean(e)).item<double>()));
    EXPECT_THROW_WITH(amax(e, {0}), ValueError, "size 0");
  }
}

class IntegerReduce : public DeviceTest {};

TEST_P(IntegerReduce, SumsMaxAndArgmaxExact) {
  // Integers sum into i64 exactly; bool sums count; max and argmax keep the type; mean of
  // integers is refused on every device.
  for (DType d : {DType::i32, DType::i64, DType::u8, DType::boolean})
    for (int64_t s : {int64_t{1}, int64_t{127}, int64_t{128}, int64_t{255}, int64_t{256}, kLong}) {
      SCOPED_TRACE(str_cat(dtype_name(d), " row length ", s));
      Tensor x64 = cast(cast(d == DType::u8 || d == DType::boolean ? abs(randn({3, s}, 50)) : randn({3, s}, 1000), d),
                        DType::f64);
      Tensor x = x64.to(d).to(device());
      Tensor total = sum(x, {1});
      EXPECT_EQ(total.dtype(), DType::i64);
      EXPECT_TRUE(same(total, sum(x64, {1})));
      EXPECT_TRUE(same(sum(x.t(), {0}), sum(x64, {1})));
      EXPECT_TRUE(same(sum(x), sum(x64)));
      if (d != DType::boolean) {
        EXPECT_TRUE(same(amax(x, {1}), amax(x64, {1})));
        EXPECT_TRUE(same(amin(x, {0}), amin(x64, {0})));
      }
      EXPECT_TRUE(same(argmax(x, 1), argmax(x64, 1)));
      EXPECT_TRUE(same(argmin(x, 1), argmin(x64, 1)));
      EXPECT_THROW_WITH(mean(x), DTypeError, "mean");
    }
}

HR_DEVICE_DTYPE_SUITE(Reduce);
HR_DEVICE_SUITE(IntegerReduce);

}  // namespace
}  // namespace headroom::testing
