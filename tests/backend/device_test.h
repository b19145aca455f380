// One test body, every device: the fixture and helpers of the backend tests (tests/backend/).
//
// The same test bodies make two programs (tests/CMakeLists.txt): test_backend, whose
// device_test.cpp is compiled with HEADROOM_TEST_DEVICE="cpu", and test_backend_cuda, with
// "cuda" (the bodies themselves never name a device, so they compile once). A suite is
// instantiated over {that device} x {f32, f16, bf16, f64}, so a test reads as
// Unary.Exp/cpu_f16 or Unary.Exp/cuda_bf16, and on a machine without a GPU the cuda instances
// skip in SetUp (GTEST_SKIP), which ctest reports as skipped, not failed.
//
// Each test makes its inputs in f64 on the cpu from a fixed seed, computes a reference with the
// public ops in f64 on the cpu, runs the op under test on the inputs cast to the test dtype and
// moved to the test device, and compares the result brought back in f64. The reference sees the
// inputs *after* rounding to the test dtype (ref_in), so the comparison measures what the op
// itself adds -- output rounding and accumulation in a narrower type -- and not the rounding
// of its inputs, which would otherwise swamp the tolerance in f16/bf16. Backward: the inputs
// require grad, sum(out * w) with a fixed random w (also rounded) is differentiated, and every
// input's gradient is compared the same way.
//
// Tolerances (Note [tolerance]): all_close's rule with atol = default_atol(dtype) * abs *
// max|ref| and rtol = default_rtol(dtype) * rel. The absolute part scales with the
// reference's largest element because an op's rounding errors scale with the size of the
// values it works on, not with each output element: a softmax gradient y (dy - sum(dy y))
// cancels to small values whose error is that of dy; a sum of n unit terms is ~sqrt(n)
// large and so is its error. abs and rel are per-op factors (Tol) that each test states and
// justifies; acc_tol(n) is the factor for an n-term accumulation. The dtype's smallest
// subnormal step is added to atol: a result below it is not representable (a mean's gradient
// over 1M elements in f16), and the cpu flushes f32 subnormals to zero where a GPU may not.
// HEADROOM_TEST_TOL_REPORT=1 prints the factor each comparison needed (for tuning), and
// HEADROOM_TEST_SEED=n draws other inputs (the tolerances hold for seeds 1-8 and the default).
#pragma once

#include <cmath>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "test_util.h"

namespace headroom::testing {

// The device this binary tests (HEADROOM_TEST_DEVICE).
Device test_device();
// The awkward sizes every op family is run at (besides a large one of its own).
inline const std::vector<int64_t> kSizes = {1, 127, 128, 255, 256};

// Note [tolerance]: factors on default_atol (times the reference's scale) and default_rtol.
struct Tol {
  double abs = 1;
  double rel = 1;
  // The tolerance is at least this dtype's. (Statistics saved for backward are f64 for f64
  // data -- Note [statistics dtype] in engine/backend.h -- so no op needs f32's in f64.)
  DType at_least = DType::f64;
  // atol scales with max(largest |reference| element, this): for results that cancel to
  // values far smaller than the numbers that made them (a parameter stepped near zero).
  double scale_floor = 0;
  Tol times(double k) const { return {abs * k, rel * k, at_least, scale_floor}; }
  Tol scale_at_least(double s) const { return {abs, rel, at_least, s}; }
};

// An n-term accumulation: rounding errors add up like a random walk, so their size relative to
// the result grows like sqrt(n) times the accumulator's unit roundoff. The CPU sums in
// f64; a GPU kernel in f32 (whatever the storage dtype), which leaves ~6e-8 * sqrt(n) of the
// result -- 0.006 sqrt(n) in units of f32's default_atol (1e-5). For f16/bf16 the same
// term is far below their default_atol (1e-3, 1e-2), but their rounded intermediates (a saved
// f16 output feeding a backward sum) err by their own roundoff per term, which grows the same
// way: 1 + sqrt(n) / 16 covers both with a margin of a few.
inline Tol acc_tol(int64_t n, double k = 1) {
  const double f = 1 + std::sqrt(static_cast<double>(n)) / 16;
  return {f * k, k, DType::f64, 0};
}

using OpFn = std::function<Tensor(const std::vector<Tensor>&)>;

class DeviceTest : public ::testing::TestWithParam<std::tuple<Device, DType>> {
 protected:
  void SetUp() override;

  Device device() const { return std::get<0>(GetParam()); }
  DType dtype() const { return std::get<1>(GetParam()); }
  bool half() const { return dtype() == DType::f16 || dtype() == DType::bf16; }
  TensorOptions opts() const { return TensorOptions().dtype(dtype()).device(device()); }

  // f64 inputs on the cpu from the global generator (manual_seed in SetUp): bell-shaped with
  // mean 0 and variance 1 (a centred sum of four uniforms, |x| <= 3.47) * scale + shift, and
  // uniform in (lo, hi).
  static Tensor randn(const Shape& shape, double scale = 1, double shift = 0);
  static Tensor uniform(const Shape& shape, double lo, double hi);
  // Uniform but at least `gap` away from 0 on either side (denominators, reciprocals).
  static Tensor away_from_zero(const Shape& shape, double gap, double hi);
  // i64 class indices in [0, n).
  static Tensor randint(const Shape& shape, int64_t n);

  // What the reference sees: x rounded to the test dtype, as f64 on the cpu (a fresh leaf with
  // storage of its own, so in-place updates reach neither x nor the other side).
  // Integer and bool tensors are passed through unchanged.
  Tensor ref_in(const Tensor& x, bool requires_grad = false) const;
  // What the op under test sees: x in the test dtype on the test device (a fresh leaf, ditto).
  // Integer and bool tensors keep their dtype and only move.
  Tensor dev_in(const Tensor& x, bool requires_grad = false) const;
  // Any tensor brought back as f64 on the cpu.
  static Tensor host64(const Tensor& t);

  // Note [tolerance]. Also fails when `got` is not on the test device.
  ::testing::AssertionResult close(const Tensor& got, const Tensor& ref, Tol tol = {}) const;
  // Element-for-element equality (NaN equals NaN), after bringing both back to f64 on the cpu.
  static ::testing::AssertionResult same(const Tensor& got, const Tensor& want);

  // The common test: fn on device inputs against ref_fn (fn when null) on reference inputs,
  // forward with fwd, then (when backward) every float input's gradient with bwd. Inputs are
  // f64 (or integer) cpu tensors; grad_mask, when given, says which float inputs get
  // gradients. The output's dtype must be the test dtype when the reference's is f64, and
  // equal to the reference's otherwise.
  void check_op(const std::string& what, const OpFn& fn, const std::vector<Tensor>& inputs, Tol fwd = {}, Tol bwd = {},
                bool backward = true, const OpFn& ref_fn = nullptr, const std::vector<bool>& grad_mask = {});
};

std::string device_dtype_name(const ::testing::TestParamInfo<std::tuple<Device, DType>>& info);
std::string device_only_name(const ::testing::TestParamInfo<std::tuple<Device, DType>>& info);

}  // namespace headroom::testing

// Instantiates Suite over {the tested device} x {f32, f16, bf16, f64}: Suite.Test/cpu_f16.
#define HR_DEVICE_DTYPE_SUITE(Suite)                                                                               \
  INSTANTIATE_TEST_SUITE_P(, Suite,                                                                                \
                           ::testing::Combine(::testing::Values(::headroom::testing::test_device()),               \
                                              ::testing::Values(::headroom::DType::f32, ::headroom::DType::f16,    \
                                                                ::headroom::DType::bf16, ::headroom::DType::f64)), \
                           ::headroom::testing::device_dtype_name)

// For tests that loop over dtypes themselves (casts, integer ops): Suite.Test/cpu. dtype() is
// f64 there and unused.
#define HR_DEVICE_SUITE(Suite)                                                                       \
  INSTANTIATE_TEST_SUITE_P(, Suite,                                                                  \
                           ::testing::Combine(::testing::Values(::headroom::testing::test_device()), \
                                              ::testing::Values(::headroom::DType::f64)),            \
                           ::headroom::testing::device_only_name)
