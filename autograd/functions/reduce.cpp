// Reductions and their gradients. Under autocast (autograd/autocast.h) sum and mean of 16-bit
// inputs run in f32; amax/amin follow their input (exact in any dtype).
#include <algorithm>
#include <cmath>
#include <limits>

#include "autograd/autocast.h"
#include "autograd/functions/internal.h"

namespace headroom {

namespace detail {

std::vector<int64_t> reduction_dims(const Tensor& x, const std::vector<int64_t>& dims, const char* op) {
  std::vector<int64_t> out;
  if (dims.empty()) {
    for (int64_t d = 0; d < x.dim(); ++d) out.push_back(d);
    return out;
  }
  for (int64_t d : dims) out.push_back(wrap_dim(d, x.dim(), op));
  std::sort(out.begin(), out.end());
  HR_CHECK(std::adjacent_find(out.begin(), out.end()) == out.end(), ValueError, op,
           ": a dim appears twice in the reduction dims");
  return out;
}

Shape reduced_shape(const Shape& shape, const std::vector<int64_t>& dims, bool keepdim) {
  Shape out;
  for (int64_t d = 0; d < static_cast<int64_t>(shape.size()); ++d) {
    bool r = std::find(dims.begin(), dims.end(), d) != dims.end();
    if (!r) out.push_back(shape[static_cast<size_t>(d)]);
    else if (keepdim) out.push_back(1);
  }
  return out;
}

Tensor reduce_raw(ReduceOp op, const Tensor& x, const std::vector<int64_t>& dims_in, bool keepdim) {
  const char* name = reduce_op_name(op);
  std::vector<int64_t> dims = reduction_dims(x, dims_in, name);
  Shape keep = reduced_shape(x.shape(), dims, true);
  DType out_dtype = x.dtype();
  Tensor in = x;
  if (op == ReduceOp::argmax || op == ReduceOp::argmin) {
    out_dtype = DType::i64;
  } else if (op == ReduceOp::sum && !is_floating(x.dtype())) {
    in = cast_raw(x, DType::i64);
    out_dtype = DType::i64;
  } else if (op == ReduceOp::mean) {
    check_floating("mean", x);
  }
  for (int64_t d : dims)
    HR_CHECK(x.size(d) > 0 || op == ReduceOp::sum || op == ReduceOp::mean, ValueError, name,
             ": cannot reduce over dim ", d, " of size 0 in shape ", shape_str(x.shape()));
  Tensor out = Tensor::empty(keep, TensorOptions().dtype(out_dtype).device(x.device()));
  if (x.numel() == 0) {
    backend_for(x.device()).fill(out, op == ReduceOp::mean ? std::nan("") : 0.0);
  } else if (out.numel() > 0) {
    backend_for(x.device()).reduce(op, in, out);
  }
  if (!keepdim)
    out = out.as_strided(reduced_shape(x.shape(), dims, false),
                         contiguous_strides(reduced_shape(x.shape(), dims, false)), 0);
  return out;
}

}  // namespace detail

using namespace detail;

namespace {
// g reshaped to the keepdim shape, then broadcast back to the input's shape.
Tensor expand_back(const Tensor& g, const Shape& in_shape, const std::vector<int64_t>& dims) {
  return g.reshape(reduced_shape(in_shape, dims, true)).expand(in_shape);
}
}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims_in, bool keepdim) {
  if (DType f32; autocast_target(AutocastOp::sum, {&x}, &f32)) return sum(autocast_cast(x, f32), dims_in, keepdim);
  Tensor out = reduce_raw(ReduceOp::sum, x, dims_in, keepdim);
  if (needs_grad({x})) {
    std::vector<int64_t> dims = reduction_dims(x, dims_in, "sum");
    Shape shape = x.shape();
    record("sum", out, {x},
           [shape, dims](const Tensor& g) -> std::vector<Tensor> { return {expand_back(g, shape, dims)}; });
  }
  return out;
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims_in, bool keepdim) {
  if (DType f32; autocast_target(AutocastOp::mean, {&x}, &f32)) return mean(autocast_cast(x, f32), dims_in, keepdim);
  Tensor out = reduce_raw(ReduceOp::mean, x, dims_in, keepdim);
  if (needs_grad({x})) {
    std::vector<int64_t> dims = reduction_dims(x, dims_in, "mean");
    Shape shape = x.shape();
    int64_t count = 1;
    for (int64_t d : dims) count *= shape[static_cast<size_t>(d)];
    record("mean", out, {x}, [shape, dims, count](const Tensor& g) -> std::vector<Tensor> {
      // In f32 at least: count as an f16 scalar is inf past 65504, which zeroed the gradient.
      Tensor gf = cast(g, promote_types(g.dtype(), DType::f32));
      return {expand_back(cast(gf / static_cast<double>(count), g.dtype()), shape, dims)};
    });
  }
  return out;
}

namespace {
// Gradient of amax/amin: shared equally among the elements that equal the extremum.
Tensor extreme_reduce(ReduceOp op, const char* name, const Tensor& x, const std::vector<int64_t>& dims_in,
                      bool keepdim) {
  Tensor out = reduce_raw(op, x, dims_in, keepdim);
  if (needs_grad({x})) {
    std::vector<int64_t> dims = reduction_dims(x, dims_in, name);
    SavedTensor sx(x, name), so(out, name);
    Shape shape = x.shape();
    record(name, out, {x}, [sx, so, shape, dims](const Tensor& g) -> std::vector<Tensor> {
      Tensor hit = cast_raw(eq(sx.unpack(), expand_back(so.unpack(), shape, dims)), g.dtype());
      Tensor count = sum(hit, dims, true);
      return {expand_back(g, shape, dims) * hit / count};
    });
  }
  return out;
}
}  // namespace

Tensor amax(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return extreme_reduce(ReduceOp::max, "amax", x, dims, keepdim);
}
Tensor amin(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return extreme_reduce(ReduceOp::min, "amin", x, dims, keepdim);
}
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) { return reduce_raw(ReduceOp::argmax, x, {dim}, keepdim); }
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim) { return reduce_raw(ReduceOp::argmin, x, {dim}, keepdim); }

Tensor var(const Tensor& x, const std::vector<int64_t>& dims_in, int64_t correction, bool keepdim) {
  check_floating("var", x);
  std::vector<int64_t> dims = reduction_dims(x, dims_in, "var");
  int64_t count = 1;
  for (int64_t d : dims) count *= x.size(d);
  HR_CHECK(count - correction > 0, ValueError, "var: ", count, " elements with correction ", correction,
           " leave no degrees of freedom");
  // 16-bit x is worked in f32 and the result rounded back: the sum of squares of more than a few
  // ten thousand f16 values overflows 65504, and so does the divisor as an f16 scalar.
  if (x.dtype() == DType::f16 || x.dtype() == DType::bf16)
    return cast(var(cast(x, DType::f32), dims, correction, keepdim), x.dtype());
  Tensor centered = x - mean(x, dims, true);
  return sum(centered * centered, dims, keepdim) / static_cast<double>(count - correction);
}

Tensor norm(const Tensor& x, double p, const std::vector<int64_t>& dims_in, bool keepdim) {
  HR_CHECK(is_floating(x.dtype()), DTypeError, "norm: expected a floating tensor, got ", describe(x));
  HR_CHECK(p > 0 || p == -std::numeric_limits<double>::infinity(), ValueError, "norm: p must be > 0, inf or -inf, got ",
           p);
  std::vector<int64_t> dims = reduction_dims(x, dims_in, "norm");  // range and duplicates
  if (x.dtype() == DType::f16 || x.dtype() == DType::bf16)         // sums of 16-bit squares overflow
    return cast(norm(cast(x, DType::f32), p, dims, keepdim), x.dtype());
  if (std::isinf(p)) return p > 0 ? amax(abs(x), dims, keepdim) : amin(abs(x), dims, keepdim);
  if (p == 1) return sum(abs(x), dims, keepdim);
  Tensor s = sum(p == 2 ? square(x) : pow(abs(x), p), dims, keepdim);
  // s^(1/p) has an infinite derivative at s = 0: take the root of 1 there and select 0, so
  // that the gradient is 0 (where() sends none to the unselected branch), not 0 * inf = NaN.
  Tensor zero = eq(s, scalar_like(s, 0.0));
  Tensor safe = where(zero, scalar_like(s, 1.0), s);
  Tensor root = p == 2 ? sqrt(safe) : pow(safe, 1.0 / p);
  return where(zero, scalar_like(s, 0.0), root);
}

Tensor Tensor::norm(double p) const { return headroom::norm(*this, p); }
Tensor Tensor::norm(double p, const std::vector<int64_t>& dims, bool keepdim) const {
  return headroom::norm(*this, p, dims, keepdim);
}

Tensor Tensor::sum() const { return headroom::sum(*this); }
Tensor Tensor::sum(const std::vector<int64_t>& dims, bool keepdim) const { return headroom::sum(*this, dims, keepdim); }
Tensor Tensor::mean() const { return headroom::mean(*this); }
Tensor Tensor::mean(const std::vector<int64_t>& dims, bool keepdim) const {
  return headroom::mean(*this, dims, keepdim);
}
Tensor Tensor::max() const { return amax(*this); }
Tensor Tensor::max(int64_t dim, bool keepdim) const { return amax(*this, {dim}, keepdim); }
Tensor Tensor::argmax(int64_t dim, bool keepdim) const { return headroom::argmax(*this, dim, keepdim); }
Tensor Tensor::var(const std::vector<int64_t>& dims, int64_t correction, bool keepdim) const {
  return headroom::var(*this, dims, correction, keepdim);
}

}  // namespace headroom
