// How an op records its gradient (STYLE.md: "each differentiable op computes its result and
// defines its backward closure in the same function, capturing only what backward needs").
//
//   Tensor mul(const Tensor& a, const Tensor& b) {
//     Tensor out = ...;                          // compute through the backend
//     if (needs_grad({a, b})) {
//       SavedTensor sa(a, "mul"), sb(b, "mul");  // saved only when a gradient is needed
//       record("mul", out, {a, b}, [sa, sb](const Tensor& g) -> std::vector<Tensor> {
//         return {g * sb.unpack(), g * sa.unpack()};
//       });
//     }
//     return out;
//   }
#pragma once

#include <initializer_list>

#include "autograd/autograd_meta.h"
#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "autograd/saved_tensor.h"

namespace headroom {

// True when grad mode is on and some (defined) input requires grad.
bool needs_grad(std::initializer_list<Tensor> inputs);
bool needs_grad(const std::vector<Tensor>& inputs);

// Makes `out` the output of a new node named `name` whose inputs are `inputs`.
void record(const char* name, const Tensor& out, std::initializer_list<Tensor> inputs, BackwardFn fn);
void record(const char* name, const Tensor& out, const std::vector<Tensor>& inputs, BackwardFn fn);

// Sums a broadcast gradient back to `shape` (the inverse of broadcasting to grad's shape).
Tensor sum_to(const Tensor& grad, const Shape& shape);

}  // namespace headroom
