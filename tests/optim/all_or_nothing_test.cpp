// Note [all-or-nothing step] (optim/optimizer.h) and Note [all-or-nothing split step]
// (optim/batch_split.h), case by case: each defect the outside review found, failed at the
// allocation that caused it, then retried. The broad check is the sweep (oom_sweep_test.cpp);
// these name the cases.
#include <memory>

#include "engine/caching_allocator.h"
#include "nn/nn.h"
#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

CachingAllocator& cpu_allocator() { return caching_allocator(Device::cpu()); }

// Two f32 parameters with fixed gradients.
struct TwoParams {
  Tensor a = Tensor::from_vector({0.5, -1.5, 2.0}, {3}, TensorOptions().requires_grad(true));
  Tensor b = Tensor::from_vector({1.0, 0.25}, {2}, TensorOptions().requires_grad(true));
  void set_grads() {
    a.set_grad(Tensor::from_vector({0.1, 0.2, -0.3}, {3}));
    b.set_grad(Tensor::from_vector({-1.0, 0.5}, {2}));
  }
  std::vector<Tensor> list() const { return {a, b}; }
};

// The number of allocations one call of fn makes.
int64_t allocations_of(const std::function<void()>& fn) {
  const int64_t before = cpu_allocator().stats().num_allocs;
  fn();
  return cpu_allocator().stats().num_allocs - before;
}

using MakeOpt = std::function<std::unique_ptr<optim::Optimizer>(const std::vector<Tensor>&)>;

// For every allocation k of the optimizer's first and second steps: fail it, check that nothing
// changed and the error says so, retry, and compare with a clean run bit for bit.
void expect_all_or_nothing(const MakeOpt& make, bool fused) {
  SCOPED_TRACE(fused ? "fused" : "unfused");
  // The clean run.
  TwoParams clean;
  auto clean_opt = make(clean.list());
  clean_opt->set_fused(fused);
  std::vector<std::vector<float>> after_a, after_b;
  std::vector<int64_t> allocs;
  for (int s = 0; s < 2; ++s) {
    clean.set_grads();
    allocs.push_back(allocations_of([&] { clean_opt->step(); }));
    after_a.push_back(clean.a.to_vector<float>());
    after_b.push_back(clean.b.to_vector<float>());
  }
  EXPECT_GT(allocs[0], 0);
  for (int s = 0; s < 2; ++s) {
    for (int64_t k = 1; k <= allocs[s]; ++k) {
      SCOPED_TRACE("step " + std::to_string(s + 1) + ", allocation " + std::to_string(k));
      TwoParams t;
      auto opt = make(t.list());
      opt->set_fused(fused);
      for (int w = 0; w < s; ++w) {
        t.set_grads();
        opt->step();
      }
      t.set_grads();
      const std::vector<float> a0 = t.a.to_vector<float>(), b0 = t.b.to_vector<float>();
      const auto state0 = opt->state_dict();
      const size_t bytes0 = opt->state_nbytes();
      cpu_allocator().inject_fault(FaultKind::allocation, k);
      EXPECT_THROW_WITH(opt->step(), OutOfMemoryError, "nothing was updated");
      cpu_allocator().clear_fault();
      EXPECT_EQ(t.a.to_vector<float>(), a0);
      EXPECT_EQ(t.b.to_vector<float>(), b0);
      EXPECT_EQ(opt->state_nbytes(), bytes0);  // no half-made state
      const auto state1 = opt->state_dict();
      ASSERT_EQ(state1.size(), state0.size());
      for (const auto& [name, v] : state0)
        EXPECT_EQ(state1.at(name).to_vector<double>(), v.to_vector<double>()) << name;
      opt->step();  // the retry: as if the failure never happened
      EXPECT_EQ(t.a.to_vector<float>(), after_a[static_cast<size_t>(s)]);
      EXPECT_EQ(t.b.to_vector<float>(), after_b[static_cast<size_t>(s)]);
    }
  }
}

TEST(AllOrNothingStep, Adam) {
  // The review's case: exp_avg_sq failing left exp_avg defined ("use of an undefined tensor" on
  // every later step), and the step count bumped before the temporaries (a retry off by 2.6e-3).
  MakeOpt make = [](const std::vector<Tensor>& p) {
    return std::make_unique<optim::Adam>(p, 0.1, 0.9, 0.999, 1e-8, 0.01);
  };
  expect_all_or_nothing(make, true);
  expect_all_or_nothing(make, false);
}

TEST(AllOrNothingStep, AdamW) {
  MakeOpt make = [](const std::vector<Tensor>& p) { return std::make_unique<optim::AdamW>(p, 0.1); };
  expect_all_or_nothing(make, true);
  expect_all_or_nothing(make, false);
}

TEST(AllOrNothingStep, SgdWithMomentumAndWeightDecay) {
  // The review's case: on the unfused path the momentum buffer was made before g + wd*p, and a
  // failure between left it uninitialised (the next step used stale memory as momentum).
  MakeOpt make = [](const std::vector<Tensor>& p) { return std::make_unique<optim::SGD>(p, 0.1, 0.9, 0.01); };
  expect_all_or_nothing(make, true);
  expect_all_or_nothing(make, false);
  MakeOpt nesterov = [](const std::vector<Tensor>& p) { return std::make_unique<optim::SGD>(p, 0.1, 0.9, 0.01, true); };
  expect_all_or_nothing(nesterov, false);
}

TEST(AllOrNothingStep, TheErrorNamesTheParameterAndLeavesEarlierOnesAlone) {
  TwoParams t;
  optim::Adam opt(t.list(), 0.1);
  t.set_grads();
  // Find the first allocation that is for parameter 1: parameter 0's state exists by then.
  for (int64_t k = 1;; ++k) {
    ASSERT_LT(k, 20) << "no allocation for parameter 1";
    cpu_allocator().inject_fault(FaultKind::allocation, k);
    std::string message;
    try {
      opt.step();
    } catch (const OutOfMemoryError& e) {
      message = e.what();
    }
    cpu_allocator().clear_fault();
    ASSERT_FALSE(message.empty()) << "allocation " << k << " did not fail the step";
    if (message.find("parameter 1 of 2") == std::string::npos) continue;
    EXPECT_NE(message.find("f32 (2,)"), std::string::npos) << message;
    EXPECT_EQ(t.a.to_vector<float>(), (std::vector<float>{0.5f, -1.5f, 2.0f}));  // not updated
    EXPECT_FALSE(opt.exp_avg(0).defined());                                      // and its new state dropped again
    EXPECT_EQ(opt.step_count(0), 0);
    break;
  }
}

TEST(AllOrNothingStep, TheCommitAllocatesNothing) {
  // Everything is reserved first: the update itself runs inside a NoAllocationScope, which
  // throws on any allocation, so this passing for both paths is the check.
  for (bool fused : {true, false}) {
    TwoParams t;
    optim::SGD opt(t.list(), 0.1, 0.9, 0.01, true);
    opt.set_fused(fused);
    for (int s = 0; s < 3; ++s) {
      t.set_grads();
      EXPECT_NO_THROW(opt.step());
    }
  }
}

TEST(AllOrNothingStep, StateDictRoundTripsAndRefusesAnotherOptimizersState) {
  TwoParams t;
  optim::Adam opt(t.list(), 0.1);
  t.set_grads();
  opt.step();
  opt.set_lr(0.05);
  const auto sd = opt.state_dict();
  EXPECT_EQ(sd.size(), 1u + 2 * 3);  // lr, and exp_avg, exp_avg_sq, step per parameter
  TwoParams u;
  optim::Adam other(u.list(), 1.0);
  other.load_state_dict(sd);
  EXPECT_EQ(other.lr(), 0.05);
  EXPECT_EQ(other.step_count(1), 1);
  EXPECT_EQ(other.exp_avg(0).to_vector<float>(), opt.exp_avg(0).to_vector<float>());
  // The loaded state is the optimizer's own memory, not the map's.
  EXPECT_FALSE(other.exp_avg(0).storage() == sd.at("param.0.exp_avg").storage());
  // Wrong shape, missing entry, unknown entry: refused by name, nothing changed.
  auto bad = sd;
  bad["param.1.exp_avg"] = Tensor::zeros({3});
  EXPECT_THROW_WITH(other.load_state_dict(bad), ValueError, "'param.1.exp_avg' is f32 (3,)");
  bad = sd;
  bad.erase("param.0.step");
  EXPECT_THROW_WITH(other.load_state_dict(bad), ValueError, "no 'param.0.step'");
  bad = sd;
  bad["param.0.momentum_buffer"] = Tensor::zeros({3});
  EXPECT_THROW_WITH(other.load_state_dict(bad), ValueError, "1 entries name no state");
  optim::SGD sgd(u.list(), 0.1, 0.9);
  EXPECT_THROW_WITH(sgd.load_state_dict(sd), ValueError, "name no state of this optimizer");
  EXPECT_EQ(other.step_count(1), 1);
}

TEST(AllOrNothingStep, GradScalerUnscaleWritesNoGradientUntilItsFlagsExist) {
  TwoParams t;
  optim::SGD opt(t.list(), 0.1);
  optim::GradScaler scaler(optim::GradScalerOptions{.init_scale = 4.0});
  t.set_grads();
  const std::vector<float> g0 = t.a.grad().to_vector<float>();
  cpu_allocator().inject_fault(FaultKind::allocation, 1);  // the device's found-inf flag
  EXPECT_THROW(scaler.unscale_(opt), OutOfMemoryError);
  cpu_allocator().clear_fault();
  EXPECT_EQ(t.a.grad().to_vector<float>(), g0);  // not divided by 4
  EXPECT_TRUE(scaler.step(opt));                 // unscale_ again, then step: once divided
  std::vector<float> expected = {0.5f - 0.1f * 0.1f / 4, -1.5f - 0.1f * 0.2f / 4, 2.0f + 0.1f * 0.3f / 4};
  std::vector<float> got = t.a.to_vector<float>();
  for (size_t i = 0; i < 3; ++i) EXPECT_FLOAT_EQ(got[i], expected[i]);
  scaler.update();
}

TEST(AllOrNothingStep, GradScalerStateRoundTrips) {
  optim::GradScaler scaler(optim::GradScalerOptions{.init_scale = 1024.0, .growth_interval = 3});
  TwoParams t;
  optim::SGD opt(t.list(), 0.1);
  t.set_grads();
  scaler.step(opt);
  scaler.update();
  optim::GradScaler other(optim::GradScalerOptions{.growth_interval = 3});
  other.load_state_dict(scaler.state_dict());
  EXPECT_EQ(other.scale(), 1024.0);
  EXPECT_EQ(other.growth_tracker(), 1);
  auto bad = scaler.state_dict();
  bad["scale"] = Tensor::scalar(-1.0, DType::f64);
  EXPECT_THROW_WITH(other.load_state_dict(bad), ValueError, "'scale' is -1");
  bad = scaler.state_dict();
  bad["growth_tracker"] = Tensor::scalar(3, DType::i64);
  EXPECT_THROW_WITH(other.load_state_dict(bad), ValueError, "growth_tracker 3");
}

// A small MLP step through a BatchSplitter whose optimizer step fails once, then twice.
struct SplitRun {
  std::shared_ptr<nn::Sequential> model;
  std::unique_ptr<optim::Adam> opt;
  Tensor x, y;
  SplitRun() {
    manual_seed(3);
    model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
        std::make_shared<nn::Linear>(6, 8), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(8, 3)});
    opt = std::make_unique<optim::Adam>(model->parameters(), 0.01);
    x = Tensor::randn({4, 6});
    y = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 1}, {4}, DType::i64);
  }
  optim::BatchSplitter::StepFn fn() {
    return [this](const Tensor& xi, const Tensor& yi) -> optim::MicroBatchOutput {
      return cross_entropy((*model)(xi), yi);
    };
  }
  std::vector<std::vector<float>> params() const {
    std::vector<std::vector<float>> out;
    for (const Tensor& p : model->parameters()) out.push_back(p.to_vector<float>());
    return out;
  }
};

// The allocations of one forward and backward of the model, before any optimizer step.
int64_t forward_backward_allocations() {
  SplitRun probe;
  const int64_t before = cpu_allocator().stats().num_allocs;
  Tensor loss = cross_entropy((*probe.model)(probe.x), probe.y);
  loss.backward();
  return cpu_allocator().stats().num_allocs - before;
}

TEST(AllOrNothingSplitStep, AnOptimizerStepOutOfMemoryIsRetriedOnce) {
  SplitRun clean;
  optim::BatchSplitter cs(*clean.opt, 1, clean.model.get());
  cs.step(clean.x, clean.y, clean.fn());

  const int64_t fb = forward_backward_allocations();
  SplitRun run;
  optim::BatchSplitter s(*run.opt, 1, run.model.get());
  // The buffers' snapshot comes first (none here), then forward and backward, then the
  // optimizer: its third allocation is inside the step (the state of the first parameters).
  cpu_allocator().inject_fault(FaultKind::allocation, fb + 3);
  optim::SplitStepResult r = s.step(run.x, run.y, run.fn());
  ASSERT_TRUE(cpu_allocator().fault_status().fired);
  cpu_allocator().clear_fault();
  EXPECT_EQ(r.ooms_recovered, 1);
  ASSERT_EQ(s.recoveries().size(), 1u);
  EXPECT_TRUE(s.recoveries()[0].in_optimizer_step);
  EXPECT_EQ(run.params(), clean.params());
  EXPECT_EQ(run.opt->step_count(0), 1);
}

TEST(AllOrNothingSplitStep, AnOptimizerThatCannotFitIsRefusedWithNothingChanged) {
  SplitRun run;
  const auto before = run.params();
  const uint64_t offset = default_generator().offset();
  int calls = 0;
  optim::BatchSplitter::Options options;
  options.optimizer_step = [&](optim::Optimizer&) {
    ++calls;
    throw OutOfMemoryError("no room for the optimizer (test)", 1 << 20, 0);
  };
  optim::BatchSplitter s(*run.opt, optim::BatchSplitter::kAuto, run.model.get(), options);
  EXPECT_THROW_WITH(s.step(run.x, run.y, run.fn()), OutOfMemoryError,
                    "splitting the batch cannot shrink the optimizer");
  EXPECT_EQ(calls, 2);  // tried, then once more after the cache was emptied
  EXPECT_EQ(run.params(), before);
  EXPECT_EQ(default_generator().offset(), offset);
  for (const Tensor& p : run.model->parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST(AllOrNothingSplitStep, AFixedSplitThatDoesNotFitChangesNothing) {
  SplitRun run;
  const auto before = run.params();
  optim::BatchSplitter s(*run.opt, 2, run.model.get());
  cpu_allocator().inject_fault(FaultKind::allocation, 5);
  EXPECT_THROW_WITH(s.step(run.x, run.y, run.fn()), OutOfMemoryError, "and changed nothing");
  cpu_allocator().clear_fault();
  EXPECT_EQ(run.params(), before);
  for (const Tensor& p : run.model->parameters()) EXPECT_FALSE(p.grad().defined());
  EXPECT_FALSE(run.opt->exp_avg(0).defined());
}

}  // namespace
}  // namespace headroom
