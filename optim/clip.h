// Gradient clipping by the global L2 norm (torch.nn.utils.clip_grad_norm_).
//
// The total norm is sqrt(sum over all grads of sum(g^2)). Each tensor's sum of squares is
// computed on its own device in f32 (f64 for f64 grads) -- so f16/bf16 grads do not overflow
// in their own dtype -- and summed per device in f64; only one number per device crosses to
// the host. Parameters without a .grad are skipped.
#pragma once

#include <vector>

#include "engine/tensor.h"

namespace headroom::optim {

// The total L2 norm of the grads, without changing them (inf or nan if any grad holds one).
double grad_norm(const std::vector<Tensor>& params);

// Scales every grad by max_norm / (norm + 1e-6) when that is below 1; returns the total norm
// before clipping. A non-finite norm is returned as is and the grads are left alone (a
// GradScaler skips such a step anyway).
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm);

}  // namespace headroom::optim
