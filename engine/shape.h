// Shapes, strides and the rules that combine them (broadcasting, dim wrapping), with every
// product checked so that no shape, file header or reshape can wrap an int64 around.
//
// Note [shape arithmetic]: a shape is valid when every dim is >= 0 and the product of its
// non-zero dims fits in an int64. Then numel (that product, or 0 when a dim is 0), every
// contiguous stride (a product of some of those dims) and every partial product fit,
// whichever order the dims come in. A zero dim must not excuse the others: (0, 2^40, 2^40)
// holds no elements, but its first stride would be 2^80, so it is refused like (2^40, 2^40).
// shape_numel, contiguous_strides, infer_shape and every factory and view (as_strided)
// enforce the rule and throw ShapeError quoting the shape; byte sizes are checked on top of it
// where storage is made (at most 2^62 bytes, engine/tensor.cpp). File readers check the rule
// (and their own plausibility limits) themselves, so that they can throw IOError naming the
// file, the byte offset and the field.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace headroom {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape);  // "(4, 3)"

// The product of the non-zero dims of a shape whose dims are all >= 0, or -1 when it does
// not fit in an int64 or a dim is negative. Never throws: for readers that word the error.
int64_t nonzero_dims_product(const Shape& shape);

// Throws ShapeError naming `op` and the shape unless it is valid (Note [shape arithmetic]).
void check_shape(const Shape& shape, const char* op);

// Elements of a shape (1 for a 0-d shape); throws ShapeError for an invalid shape.
int64_t shape_numel(const Shape& shape);
// Row-major strides, a zero dim counting as 1; throws ShapeError for an invalid shape.
Shape contiguous_strides(const Shape& shape);

// `shape` with its one -1 (if any) replaced so that it holds `numel` elements; throws
// ShapeError naming `op` for two -1s, a negative size, a -1 that no size fits, or a result
// that is not a valid shape. (That it holds exactly numel elements is the caller's check.)
Shape infer_shape(const Shape& shape, int64_t numel, const char* op);

// The broadcast of two shapes (numpy rules); throws ShapeError quoting both and naming `op`.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

// Wraps a possibly negative dim into [0, ndim); throws ValueError naming `op` when out of range.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);

}  // namespace headroom
