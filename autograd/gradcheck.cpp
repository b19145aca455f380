#include "autograd/gradcheck.h"

#include <cmath>

#include "autograd/engine.h"
#include "autograd/functions.h"
#include "autograd/grad_mode.h"

namespace headroom {

namespace {
// Pointer to element `flat` (row-major over the shape) of a CPU f64 tensor, honouring strides.
double* element(const Tensor& t, int64_t flat) {
  int64_t off = 0;
  for (int64_t d = t.dim() - 1; d >= 0; --d) {
    off += (flat % t.size(d)) * t.stride(d);
    flat /= t.size(d);
  }
  return static_cast<double*>(t.raw_data()) + off;
}
}  // namespace

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                          const std::vector<Tensor>& inputs, const GradcheckOptions& options) {
  GradcheckResult result;
  std::vector<Tensor> wrt;
  std::vector<size_t> wrt_index;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].defined() || !inputs[i].requires_grad()) continue;
    HR_CHECK(inputs[i].dtype() == DType::f64 && inputs[i].device().is_cpu(), DTypeError, "gradcheck: input ", i,
             " must be an f64 cpu tensor, got ", describe(inputs[i]));
    wrt.push_back(inputs[i]);
    wrt_index.push_back(i);
  }
  HR_CHECK(!wrt.empty(), ValueError, "gradcheck: no input requires grad");

  Tensor out = fn(inputs);
  HR_CHECK(out.requires_grad(), AutogradError, "gradcheck: the function's output does not require grad");
  Tensor v = Tensor::randn(out.shape(), TensorOptions().dtype(out.dtype()));
  std::vector<Tensor> analytical = grad({out}, wrt, {v});

  auto loss = [&]() {
    NoGradGuard no_grad;
    Tensor y = fn(inputs);
    return (cast(y, DType::f64) * cast(v, DType::f64)).sum().item<double>();
  };

  for (size_t k = 0; k < wrt.size(); ++k) {
    const Tensor& x = wrt[k];
    Tensor a = analytical[k].defined() ? cast(analytical[k], DType::f64).contiguous()
                                       : Tensor::zeros(x.shape(), TensorOptions().dtype(DType::f64));
    const double* ap = a.data<double>();
    for (int64_t j = 0; j < x.numel(); ++j) {
      double* p = element(x, j);
      const double saved = *p;
      *p = saved + options.eps;
      double plus = loss();
      *p = saved - options.eps;
      double minus = loss();
      *p = saved;
      double numerical = (plus - minus) / (2 * options.eps);
      double err = std::abs(ap[j] - numerical);
      result.max_abs_error = std::max(result.max_abs_error, err);
      if (result.ok && !(err <= options.atol + options.rtol * std::abs(numerical))) {
        result.ok = false;
        result.message = str_cat("gradient mismatch for input ", wrt_index[k], " ", describe(x), " at element ", j,
                                 ": analytical ", ap[j], ", numerical ", numerical, " (abs error ", err, ")");
      }
    }
  }
  return result;
}

}  // namespace headroom
