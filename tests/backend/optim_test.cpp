// The optimizer updates on every device: SGD (plain, momentum, Nesterov with weight decay),
// Adam (with L2 decay) and AdamW, fused (one Backend pass per parameter: sgd_update,
// adam_update) and unfused (the generic path of in-place Tensor ops), against the same
// optimizer in f64 on the cpu taking its generic path -- the definition both must agree with.
//
// One optimizer holds a parameter of every size in kSizes and a 2^18-element one, and takes
// three steps with fixed random gradients (rounded to the dtype, the same on both sides);
// then every parameter and its state (momentum buffer, Adam's moments) is compared.
// Tolerance: each step rounds the parameter and the state in the dtype once more (and the
// unfused path rounds every intermediate): three steps of a few roundoffs, Tol{4, 2}.
#include <memory>

#include "device_test.h"
#include "optim/optim.h"

namespace headroom::testing {
namespace {

class Optim : public DeviceTest {
 protected:
  using Make = std::function<std::unique_ptr<optim::Optimizer>(std::vector<Tensor>)>;

  void run(const std::string& name, const Make& make) {
    std::vector<int64_t> sizes = kSizes;
    // 2^18: a thousand 256-thread blocks, a full wave of an H100 -- as large as an update
    // kernel's indexing needs, and the f16 generic path on the cpu costs 3x less than at 2^20.
    sizes.push_back(int64_t{1} << 18);
    std::vector<Tensor> init;
    for (int64_t n : sizes) init.push_back(randn({n}));
    // Gradients at least 0.3 in size: Adam's (1 - beta2) g^2 then stays a normal f16 number
    // (above 6.1e-5). Smaller ones underflow in f16 state (and eps = 1e-8 is 0 in f16), so the
    // step m / sqrt(v) is lost or infinite -- a property of f16 optimizer state on any device
    // (hence f32 master weights in mixed precision), not of a kernel.
    std::vector<std::vector<Tensor>> grads(3);
    for (auto& step : grads)
      for (int64_t n : sizes) step.push_back(away_from_zero({n}, 0.3, 3).to(dtype()));

    // Storage of their own on each side (ref_in, dev_in): the steps update them in place.
    std::vector<Tensor> ref_params, dev_params, dev_unfused;
    for (const Tensor& p : init) {
      ref_params.push_back(ref_in(p, true));
      dev_params.push_back(dev_in(p, true));
      dev_unfused.push_back(dev_in(p, true));
    }
    auto ref_opt = make(ref_params);
    ref_opt->set_fused(false);
    auto fused = make(dev_params);
    auto unfused = make(dev_unfused);
    unfused->set_fused(false);
    for (const auto& step : grads) {
      for (size_t i = 0; i < sizes.size(); ++i) {
        ref_params[i].set_grad(step[i].to(DType::f64));
        dev_params[i].set_grad(step[i].to(device()));
        dev_unfused[i].set_grad(step[i].to(device()));
      }
      ref_opt->step();
      fused->step();
      unfused->step();
    }
    // Parameters start at size ~1 and take steps of ~lr: a parameter that ends near zero
    // carries the rounding of those size-1 numbers, so atol scales with at least 1.
    const Tol tol = Tol{4, 2}.scale_at_least(1);
    for (size_t i = 0; i < sizes.size(); ++i) {
      SCOPED_TRACE(str_cat(name, " parameter of ", sizes[i]));
      EXPECT_TRUE(close(dev_params[i], ref_params[i], tol)) << "fused";
      EXPECT_TRUE(close(dev_unfused[i], ref_params[i], tol)) << "unfused";
      check_state(*ref_opt, *fused, i, tol, "fused");
      check_state(*ref_opt, *unfused, i, tol, "unfused");
    }
  }

  void check_state(optim::Optimizer& ref, optim::Optimizer& dev, size_t i, Tol tol, const char* what) {
    if (auto* r = dynamic_cast<optim::SGD*>(&ref)) {
      auto& d = dynamic_cast<optim::SGD&>(dev);
      EXPECT_EQ(r->momentum_buffer(i).defined(), d.momentum_buffer(i).defined()) << what;
      if (r->momentum_buffer(i).defined()) {
        EXPECT_TRUE(close(d.momentum_buffer(i), r->momentum_buffer(i), tol)) << what << " momentum buffer";
      }
    } else if (auto* ra = dynamic_cast<optim::Adam*>(&ref)) {
      auto& da = dynamic_cast<optim::Adam&>(dev);
      EXPECT_EQ(da.step_count(i), ra->step_count(i)) << what;
      EXPECT_TRUE(close(da.exp_avg(i), ra->exp_avg(i), tol)) << what << " exp_avg";
      EXPECT_TRUE(close(da.exp_avg_sq(i), ra->exp_avg_sq(i), tol)) << what << " exp_avg_sq";
    }
  }
};

TEST_P(Optim, SgdPlainMomentumNesterov) {
  run("sgd", [](std::vector<Tensor> p) { return std::make_unique<optim::SGD>(std::move(p), 0.1); });

  run("sgd momentum", [](std::vector<Tensor> p) { return std::make_unique<optim::SGD>(std::move(p), 0.1, 0.9); });

  run("sgd nesterov",
      [](std::vector<Tensor> p) { return std::make_unique<optim::SGD>(std::move(p), 0.05, 0.9, 0.01, true); });
}

TEST_P(Optim, AdamL2AndAdamW) {
  run("adam", [](std::vector<Tensor> p) { return std::make_unique<optim::Adam>(std::move(p), 0.01); });

  run("adam l2",
      [](std::vector<Tensor> p) { return std::make_unique<optim::Adam>(std::move(p), 0.01, 0.9, 0.999, 1e-8, 0.01); });

  run("adamw",
      [](std::vector<Tensor> p) { return std::make_unique<optim::AdamW>(std::move(p), 0.01, 0.9, 0.99, 1e-8, 0.1); });
}

HR_DEVICE_DTYPE_SUITE(Optim);

}  // namespace
}  // namespace headroom::testing
