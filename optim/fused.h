// Fused optimizer updates through the device's Backend (sgd_update, adam_update: one pass
// over each parameter and its state). Internal to optim/: each returns false when the fused
// form does not apply -- tensors on different devices, of different dtypes or shapes, or not
// contiguous -- and the optimizer then takes its generic path of Tensor ops, which is the
// definition both must agree with (tests/optim check that they do).
#pragma once

#include "engine/tensor.h"

namespace headroom::optim::detail {

// Whether sgd_update / adam_update would take these tensors (the test they start with).
bool sgd_applies(const Tensor& p, const Tensor& g, const Tensor& buf, double momentum);
bool adam_applies(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v);

bool sgd_update(const Tensor& p, const Tensor& g, const Tensor& buf, bool first, double lr, double momentum,
                double weight_decay, bool nesterov);

bool adam_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, double lr, double beta1,
                 double beta2, double eps, double weight_decay, bool decoupled, double bias_correction1,
                 double bias_correction2);

}  // namespace headroom::optim::detail
