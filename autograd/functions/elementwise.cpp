// Elementwise ops and their gradients. Under autocast (autograd/autocast.h) exp, log and pow
// upcast 16-bit inputs to f32; the others follow their inputs.
#include <functional>
#include <cmath>
#include <limits>

#include "autograd/autocast.h"
#include "autograd/functions/internal.h"

namespace headroom {

namespace detail {

void check_same_device(const char* op, std::initializer_list<Tensor> tensors) {
  const Tensor* first = nullptr;
  for (const auto& t : tensors) {
    if (!t.defined()) continue;
    if (!first) {
      first = &t;
    } else if (!(t.device() == first->device())) {
      std::string list;
      for (const auto& u : tensors)
        if (u.defined()) list += (list.empty() ? "" : ", ") + describe(u);
      throw DeviceError(str_cat(op, ": tensors are on different devices: ", list));
    }
  }
}

void check_floating(const char* op, const Tensor& t, const char* what) {
  HR_CHECK(is_floating(t.dtype()), DTypeError, op, ": ", what, " must be a floating tensor, got ", describe(t));
}

Tensor empty_like(const Tensor& x) { return Tensor::empty(x.shape(), x.options()); }
Tensor empty_like(const Tensor& x, DType dtype) { return Tensor::empty(x.shape(), x.options().dtype(dtype)); }

Tensor cast_raw(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  Tensor out = empty_like(x, dtype);
  backend_for(x.device()).copy(out, x);
  return out;
}

Tensor contiguous_raw(const Tensor& x) {
  if (x.is_contiguous()) return x;
  Tensor out = empty_like(x);
  backend_for(x.device()).copy(out, x);
  return out;
}

namespace {
bool float_only(UnaryOp op) {
  switch (op) {
    case UnaryOp::neg:
    case UnaryOp::abs:
    case UnaryOp::relu:
    case UnaryOp::sign:
    case UnaryOp::square:
    case UnaryOp::logical_not: return false;
    default: return true;
  }
}
Tensor broadcast_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  Shape strides(shape.size(), 0);
  const size_t lead = shape.size() - x.shape().size();
  for (size_t d = 0; d < x.shape().size(); ++d) strides[lead + d] = x.shape()[d] == 1 ? 0 : x.strides()[d];
  return x.as_strided(shape, strides, x.offset());
}
}  // namespace

Tensor unary_raw(UnaryOp op, const Tensor& x) {
  Tensor in = x;
  if (op == UnaryOp::logical_not) {
    in = cast_raw(x, DType::boolean);
  } else if (float_only(op) && !is_floating(x.dtype())) {
    in = cast_raw(x, DType::f32);
  }
  Tensor out = empty_like(in);
  if (out.numel() > 0) backend_for(in.device()).unary(op, in, out);
  return out;
}

Tensor binary_raw(BinaryOp op, const Tensor& a, const Tensor& b) {
  check_same_device(binary_op_name(op), {a, b});
  Shape shape = broadcast_shapes(a.shape(), b.shape(), binary_op_name(op));
  DType dtype = promote_types(a.dtype(), b.dtype());
  if (op == BinaryOp::div && !is_floating(dtype)) dtype = DType::f32;  // true division
  if ((op == BinaryOp::gelu_backward || op == BinaryOp::pow) && !is_floating(dtype)) dtype = DType::f32;
  Tensor ca = broadcast_to(cast_raw(a, dtype), shape);
  Tensor cb = broadcast_to(cast_raw(b, dtype), shape);
  Tensor out =
      Tensor::empty(shape, TensorOptions().dtype(is_comparison(op) ? DType::boolean : dtype).device(a.device()));
  if (out.numel() > 0) backend_for(a.device()).binary(op, ca, cb, out);
  return out;
}

Tensor where_raw(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_same_device("where", {cond, a, b});
  Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  DType dtype = promote_types(a.dtype(), b.dtype());
  Tensor out = Tensor::empty(shape, TensorOptions().dtype(dtype).device(a.device()));
  if (out.numel() > 0)
    backend_for(a.device())
        .where(broadcast_to(cast_raw(cond, DType::boolean), shape), broadcast_to(cast_raw(a, dtype), shape),
               broadcast_to(cast_raw(b, dtype), shape), out);
  return out;
}

}  // namespace detail

using namespace detail;

Tensor scalar_like(const Tensor& x, double value) {
  DType dtype = x.dtype();
  if (!is_floating(dtype) && value != std::floor(value)) dtype = DType::f32;
  if (dtype == DType::boolean && value != 0 && value != 1) dtype = DType::i64;
  return Tensor::scalar(value, TensorOptions().dtype(dtype).device(x.device()));
}

// ---- binary ----

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::add, a, b);
  if (needs_grad({a, b})) {
    Shape sa = a.shape(), sb = b.shape();
    record("add", out, {a, b}, [sa, sb](const Tensor& g) -> std::vector<Tensor> {
      return {sum_to(g, sa), sum_to(g, sb)};
    });
  }
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::sub, a, b);
  if (needs_grad({a, b})) {
    Shape sa = a.shape(), sb = b.shape();
    record("sub", out, {a, b}, [sa, sb](const Tensor& g) -> std::vector<Tensor> {
      return {sum_to(g, sa), sum_to(neg(g), sb)};
    });
  }
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::mul, a, b);
  if (needs_grad({a, b})) {
    bool ga = a.requires_grad(), gb = b.requires_grad();
    SavedTensor sa(gb ? a : Tensor(), "mul"), sb(ga ? b : Tensor(), "mul");
    Shape sha = a.shape(), shb = b.shape();
    record("mul", out, {a, b}, [sa, sb, sha, shb, ga, gb](const Tensor& g) -> std::vector<Tensor> {
      return {ga ? sum_to(g * sb.unpack(), sha) : Tensor(), gb ? sum_to(g * sa.unpack(), shb) : Tensor()};
    });
  }
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::div, a, b);
  if (needs_grad({a, b})) {
    bool gb = b.requires_grad();
    SavedTensor sb(b, "div"), so(gb ? out : Tensor(), "div");
    Shape sha = a.shape(), shb = b.shape();
    record("div", out, {a, b}, [sb, so, sha, shb, gb](const Tensor& g) -> std::vector<Tensor> {
      Tensor ga = g / sb.unpack();
      return {sum_to(ga, sha), gb ? sum_to(neg(ga * so.unpack()), shb) : Tensor()};
    });
  }
  return out;
}

Tensor pow(const Tensor& a, const Tensor& b) {
  if (DType f32; autocast_target(AutocastOp::pow, {&a, &b}, &f32))
    return pow(autocast_cast(a, f32), autocast_cast(b, f32));
  Tensor out = binary_raw(BinaryOp::pow, a, b);
  if (needs_grad({a, b})) {
    SavedTensor sa(a, "pow"), sb(b, "pow"), so(out, "pow");
    Shape sha = a.shape(), shb = b.shape();
    bool gb = b.requires_grad();
    record("pow", out, {a, b}, [sa, sb, so, sha, shb, gb](const Tensor& g) -> std::vector<Tensor> {
      const Tensor& x = sa.unpack();
      const Tensor& e = sb.unpack();
      // d/dx x^e = e x^(e-1), which is 0 (not 0 * inf) where e == 0.
      Tensor ga = where_raw(eq(e, scalar_like(e, 0.0)), scalar_like(g, 0.0), g * e * pow(x, e - 1.0));
      Tensor gbt = gb ? sum_to(g * so.unpack() * log(x), shb) : Tensor();
      return {sum_to(ga, sha), gbt};
    });
  }
  return out;
}

Tensor pow(const Tensor& a, double exponent) {
  if (DType f32; autocast_target(AutocastOp::pow, {&a}, &f32)) return pow(autocast_cast(a, f32), exponent);
  Tensor out = binary_raw(BinaryOp::pow, a, scalar_like(a, exponent));
  if (needs_grad({a})) {
    SavedTensor sa(a, "pow");
    record("pow", out, {a}, [sa, exponent](const Tensor& g) -> std::vector<Tensor> {
      if (exponent == 0) return {g * 0.0};
      return {g * (exponent * pow(sa.unpack(), exponent - 1.0))};
    });
  }
  return out;
}

namespace {
// Gradient of max/min: to the winner; ties share it equally.
Tensor extremum(BinaryOp op, const char* name, const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(op, a, b);
  if (needs_grad({a, b})) {
    SavedTensor sa(a, name), sb(b, name);
    Shape sha = a.shape(), shb = b.shape();
    bool is_max = op == BinaryOp::maximum;
    record(name, out, {a, b}, [sa, sb, sha, shb, is_max](const Tensor& g) -> std::vector<Tensor> {
      const Tensor& x = sa.unpack();
      const Tensor& y = sb.unpack();
      Tensor wins = cast(is_max ? gt(x, y) : lt(x, y), g.dtype());
      Tensor ties = cast(eq(x, y), g.dtype()) * 0.5;
      Tensor wa = wins + ties;
      return {sum_to(g * wa, sha), sum_to(g * (1.0 - wa), shb)};
    });
  }
  return out;
}
}  // namespace

Tensor maximum(const Tensor& a, const Tensor& b) { return extremum(BinaryOp::maximum, "maximum", a, b); }
Tensor minimum(const Tensor& a, const Tensor& b) { return extremum(BinaryOp::minimum, "minimum", a, b); }

// ---- unary ----

Tensor neg(const Tensor& x) {
  Tensor out = unary_raw(UnaryOp::neg, x);
  if (needs_grad({x})) record("neg", out, {x}, [](const Tensor& g) -> std::vector<Tensor> { return {neg(g)}; });
  return out;
}

Tensor exp(const Tensor& x) {
  if (DType f32; autocast_target(AutocastOp::exp, {&x}, &f32)) return exp(autocast_cast(x, f32));
  Tensor out = unary_raw(UnaryOp::exp, x);
  if (needs_grad({x})) {
    SavedTensor so(out, "exp");
    record("exp", out, {x}, [so](const Tensor& g) -> std::vector<Tensor> { return {g * so.unpack()}; });
  }
  return out;
}

Tensor log(const Tensor& x) {
  if (DType f32; autocast_target(AutocastOp::log, {&x}, &f32)) return log(autocast_cast(x, f32));
  Tensor out = unary_raw(UnaryOp::log, x);
  if (needs_grad({x})) {
    SavedTensor sx(x, "log");
    record("log", out, {x}, [sx](const Tensor& g) -> std::vector<Tensor> { return {g / sx.unpack()}; });
  }
  return out;
}

Tensor sqrt(const Tensor& x) {
  Tensor out = unary_raw(UnaryOp::sqrt, x);
  if (needs_grad({x})) {
    SavedTensor so(out, "sqrt");
    record("sqrt", out, {x}, [so](const Tensor& g) -> std::vector<Tensor> { return {g / (2.0 * so.unpack())}; });
  }
  return out;
}

Tensor abs(const Tensor& x) {
  Tensor out = unary_raw(UnaryOp::abs, x);
  if (needs_grad({x})) {
    SavedTensor sx(x, "abs");
    record("abs", out, {x},
           [sx](const Tensor& g) -> std::vector<Tensor> { return {g * unary_raw(UnaryOp::sign, sx.unpack())}; });
  }
  return out;
}

namespace {
// Note [differentiable in-place]: op(x) written into x, for an activation whose backward needs
// only its output: grad(g, y) with y the output.
Tensor& activation_in_place(Tensor& x, UnaryOp op, const char* name,
                            std::function<Tensor(const Tensor& g, const Tensor& y)> grad) {
  HR_CHECK(x.defined(), ValueError, name, ": the tensor is undefined");
  for (int64_t d = 0; d < x.dim(); ++d)  // one element read and written through several indices
    HR_CHECK(x.stride(d) != 0 || x.size(d) <= 1, ValueError, name, ": ", describe(x), " is expanded (stride 0 in dim ",
             d, "), so one element would be computed on more than once; clone() it first");
  const bool needs = GradMode::is_enabled() && x.requires_grad();
  if (needs) {
    HR_CHECK(!x.is_leaf(), AutogradError, name, ": in place on a leaf that requires grad (", describe(x),
             "); its gradient would have nowhere to go: use the out-of-place form");
    HR_CHECK(x.offset() == 0 && x.is_contiguous() &&
                 static_cast<size_t>(x.numel()) * dtype_size(x.dtype()) == x.storage()->nbytes(),
             AutogradError, name, ": ", describe(x),
             " is a view of a larger storage; in place on a view that requires grad is not supported: use the "
             "out-of-place form");
  }
  {
    NoGradGuard no_grad;
    if (x.numel() > 0) backend_for(x.device()).unary(op, x, x);
  }
  x.bump_version();
  if (needs) {
    SavedTensor so(x, name);  // the output, at its new version
    // The node's input edge is x's history before this op, taken before x becomes its output.
    record(name, x, {x},
           [so, grad = std::move(grad)](const Tensor& g) -> std::vector<Tensor> { return {grad(g, so.unpack())}; });
  }
  return x;
}
}  // namespace

Tensor& relu_(Tensor& x) {
  return activation_in_place(x, UnaryOp::relu, "relu_", [](const Tensor& g, const Tensor& y) {
    return binary_raw(BinaryOp::relu_backward, g, y);
  });
}

Tensor& tanh_(Tensor& x) {
  return activation_in_place(x, UnaryOp::tanh, "tanh_",
                             [](const Tensor& g, const Tensor& y) { return g * (1.0 - y * y); });
}

Tensor& sigmoid_(Tensor& x) {
  return activation_in_place(x, UnaryOp::sigmoid, "sigmoid_",
                             [](const Tensor& g, const Tensor& y) { return g * y * (1.0 - y); });
}

Tensor relu(const Tensor& x) {
  Tensor out = unary_raw(UnaryOp::relu, x);
  if (needs_grad({x})) {
    // The output is saved instead of the input: out > 0 exactly where x > 0, and a following
    // op often saves the output anyway, so no extra activation memory is kept.
    SavedTensor so(out, "relu");
    record("relu", out, {x}, [so](const Tensor& g) -> std::vector<Tensor> {
      return {binary_raw(BinaryOp::relu_backward, g, so.unpack())};
    });
  }
  return out;
}

Tensor gelu(const Tensor& x) {
  Tensor out = unary_raw(UnaryOp::gelu, x);
  if (needs_grad({x})) {
    SavedTensor sx(x, "gelu");
    record("gelu", out, {x}, [sx](const Tensor& g) -> std::vector<Tensor> {
      return {binary_raw(BinaryOp::gelu_backward, g, sx.unpack())};
    });
  }
  return out;
}

Tensor tanh(const Tensor& x) {
  Tensor out = unary_raw(UnaryOp::tanh, x);
  if (needs_grad({x})) {
    SavedTensor so(out, "tanh");
    record("tanh", out, {x}, [so](const Tensor& g) -> std::vector<Tensor> {
      const Tensor& y = so.unpack();
      return {g * (1.0 - y * y)};
    });
  }
  return out;
}

Tensor sigmoid(const Tensor& x) {
  Tensor out = unary_raw(UnaryOp::sigmoid, x);
  if (needs_grad({x})) {
    SavedTensor so(out, "sigmoid");
    record("sigmoid", out, {x}, [so](const Tensor& g) -> std::vector<Tensor> {
      const Tensor& y = so.unpack();
      return {g * y * (1.0 - y)};
    });
  }
  return out;
}

Tensor square(const Tensor& x) {
  Tensor out = unary_raw(UnaryOp::square, x);
  if (needs_grad({x})) {
    SavedTensor sx(x, "square");
    record("square", out, {x}, [sx](const Tensor& g) -> std::vector<Tensor> { return {g * (2.0 * sx.unpack())}; });
  }
  return out;
}

Tensor silu(const Tensor& x) { return x * sigmoid(x); }

Tensor leaky_relu(const Tensor& x, double negative_slope) {
  return where(gt(x, scalar_like(x, 0.0)), x, x * negative_slope);
}

Tensor elu(const Tensor& x, double alpha) {
  // exp of the clamped input: exp(x) of a large positive x would be inf, and where's zero
  // gradient times exp's inf would make the gradient NaN.
  Tensor negative = (exp(clamp(x, -std::numeric_limits<double>::infinity(), 0.0)) - 1.0) * alpha;
  return where(gt(x, scalar_like(x, 0.0)), x, negative);
}

Tensor clamp(const Tensor& x, double lo, double hi) {
  HR_CHECK(lo <= hi, ValueError, "clamp: lower bound ", lo, " is above upper bound ", hi);
  Tensor out = binary_raw(BinaryOp::minimum, binary_raw(BinaryOp::maximum, x, scalar_like(x, lo)), scalar_like(x, hi));
  if (needs_grad({x})) {
    SavedTensor sx(x, "clamp");
    record("clamp", out, {x}, [sx, lo, hi](const Tensor& g) -> std::vector<Tensor> {
      const Tensor& v = sx.unpack();
      Tensor inside = binary_raw(BinaryOp::mul, cast_raw(ge(v, scalar_like(v, lo)), g.dtype()),
                                 cast_raw(le(v, scalar_like(v, hi)), g.dtype()));
      return {g * inside};
    });
  }
  return out;
}

// ---- comparisons and selection ----

Tensor eq(const Tensor& a, const Tensor& b) { return binary_raw(BinaryOp::eq, a, b); }
Tensor ne(const Tensor& a, const Tensor& b) { return binary_raw(BinaryOp::ne, a, b); }
Tensor lt(const Tensor& a, const Tensor& b) { return binary_raw(BinaryOp::lt, a, b); }
Tensor le(const Tensor& a, const Tensor& b) { return binary_raw(BinaryOp::le, a, b); }
Tensor gt(const Tensor& a, const Tensor& b) { return binary_raw(BinaryOp::gt, a, b); }
Tensor ge(const Tensor& a, const Tensor& b) { return binary_raw(BinaryOp::ge, a, b); }
Tensor logical_not(const Tensor& x) { return unary_raw(UnaryOp::logical_not, x); }

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  Tensor out = where_raw(cond, a, b);
  if (needs_grad({a, b})) {
    SavedTensor sc(cond, "where");
    Shape sha = a.shape(), shb = b.shape();
    record("where", out, {a, b}, [sc, sha, shb](const Tensor& g) -> std::vector<Tensor> {
      Tensor zero = scalar_like(g, 0.0);
      const Tensor& c = sc.unpack();
      return {sum_to(where_raw(c, g, zero), sha), sum_to(where_raw(c, zero, g), shb)};
    });
  }
  return out;
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  HR_CHECK(mask.dtype() == DType::boolean, DTypeError, "masked_fill: mask must be bool, got ", describe(mask));
  Shape shape = broadcast_shapes(x.shape(), mask.shape(), "masked_fill");
  HR_CHECK(shape == x.shape(), ShapeError, "masked_fill: mask ", shape_str(mask.shape()),
           " does not broadcast to the input's shape ", shape_str(x.shape()));
  return where(mask, Tensor::scalar(value, x.options()), x);
}

Tensor cast(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  Tensor out = cast_raw(x, dtype);
  if (needs_grad({x}) && is_floating(dtype)) {
    DType from = x.dtype();
    record("cast", out, {x}, [from](const Tensor& g) -> std::vector<Tensor> { return {cast_raw(g, from)}; });
  }
  return out;
}

// ---- operators ----

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator-(const Tensor& x) { return neg(x); }
Tensor operator+(const Tensor& a, double b) { return add(a, scalar_like(a, b)); }
Tensor operator-(const Tensor& a, double b) { return sub(a, scalar_like(a, b)); }
Tensor operator*(const Tensor& a, double b) { return mul(a, scalar_like(a, b)); }
Tensor operator/(const Tensor& a, double b) { return div(a, scalar_like(a, b)); }
Tensor operator+(double a, const Tensor& b) { return add(scalar_like(b, a), b); }
Tensor operator-(double a, const Tensor& b) { return sub(scalar_like(b, a), b); }
Tensor operator*(double a, const Tensor& b) { return mul(scalar_like(b, a), b); }
Tensor operator/(double a, const Tensor& b) { return div(scalar_like(b, a), b); }

// ---- Tensor methods ----

Tensor Tensor::neg() const { return headroom::neg(*this); }
Tensor Tensor::exp() const { return headroom::exp(*this); }
Tensor Tensor::log() const { return headroom::log(*this); }
Tensor Tensor::sqrt() const { return headroom::sqrt(*this); }
Tensor Tensor::abs() const { return headroom::abs(*this); }
Tensor Tensor::relu() const { return headroom::relu(*this); }
Tensor Tensor::tanh() const { return headroom::tanh(*this); }
Tensor Tensor::sigmoid() const { return headroom::sigmoid(*this); }
Tensor Tensor::pow(double exponent) const { return headroom::pow(*this, exponent); }
Tensor Tensor::to(DType dtype) const { return cast(*this, dtype); }

}  // namespace headroom
