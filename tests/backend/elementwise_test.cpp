// Elementwise ops on every device against the f64 cpu reference: each unary op inside its
// domain, each binary op with broadcasting (both sides, scalars, non-contiguous operands,
// mixed dtypes), comparisons (bool out, with ties made on purpose), where, and casts between
// every pair of the eight dtypes.
//
// Shapes: every size in kSizes and a 1M-element one, so a kernel's tail, one-block and
// many-block cases all run; plus a strided view, which takes the non-contiguous path.
// Tolerances: a unary or binary forward rounds once in the output dtype, so the defaults hold.
// Backward formulas are composites of a few elementwise ops, each rounding in the storage
// dtype on both devices (tanh's 1 - y*y cancels near |y| = 1, losing the digits that y's own
// rounding had), so their gradients get a few roundoffs more, measured against the incoming
// gradient's size (1) rather than the result's, which such cancellation can make tiny:
// kComposite.
#include <cmath>

#include "device_test.h"

namespace headroom::testing {
namespace {

using V = std::vector<Tensor>;

constexpr int64_t kLarge = int64_t{1} << 20;
const Tol kComposite{3, 1, DType::f64, 1};

std::vector<int64_t> all_sizes() {
  std::vector<int64_t> s = kSizes;
  s.push_back(kLarge);
  return s;
}

// ---- unary ----

class Unary : public DeviceTest {
 protected:
  using Op = std::function<Tensor(const Tensor&)>;
  using Make = std::function<Tensor(const Shape&)>;

  // op at every size, and on a strided (transposed, every other row) view.
  void run(const std::string& name, const Op& op, const Make& make, Tol fwd = {}, Tol bwd = kComposite,
           bool backward = true, const Op& ref = nullptr, bool large = true) {
    OpFn ref_fn = ref ? OpFn([ref](const V& v) { return ref(v[0]); }) : OpFn();
    for (int64_t n : all_sizes())
      if (n < kLarge || large)
        check_op(
            str_cat(name, " n=", n), [op](const V& v) { return op(v[0]); }, {make({n})}, fwd, bwd, backward, ref_fn);
    OpFn strided_ref = ref ? OpFn([ref](const V& v) { return ref(v[0].t().slice(0, 0, 130, 2)); }) : OpFn();
    check_op(
        str_cat(name, " strided"), [op](const V& v) { return op(v[0].t().slice(0, 0, 130, 2)); }, {make({33, 130})},
        fwd, bwd, backward, strided_ref);
  }
  static Make normal(double scale = 1) {
    return [scale](const Shape& s) { return randn(s, scale); };
  }
  static Make range(double lo, double hi) {
    return [lo, hi](const Shape& s) { return uniform(s, lo, hi); };
  }
  // Normal values with every fifth one exactly zero.
  static Tensor with_zeros(const Shape& s) {
    std::vector<double> v = randn(s).to_vector<double>();
    for (size_t i = 0; i < v.size(); i += 5) v[i] = 0;
    return Tensor::from_vector(v, s, DType::f64);
  }
  // Backend ops without a public function (sign, reciprocal): raw, no gradient.
  static Tensor raw_unary(UnaryOp op, const Tensor& x) {
    Tensor out = Tensor::empty(x.shape(), x.options());
    backend_for(x.device()).unary(op, x, out);
    return out;
  }
};

TEST_P(Unary, SignsAndPowers) {
  run("neg", [](const Tensor& x) { return neg(x); }, normal(), {}, {});
  run("abs", [](const Tensor& x) { return abs(x); }, normal(), {}, {});
  run(
      "square", [](const Tensor& x) { return square(x); }, normal());
  // One exponent at the large size: the kernel is pow's either way.
  for (double e : {2.0, 3.0, 0.5, -1.5})
    run(
        str_cat("pow ", e), [e](const Tensor& x) { return pow(x, e); }, range(0.2, 3), {}, kComposite, true, nullptr,
        e == -1.5);
  // sign and reciprocal have no public op (abs's gradient uses sign): the backend directly,
  // against composites.
  run(
      "sign", [](const Tensor& x) { return raw_unary(UnaryOp::sign, x); }, with_zeros, {}, {}, false,
      [](const Tensor& x) {
        Tensor one = scalar_like(x, 1.0), zero = scalar_like(x, 0.0);
        return where(gt(x, zero), one, where(lt(x, zero), -one, zero));
      });
  run(
      "reciprocal", [](const Tensor& x) { return raw_unary(UnaryOp::reciprocal, x); },
      [](const Shape& s) { return away_from_zero(s, 0.1, 5); }, {}, {}, false, [](const Tensor& x) { return 1.0 / x; });
  run(
      "logical_not", [](const Tensor& x) { return logical_not(x); }, with_zeros, {}, {}, false);
}

TEST_P(Unary, Transcendental) {
  run(
      "exp", [](const Tensor& x) { return exp(x); }, range(-4, 4));
  run(
      "log", [](const Tensor& x) { return log(x); }, range(0.05, 10));
  run(
      "sqrt", [](const Tensor& x) { return sqrt(x); }, range(0.01, 10));
}

TEST_P(Unary, Activations) {
  run("relu", [](const Tensor& x) { return relu(x); }, normal(), {}, {});
  run(
      "gelu", [](const Tensor& x) { return gelu(x); }, normal(2));
  run(
      "tanh", [](const Tensor& x) { return tanh(x); }, normal(2));
  run(
      "sigmoid", [](const Tensor& x) { return sigmoid(x); }, normal(3));
  run("clamp", [](const Tensor& x) { return clamp(x, -0.5, 0.75); }, normal(), {}, {});
}

// ---- binary ----

class Binary : public DeviceTest {
 protected:
  using Op = std::function<Tensor(const Tensor&, const Tensor&)>;
  using Make = std::function<Tensor(const Shape&)>;

  // Same shapes at every size, broadcasting both ways, a scalar, a row against a matrix, and a
  // transposed (non-contiguous) operand.
  void run(const std::string& name, const Op& op, const Make& make_a, const Make& make_b, Tol fwd = {},
           Tol bwd = kComposite, bool large_broadcast = false) {
    auto f = [op](const V& v) { return op(v[0], v[1]); };
    auto check = [&](const std::string& what, const OpFn& fn, const Shape& sa, const Shape& sb, int64_t summed) {
      check_op(str_cat(name, " ", what), fn, {make_a(sa), make_b(sb)}, fwd, broadcast_tol(bwd, summed));
    };
    for (int64_t n : all_sizes()) check(str_cat("(", n, ") (", n, ")"), f, {n}, {n}, 1);
    for (int64_t n : kSizes) {
      check(str_cat("(", n, ", 1) (1, ", n, ")"), f, {n, 1}, {1, n}, n);
      check(str_cat("(3, ", n, ") (", n, ")"), f, {3, n}, {n}, 3);
      check(str_cat("(", n, ") ()"), f, {n}, {}, n);
      check(str_cat("() (2, ", n, ")"), f, {}, {2, n}, 2 * n);
      check(
          str_cat("(5, ", n, ")^T (", n, ", 5)"), [op](const V& v) { return op(v[0].t(), v[1]); }, {5, n}, {n, 5}, 1);
    }
    // Broadcasting is op-independent indexing on both backends: one op takes it at a large size.
    if (large_broadcast) check("(1024, 1024) (1024, 1)", f, {1024, 1024}, {1024, 1}, 1024);
  }
  // A broadcast operand's gradient sums `summed` products g * b, each rounded in the dtype
  // before the sum (autograd's sum_to): their errors add like an n-term accumulation of unit
  // terms, whose size is sqrt(n) even where the sum itself cancels to something small.
  static Tol broadcast_tol(Tol t, int64_t summed) {
    if (summed == 1) return t;
    const Tol a = acc_tol(summed);
    return Tol{t.abs * a.abs, t.rel, t.at_least, std::sqrt(static_cast<double>(summed))};
  }
  static Make normal() {
    return [](const Shape& s) { return randn(s); };
  }
};

TEST_P(Binary, Arithmetic) {
  run(
      "add", [](const Tensor& a, const Tensor& b) { return a + b; }, normal(), normal(), {}, kComposite, true);
  run(
      "sub", [](const Tensor& a, const Tensor& b) { return a - b; }, normal(), normal());
  run(
      "mul", [](const Tensor& a, const Tensor& b) { return a * b; }, normal(), normal());
  run(
      "div", [](const Tensor& a, const Tensor& b) { return a / b; }, normal(),
      [](const Shape& s) { return away_from_zero(s, 0.5, 3); });
}

TEST_P(Binary, PowMaximumMinimum) {
  run(
      "pow", [](const Tensor& a, const Tensor& b) { return pow(a, b); },
      [](const Shape& s) { return uniform(s, 0.2, 3); }, [](const Shape& s) { return uniform(s, -2, 2); });
  // Ties (equal rounded values) split the gradient; both sides see the same rounded inputs.
  run(
      "maximum", [](const Tensor& a, const Tensor& b) { return maximum(a, b); }, normal(), normal());
  run(
      "minimum", [](const Tensor& a, const Tensor& b) { return minimum(a, b); }, normal(), normal());
}

TEST_P(Binary, Comparisons) {
  using Cmp = Tensor (*)(const Tensor&, const Tensor&);
  const std::pair<const char*, Cmp> cmps[] = {{"eq", eq}, {"ne", ne}, {"lt", lt}, {"le", le}, {"gt", gt}, {"ge", ge}};
  // Small integers as floats: equal pairs are common (and survive rounding to any dtype).
  auto ints = [](const Shape& s) { return cast(cast(randn(s, 2), DType::i64), DType::f64); };
  for (int64_t n : all_sizes()) {
    // Half of b copies a, so equality holds often.
    Tensor a = randn({n}), b = randn({n});
    b = where(lt(uniform({n}, 0, 1), Tensor::scalar(0.5, DType::f64)), a, b);
    for (const auto& [name, cmp] : cmps)
      check_op(
          str_cat(name, " n=", n), [cmp](const V& v) { return cmp(v[0], v[1]); }, {a, b}, {}, {}, false);
  }
  for (int64_t n : kSizes) {
    Tensor a = ints({n, 1}), b = ints({1, n}), at = ints({4, n}), bt = ints({n, 4});
    for (const auto& [name, cmp] : cmps) {
      check_op(
          str_cat(name, " broadcast n=", n), [cmp](const V& v) { return cmp(v[0], v[1]); }, {a, b}, {}, {}, false);
      check_op(
          str_cat(name, " transposed n=", n), [cmp](const V& v) { return cmp(v[0].t(), v[1]); }, {at, bt}, {}, {},
          false);
    }
  }
  for (const auto& [name, cmp] : cmps)
    check_op(
        str_cat(name, " scalar"), [cmp](const V& v) { return cmp(v[0], v[1]); },
        {ints({1000}), Tensor::scalar(1.0, DType::f64)}, {}, {}, false);
}

TEST_P(Binary, WhereAndPromotion) {
  // A float tensor with an integer one gives the float dtype; with a bool, too.
  Tensor ints = cast(randn({4, 255}, 20), DType::i32);
  check_op("float + i32", [](const V& v) { return v[0] + v[1]; }, {randn({4, 255}), ints});
  check_op("float * i64 broadcast", [](const V& v) { return v[0] * v[1]; },
           {randn({3, 128}), cast(randn({128}, 20), DType::i64)});
  check_op("float - bool", [](const V& v) { return v[0] - v[1]; },
           {randn({256}), gt(randn({256}), Tensor::scalar(0.0, DType::f64))});

  auto f = [](const V& v) { return where(v[0], v[1], v[2]); };
  auto cond = [](const Shape& s) { return gt(randn(s), Tensor::scalar(0.0, DType::f64)); };
  for (int64_t n : all_sizes()) check_op(str_cat("where n=", n), f, {cond({n}), randn({n}), randn({n})}, {}, {});
  for (int64_t n : kSizes) {
    check_op(str_cat("where broadcast n=", n), f, {cond({n, 1}), randn({1, n}), randn({})}, {},
             broadcast_tol({}, n * n));
    check_op(str_cat("where transposed n=", n), [](const V& v) { return where(v[0].t(), v[1], v[2].t()); },
             {cond({3, n}), randn({n, 3}), randn({3, n})}, {}, {});
  }
}

// ---- casts ----

class Cast : public DeviceTest {};

// v as dtype d holds it: rounded to nearest even for floats, truncated for integers.
double round_to(double v, DType d) {
  switch (d) {
    case DType::f64: return v;
    case DType::f32: return static_cast<float>(v);
    case DType::f16: return static_cast<float>(Half(static_cast<float>(v)));
    case DType::bf16: return static_cast<float>(BFloat16(static_cast<float>(v)));
    case DType::i32:
    case DType::i64:
    case DType::u8: return std::trunc(v);
    case DType::boolean: return v != 0 ? 1 : 0;
  }
  return v;
}

const DType kAllDTypes[] = {DType::f32, DType::f64, DType::f16, DType::bf16,
                            DType::i32, DType::i64, DType::u8,  DType::boolean};

// n values that src holds exactly and dst can take: non-negative and at most 250 where either
// is u8 (a negative or too large float into u8 is undefined behaviour), integers with
// fractions into integers, every fifth exactly zero, and for i32/i64 sources into floats some
// beyond 2^24 (f32 rounds them) and beyond f16's range (inf).
std::vector<double> cast_values(DType src, DType dst, const std::vector<double>& normal, int64_t n) {
  std::vector<double> v(normal.begin(), normal.begin() + n);
  const bool non_negative = src == DType::u8 || dst == DType::u8;
  const bool wide_int = src == DType::i32 || src == DType::i64;
  for (size_t i = 0; i < v.size(); ++i) {
    double x = v[i] * 60;
    if (non_negative) x = std::min(std::abs(x), 250.0);
    if (i % 5 == 0) x = 0;
    else if (wide_int && !is_integral(dst) && i % 7 == 3) x = i % 2 ? 16777217.0 : -70001.0;
    v[i] = round_to(x, src);
  }
  return v;
}

TEST_P(Cast, EveryPairOfDtypes) {
  const std::vector<double> normal = randn({kLarge}).to_vector<double>();
  for (DType src : kAllDTypes)
    for (DType dst : kAllDTypes) {
      for (int64_t n : all_sizes()) {
        SCOPED_TRACE(str_cat(dtype_name(src), " -> ", dtype_name(dst), " n=", n));
        std::vector<double> values = cast_values(src, dst, normal, n), want(values.size());
        for (size_t i = 0; i < values.size(); ++i) want[i] = round_to(values[i], dst);
        Tensor x = Tensor::from_vector(values, {n}, TensorOptions().dtype(src).device(device()));
        Tensor y = cast(x, dst);
        EXPECT_EQ(y.dtype(), dst);
        EXPECT_EQ(y.device(), device());
        EXPECT_TRUE(same(y, Tensor::from_vector(want, {n}, DType::f64)));
      }
      // A transposed source and a strided destination.
      SCOPED_TRACE(str_cat(dtype_name(src), " -> ", dtype_name(dst), " strided"));
      std::vector<double> values = cast_values(src, dst, normal, 129 * 7), want(values.size());
      Tensor x = Tensor::from_vector(values, {129, 7}, TensorOptions().dtype(src).device(device())).t();
      for (int64_t i = 0; i < 7; ++i)
        for (int64_t j = 0; j < 129; ++j)
          want[static_cast<size_t>(i * 129 + j)] = round_to(values[static_cast<size_t>(j * 7 + i)], dst);
      Tensor dst_buf = Tensor::zeros({7, 258}, TensorOptions().dtype(dst).device(device()));
      Tensor view = dst_buf.slice(1, 0, 258, 2);
      view.copy_(x);
      EXPECT_TRUE(same(view, Tensor::from_vector(want, {7, 129}, DType::f64)));
      EXPECT_TRUE(same(dst_buf.slice(1, 1, 258, 2), Tensor::zeros({7, 129}))) << "copy_ wrote between the strides";
    }
}

class CastGrad : public DeviceTest {};

TEST_P(CastGrad, BetweenFloatDtypes) {
  // cast's gradient is the incoming gradient cast back: w rounded to the target, then to the
  // source dtype -- exactly, on any device.
  for (DType to : {DType::f32, DType::f16, DType::bf16, DType::f64})
    for (int64_t n : all_sizes()) {
      SCOPED_TRACE(str_cat(dtype_name(dtype()), " -> ", dtype_name(to), " n=", n));
      Tensor x64 = randn({n});
      Tensor x = dev_in(x64, true);
      Tensor y = cast(x, to);
      EXPECT_TRUE(same(y, ref_in(x64).to(to)));
      Tensor w = randn({n});
      sum(y * w.to(to).to(device())).backward();
      ASSERT_TRUE(x.grad().defined());
      EXPECT_EQ(x.grad().dtype(), dtype());
      EXPECT_TRUE(same(x.grad(), w.to(to).to(dtype())));
    }
}

// ---- integer and bool elementwise ----

class IntegerElementwise : public DeviceTest {};

TEST_P(IntegerElementwise, UnaryAndBinaryExact) {
  // Integers compute in their own type: exact, so compared element for element with the same
  // op on f64 values (all small enough to be exact there too).
  for (DType d : {DType::i32, DType::i64})
    for (int64_t n : all_sizes()) {
      SCOPED_TRACE(str_cat(dtype_name(d), " n=", n));
      Tensor a64 = cast(cast(randn({n}, 100), d), DType::f64), b64 = cast(cast(randn({n}, 100), d), DType::f64);
      Tensor a = a64.to(d).to(device()), b = b64.to(d).to(device());
      EXPECT_TRUE(same(neg(a), neg(a64)));
      EXPECT_TRUE(same(abs(a), abs(a64)));
      EXPECT_TRUE(same(relu(a), relu(a64)));
      EXPECT_TRUE(same(square(a), square(a64)));
      EXPECT_TRUE(same(a + b, a64 + b64));
      EXPECT_TRUE(same(a - b, a64 - b64));
      EXPECT_TRUE(same(a * b, a64 * b64));
      EXPECT_TRUE(same(maximum(a, b), maximum(a64, b64)));
      EXPECT_TRUE(same(minimum(a, b), minimum(a64, b64)));
      EXPECT_TRUE(same(lt(a, b), lt(a64, b64)));
      EXPECT_TRUE(same(eq(a, a), eq(a64, a64)));
      EXPECT_TRUE(same(logical_not(a), logical_not(a64)));
      // True division of integers gives f32.
      Tensor q = a / (abs(b) + 1);
      EXPECT_EQ(q.dtype(), DType::f32);
      EXPECT_TRUE(same(q, (a64 / (abs(b64) + 1.0)).to(DType::f32)));
    }
  // u8 and bool.
  Tensor u64 = cast(cast(abs(randn({1000}, 7)), DType::u8), DType::f64);
  Tensor u = u64.to(DType::u8).to(device());
  EXPECT_TRUE(same(u + u, u64 + u64));
  EXPECT_TRUE(same(maximum(u, scalar_like(u, 5)), maximum(u64, scalar_like(u64, 5))));
  Tensor c64 = gt(randn({1000}), Tensor::scalar(0.0, DType::f64));
  Tensor c = c64.to(device());
  EXPECT_TRUE(same(logical_not(c), logical_not(c64)));
  EXPECT_TRUE(same(eq(c, logical_not(c)), Tensor::zeros({1000}, DType::boolean)));
  EXPECT_TRUE(same(where(c, u, scalar_like(u, 9)), where(c64, u64, scalar_like(u64, 9))));
}

HR_DEVICE_DTYPE_SUITE(Unary);
HR_DEVICE_DTYPE_SUITE(Binary);
HR_DEVICE_DTYPE_SUITE(CastGrad);
HR_DEVICE_SUITE(Cast);
HR_DEVICE_SUITE(IntegerElementwise);

}  // namespace
}  // namespace headroom::testing
