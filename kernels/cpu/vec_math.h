// Vectorised float math shared by the CPU kernels, defined in elementwise.cpp (built so that the
// loops vectorise, Note [vectorised gelu]) and compiled for AVX-512, AVX2 and x86-64.
#pragma once

#include <cstdint>

namespace headroom::cpu {

// x[i] = e^(x[i] * scale - shift) for i < n, through exp_f32 (elementwise.cpp): within a few ulp
// of libm's expf; an exponent below -87 gives e^-87 (about 1.6e-38) instead of a smaller number
// or 0, one above 88 gives e^88; NaN stays NaN.
void exp_affine_f32(float* x, int64_t n, float scale, float shift);

// y[i] = e^(x[i] - shift) for i < n, exactly 0 where x[i] - shift < -87 (e^-87 is near the
// smallest normal float; below it libm's results are denormals, which the CPU kernels flush to
// zero anyway) so that a -inf input (a masked score) gives 0, as softmax needs; NaN stays NaN.
void exp_shifted_f32(const float* x, float* y, int64_t n, float shift);

}  // namespace headroom::cpu
