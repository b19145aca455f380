// Single-pass optimizer updates for CPU tensors (internal to optim/).
//
// Why: written with Tensor ops, an Adam step is about a dozen passes over each parameter
// (scale, add, square, sqrt, divide, ...) plus three parameter-sized temporaries; it cost
// more than the forward and backward of a small MLP together. These loops read p, g and the
// state once and write them once, in the parameter's dtype, computing in f32 (f64 for f64)
// -- the same formulas as the generic path in sgd.cpp / adam.cpp, which every other case
// (another device, mixed dtypes, a strided parameter) still takes. Each returns false when it
// does not apply. When the Backend interface grows fused optimizer ops, this moves to
// kernels/cpu/ behind it, and CUDA gets the same single pass.
#pragma once

#include "engine/tensor.h"

namespace headroom::optim::detail {

// d = g + wd p; buf = first ? d : momentum buf + d (when momentum != 0);
// d = nesterov ? d + momentum buf : buf; p -= lr d. buf may be undefined when momentum == 0.
bool sgd_update_cpu(const Tensor& p, const Tensor& g, const Tensor& buf, bool first, double lr, double momentum,
                    double weight_decay, bool nesterov);

// decoupled: p *= 1 - lr wd, d = g; else d = g + wd p. m = b1 m + (1 - b1) d;
// v = b2 v + (1 - b2) d^2; p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps).
bool adam_update_cpu(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, double lr, double beta1,
                     double beta2, double eps, double weight_decay, bool decoupled, double bias_correction1,
                     double bias_correction2);

}  // namespace headroom::optim::detail
