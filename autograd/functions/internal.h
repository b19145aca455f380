// Helpers shared by the files in autograd/functions: raw (history-free) versions of the
// elementwise ops, device checks and casts. Not part of the public API.
#pragma once

#include <initializer_list>
#include <string>

#include "autograd/function.h"
#include "autograd/functions.h"
#include "engine/backend.h"

namespace headroom::detail {

// Throws DeviceError naming `op` and every tensor's device unless all defined ones share one.
void check_same_device(const char* op, std::initializer_list<Tensor> tensors);
// Throws DTypeError naming `op` unless t is a float tensor.
void check_floating(const char* op, const Tensor& t, const char* what = "input");

Tensor empty_like(const Tensor& x);
Tensor empty_like(const Tensor& x, DType dtype);
// x in dtype, sharing x when it already is; no history.
Tensor cast_raw(const Tensor& x, DType dtype);
Tensor contiguous_raw(const Tensor& x);
// Elementwise ops without history: promote, broadcast, allocate, run the backend.
Tensor unary_raw(UnaryOp op, const Tensor& x);
Tensor binary_raw(BinaryOp op, const Tensor& a, const Tensor& b);
Tensor where_raw(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor reduce_raw(ReduceOp op, const Tensor& x, const std::vector<int64_t>& dims, bool keepdim);

// Normalised, sorted, de-duplicated dims; empty input means all dims.
std::vector<int64_t> reduction_dims(const Tensor& x, const std::vector<int64_t>& dims, const char* op);
// Shape of a reduction's result with keepdim, and without.
Shape reduced_shape(const Shape& shape, const std::vector<int64_t>& dims, bool keepdim);

}  // namespace headroom::detail
