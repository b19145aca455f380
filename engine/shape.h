// Shapes, strides and the rules that combine them (broadcasting, dim wrapping).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace headroom {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape);  // "(4, 3)"
int64_t shape_numel(const Shape& shape);
Shape contiguous_strides(const Shape& shape);

// The broadcast of two shapes (numpy rules); throws ShapeError quoting both and naming `op`.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

// Wraps a possibly negative dim into [0, ndim); throws ValueError naming `op` when out of range.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);

}  // namespace headroom
