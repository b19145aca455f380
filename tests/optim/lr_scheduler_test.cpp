// The schedules' lr sequences, step by step, and that each step() sets the optimizer's lr.
#include <cmath>
#include <numbers>

#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

Tensor param() { return Tensor::zeros({1}, TensorOptions().requires_grad(true)); }

std::vector<double> run(optim::LRScheduler& sched, optim::Optimizer& opt, int steps) {
  std::vector<double> lrs = {opt.lr()};
  for (int i = 0; i < steps; ++i) {
    sched.step();
    EXPECT_DOUBLE_EQ(sched.last_lr(), opt.lr());
    lrs.push_back(opt.lr());
  }
  return lrs;
}

void expect_sequence(const std::vector<double>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12) << "step " << i;
}

TEST(StepLR, DecaysEveryStepSize) {
  optim::SGD opt({param()}, 1.0);
  optim::StepLR sched(opt, 3, 0.5);
  expect_sequence(run(sched, opt, 7), {1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25});
  EXPECT_EQ(sched.last_step(), 7);
  EXPECT_EQ(sched.base_lr(), 1.0);
  EXPECT_THROW_WITH(optim::StepLR(opt, 0), ValueError, "step_size must be positive");
}

TEST(CosineWithWarmup, WarmsUpThenFollowsTheCosineToMinLr) {
  optim::AdamW opt({param()}, 1.0);
  optim::CosineWithWarmup sched(opt, 4, 12, 0.1);
  const double q = 0.1 + 0.45 * (1 + std::cos(std::numbers::pi / 4));       // a quarter of the way
  const double tq = 0.1 + 0.45 * (1 + std::cos(3 * std::numbers::pi / 4));  // three quarters
  expect_sequence(run(sched, opt, 14), {0.0, 0.25, 0.5, 0.75, 1.0,          // warm-up
                                        0.1 + 0.45 * (1 + std::cos(std::numbers::pi / 8)), q,
                                        0.1 + 0.45 * (1 + std::cos(3 * std::numbers::pi / 8)), 0.55,
                                        0.1 + 0.45 * (1 + std::cos(5 * std::numbers::pi / 8)), tq,
                                        0.1 + 0.45 * (1 + std::cos(7 * std::numbers::pi / 8)), 0.1,  // total
                                        0.1, 0.1});
  EXPECT_DOUBLE_EQ(sched.lr_at(8), 0.55);
  // No warm-up: starts at the base lr.
  optim::SGD opt2({param()}, 2.0);
  optim::CosineWithWarmup plain(opt2, 0, 10);
  EXPECT_EQ(opt2.lr(), 2.0);
  EXPECT_NEAR(plain.lr_at(5), 1.0, 1e-12);
  EXPECT_NEAR(plain.lr_at(10), 0.0, 1e-12);
  EXPECT_THROW_WITH(optim::CosineWithWarmup(opt2, 10, 10), ValueError, "warmup_steps < total_steps");
  EXPECT_THROW_WITH(optim::CosineWithWarmup(opt2, 1, 10, 5.0), ValueError, "min_lr must be in");
}

}  // namespace
}  // namespace headroom
