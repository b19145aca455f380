#include "engine/shape.h"

#include "engine/error.h"

namespace headroom {

std::string shape_str(const Shape& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

int64_t nonzero_dims_product(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return -1;
    if (d != 0 && __builtin_mul_overflow(n, d, &n)) return -1;
  }
  return n;
}

void check_shape(const Shape& shape, const char* op) {
  if (nonzero_dims_product(shape) >= 0) return;
  for (int64_t d : shape) HR_CHECK(d >= 0, ShapeError, op, ": negative dimension in shape ", shape_str(shape));
  throw ShapeError(str_cat(op, ": shape ", shape_str(shape),
                           " is too large: the product of its non-zero dims does not fit in an int64",
                           " (a zero dim does not excuse the others: their strides would overflow)"));
}

int64_t shape_numel(const Shape& shape) {
  const int64_t product = nonzero_dims_product(shape);
  if (product < 0) check_shape(shape, "shape_numel");  // throws, naming the shape
  for (int64_t d : shape)
    if (d == 0) return 0;
  return product;
}

Shape contiguous_strides(const Shape& shape) {
  check_shape(shape, "contiguous_strides");
  // Each stride is a product of some of the non-zero dims, so none can overflow now.
  Shape strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= shape[i] > 0 ? shape[i] : 1;
  }
  return strides;
}

Shape infer_shape(const Shape& shape, int64_t numel, const char* op) {
  Shape out = shape;
  int64_t infer = -1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      HR_CHECK(infer < 0, ShapeError, op, ": more than one -1 in shape ", shape_str(shape));
      infer = static_cast<int64_t>(i);
      out[i] = 1;  // a placeholder while the others are checked
    } else {
      HR_CHECK(out[i] >= 0, ShapeError, op, ": negative size in shape ", shape_str(shape));
    }
  }
  // The known dims must form a valid shape by themselves (Note [shape arithmetic]).
  const int64_t known = nonzero_dims_product(out);
  HR_CHECK(known >= 0, ShapeError, op, ": shape ", shape_str(shape),
           " is too large: the product of its non-zero dims does not fit in an int64");
  if (infer >= 0) {
    bool has_zero = false;
    for (size_t i = 0; i < out.size(); ++i)
      if (out[i] == 0) has_zero = true;
    HR_CHECK(!has_zero && numel % known == 0, ShapeError, op, ": cannot infer -1 in shape ", shape_str(shape), " for ",
             numel, " elements");
    out[static_cast<size_t>(infer)] = numel / known;
  }
  return out;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1)
      throw ShapeError(str_cat(op, ": cannot broadcast shapes ", shape_str(a), " and ", shape_str(b), " (dim ", i, ": ",
                               da, " vs ", db, ")"));
    out[i] = da == 1 ? db : da;
  }
  return out;
}

int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op) {
  int64_t lo = ndim == 0 ? -1 : -ndim, hi = ndim == 0 ? 0 : ndim - 1;
  if (dim < lo || dim > hi)
    throw ValueError(str_cat(op, ": dim ", dim, " is out of range for a tensor with ", ndim, " dims (expected ", lo,
                             " to ", hi, ")"));
  if (dim < 0) dim += ndim == 0 ? 1 : ndim;
  return dim;
}

}  // namespace headroom
