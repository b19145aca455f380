#include "test_util.h"

#include <cmath>

namespace headroom::testing {

double default_atol(DType dtype) {
  switch (dtype) {
    case DType::f64: return 1e-10;
    case DType::f32: return 1e-5;
    case DType::f16: return 1e-3;
    case DType::bf16: return 1e-2;
    default: return 0;
  }
}
double default_rtol(DType dtype) {
  switch (dtype) {
    case DType::f64: return 1e-8;
    case DType::f32: return 1e-4;
    case DType::f16: return 1e-2;
    case DType::bf16: return 2e-2;
    default: return 0;
  }
}

::testing::AssertionResult all_close(const Tensor& a, const Tensor& b, double atol, double rtol) {
  if (a.shape() != b.shape())
    return ::testing::AssertionFailure() << "shapes differ: " << shape_str(a.shape()) << " vs " << shape_str(b.shape());
  DType coarse = dtype_size(a.dtype()) <= dtype_size(b.dtype()) ? a.dtype() : b.dtype();
  if (atol < 0) atol = default_atol(coarse);
  if (rtol < 0) rtol = default_rtol(coarse);
  std::vector<double> va = a.to_vector<double>(), vb = b.to_vector<double>();
  double worst = -1;
  size_t at = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    double diff = std::abs(va[i] - vb[i]);
    bool nan_mismatch = std::isnan(va[i]) != std::isnan(vb[i]);
    double excess = nan_mismatch ? INFINITY : diff - (atol + rtol * std::abs(vb[i]));
    if (excess > worst) {
      worst = excess;
      at = i;
    }
  }
  if (worst > 0)
    return ::testing::AssertionFailure() << "max excess at element " << at << ": " << va[at] << " vs " << vb[at]
                                         << " (atol " << atol << ", rtol " << rtol << ")";
  return ::testing::AssertionSuccess();
}

Tensor tokens(const Shape& shape, int64_t vocab, uint64_t seed) {
  std::vector<int64_t> v(static_cast<size_t>(shape_numel(shape)));
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = static_cast<int64_t>((i * 7919 + seed * 104729) % static_cast<uint64_t>(vocab));
  return Tensor::from_vector(v, shape, TensorOptions().dtype(DType::i64));
}

Tensor rand_f64(const Shape& shape, bool requires_grad) {
  Tensor t = Tensor::randn(shape, TensorOptions().dtype(DType::f64));
  if (requires_grad) t.set_requires_grad(true);
  return t;
}

::testing::AssertionResult grad_ok(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                                   const std::vector<Tensor>& inputs, const GradcheckOptions& options) {
  GradcheckResult r = gradcheck(fn, inputs, options);
  if (r.ok) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << r.message;
}

}  // namespace headroom::testing
