// gradcheck: compares the gradients autograd computes with central finite differences.
//
// For a function f of tensors, it draws a random projection v of f's output, takes
// L = sum(f(x) * v), and checks dL/dx from backward against (L(x + eps e_j) - L(x - eps e_j)) /
// (2 eps) for every element j of every input that requires grad. Inputs should be f64 (the
// differences are meaningless in f32) and small (two evaluations per element). Inputs may be
// non-contiguous views: elements are perturbed where they live.
//
//   auto r = gradcheck([](const std::vector<Tensor>& in) { return in[0] * in[1]; }, {a, b});
//   EXPECT_TRUE(r.ok) << r.message;
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace headroom {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-5;
  double rtol = 1e-3;
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0;
  std::string message;  // the first mismatch: input, element, analytical and numerical values
};

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                          const std::vector<Tensor>& inputs, const GradcheckOptions& options = {});

}  // namespace headroom
