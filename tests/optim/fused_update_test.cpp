// The fused optimizer updates (Backend::adam_update / sgd_update through optim/fused.h) against
// the generic path of Tensor ops, in units of f32 ulps rather than a loose tolerance.
//
// The step's constants -- 1 - beta1, 1 - beta2, the step size lr / bias_correction1, ... -- must
// be worked out in double and rounded once, as the generic path does (its scalars are doubles
// rounded to the parameter's dtype). 1 - beta2 taken in f32 from beta2 already rounded to f32 is
// 1 - 0.999f = 0.00099998713, not 0.001: Adam's first step then came out 6.7e-6 too large and
// the second moment ~1.3e-5 too small, hundreds of ulps.
//
// HEADROOM_TEST_TOL_REPORT=1 prints the ulps each comparison measured.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>

#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

// |a - b| in f32 ulps of the larger magnitude, or of `floor` where both are smaller (a sum of
// terms of size ~floor that cancels carries their rounding, not its own), over all elements.
double max_ulps(const Tensor& a, const Tensor& b, float floor = 0) {
  const std::vector<float> va = a.to_vector<float>(), vb = b.to_vector<float>();
  double worst = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    const float big = std::max({std::abs(va[i]), std::abs(vb[i]), floor});
    const double ulp = static_cast<double>(std::nextafter(big, INFINITY)) - static_cast<double>(big);
    worst = std::max(worst, std::abs(static_cast<double>(va[i]) - static_cast<double>(vb[i])) / ulp);
  }
  return worst;
}

void report(const std::string& what, double ulps) {
  if (std::getenv("HEADROOM_TEST_TOL_REPORT")) std::printf("  [ulps] %s: %.3g\n", what.c_str(), ulps);
}

using Make = std::function<std::unique_ptr<optim::Optimizer>(std::vector<Tensor>)>;

// One Adam step from p = 0 with g = 1, lr = 1, eps = 0, no weight decay: m_hat = v_hat = 1, so
// the step is exactly 1 and p = -1.
TEST(FusedUpdate, FirstAdamStepFromUnitGradientIsExactlyOne) {
  const std::vector<std::pair<const char*, Make>> makers = {
      {"adamw",
       [](std::vector<Tensor> p) { return std::make_unique<optim::AdamW>(std::move(p), 1.0, 0.9, 0.999, 0.0, 0.0); }},
      {"adam",
       [](std::vector<Tensor> p) { return std::make_unique<optim::Adam>(std::move(p), 1.0, 0.9, 0.999, 0.0, 0.0); }}};
  for (const auto& [name, make] : makers)
    for (bool fused : {true, false})
      for (DType dt : {DType::f32, DType::f64}) {
        SCOPED_TRACE(str_cat(name, fused ? " fused " : " generic ", dtype_name(dt)));
        Tensor p = Tensor::zeros({4}, TensorOptions().dtype(dt).requires_grad(true));
        auto opt = make({p});
        opt->set_fused(fused);
        p.set_grad(Tensor::ones({4}, dt));
        opt->step();
        const std::vector<double> v = p.to_vector<double>();
        // One ulp of 1 in f32 (1.2e-7): the constants are rounded to f32 once each.
        const double tol = dt == DType::f32 ? 1.2e-7 : 1e-15;
        for (double x : v) EXPECT_NEAR(x, -1.0, tol);
        if (std::getenv("HEADROOM_TEST_TOL_REPORT"))
          std::printf("  [ulps] %s %s %s: step %.9g\n", name, fused ? "fused" : "generic", dtype_name(dt), -v[0]);
      }
}

// Fused and generic paths, f32 parameters in [1, 2) (away from zero, so ulps measure relative
// error), five steps with random gradients; parameters and state compared in ulps.
TEST(FusedUpdate, FusedAndGenericAgreeWithinAFewUlps) {
  const std::vector<std::pair<const char*, Make>> makers = {
      {"adam", [](std::vector<Tensor> p) { return std::make_unique<optim::Adam>(std::move(p), 0.1); }},
      {"adam l2",
       [](std::vector<Tensor> p) { return std::make_unique<optim::Adam>(std::move(p), 0.1, 0.9, 0.999, 1e-8, 0.01); }},
      {"adamw",
       [](std::vector<Tensor> p) { return std::make_unique<optim::AdamW>(std::move(p), 0.1, 0.9, 0.999, 1e-8, 0.1); }},
      {"adamw betas",
       [](std::vector<Tensor> p) { return std::make_unique<optim::AdamW>(std::move(p), 0.05, 0.8, 0.95, 1e-6, 0.1); }},
      {"sgd", [](std::vector<Tensor> p) { return std::make_unique<optim::SGD>(std::move(p), 0.1); }},
      {"sgd momentum",
       [](std::vector<Tensor> p) { return std::make_unique<optim::SGD>(std::move(p), 0.1, 0.9, 0.01); }},
      {"sgd nesterov",
       [](std::vector<Tensor> p) { return std::make_unique<optim::SGD>(std::move(p), 0.05, 0.9, 0.01, true); }}};
  for (const auto& [name, make] : makers) {
    SCOPED_TRACE(name);
    manual_seed(31);
    const int64_t n = 40000;  // past the parallel grain
    Tensor init = Tensor::rand({n}) + 1.0;
    Tensor a = init.clone().set_requires_grad(true), b = init.clone().set_requires_grad(true);
    auto fused = make({a}), generic = make({b});
    generic->set_fused(false);
    for (int s = 0; s < 5; ++s) {
      Tensor g = Tensor::randn({n});
      a.set_grad(g);
      b.set_grad(g.clone());
      fused->step();
      generic->step();
    }
    const double p_ulps = max_ulps(a, b);
    report(str_cat(name, " parameter"), p_ulps);
    EXPECT_LE(p_ulps, 4) << "parameter";
    if (auto* fa = dynamic_cast<optim::Adam*>(fused.get())) {
      auto* ga = dynamic_cast<optim::Adam*>(generic.get());
      const double m_ulps = max_ulps(fa->exp_avg(0), ga->exp_avg(0), 0.1f);
      const double v_ulps = max_ulps(fa->exp_avg_sq(0), ga->exp_avg_sq(0), 1e-3f);
      report(str_cat(name, " exp_avg"), m_ulps);
      report(str_cat(name, " exp_avg_sq"), v_ulps);
      // Each step rounds the moments a few times; five steps of it.
      EXPECT_LE(m_ulps, 4) << "exp_avg";
      EXPECT_LE(v_ulps, 4) << "exp_avg_sq";
    } else if (auto* fs = dynamic_cast<optim::SGD*>(fused.get()); fs->momentum_buffer(0).defined()) {
      auto* gs = dynamic_cast<optim::SGD*>(generic.get());
      const double b_ulps = max_ulps(fs->momentum_buffer(0), gs->momentum_buffer(0), 1.0f);
      report(str_cat(name, " momentum buffer"), b_ulps);
      EXPECT_LE(b_ulps, 4) << "momentum buffer";
    }
  }
}

}  // namespace
}  // namespace headroom
