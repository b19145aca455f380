// SGD, Adam and AdamW against values worked out by hand (in the comments) for a two-element
// f64 parameter p0 = (1, -2) with gradients set directly, over three steps:
//   g1 = (0.5, -1), g2 = (0.2, 0.4), g3 = (-0.1, 0.3).
// Then the base-class rules: skipped parameters, lazy state with the parameter's dtype and
// device, in-place updates, argument checks.
#include <functional>
#include <memory>

#include "engine/caching_allocator.h"
#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

using testing::all_close;

const std::vector<std::vector<double>> kGrads = {{0.5, -1.0}, {0.2, 0.4}, {-0.1, 0.3}};

Tensor make_param(DType dtype = DType::f64) {
  return Tensor::from_vector({1.0, -2.0}, {2}, TensorOptions().dtype(dtype).requires_grad(true));
}

// Runs an optimizer made by make(p) for expected.size() steps and checks p after each, once
// with the fused CPU loop and once with the generic Tensor-op path.
using MakeOpt = std::function<std::unique_ptr<optim::Optimizer>(const Tensor&)>;
void expect_trajectory(const MakeOpt& make, const std::vector<std::vector<double>>& expected, double tol = 1e-12) {
  for (bool fused : {true, false}) {
    SCOPED_TRACE(fused ? "fused" : "generic");
    Tensor p = make_param();
    auto opt = make(p);
    opt->set_fused(fused);
    for (size_t s = 0; s < expected.size(); ++s) {
      p.set_grad(Tensor::from_vector(kGrads[s], {2}, p.dtype()));
      opt->step();
      std::vector<double> v = p.to_vector<double>();
      EXPECT_NEAR(v[0], expected[s][0], tol) << "step " << s + 1;
      EXPECT_NEAR(v[1], expected[s][1], tol) << "step " << s + 1;
    }
  }
}

template <typename Opt, typename... Args>
MakeOpt maker(Args... args) {
  return [=](const Tensor& p) { return std::make_unique<Opt>(std::vector<Tensor>{p}, args...); };
}

TEST(SGD, Plain) {
  // p -= 0.1 g: (0.95, -1.9), (0.93, -1.94), (0.94, -1.97).
  expect_trajectory(maker<optim::SGD>(0.1), {{0.95, -1.9}, {0.93, -1.94}, {0.94, -1.97}});
  Tensor p = make_param();
  optim::SGD opt({p}, 0.1);
  p.set_grad(Tensor::ones({2}, DType::f64));
  opt.step();
  EXPECT_EQ(opt.state_nbytes(), 0u);  // no momentum, no state
}

TEST(SGD, Momentum) {
  // buf1 = g1 = (0.5, -1)                        p1 = (0.95, -1.9)
  // buf2 = 0.9 buf1 + g2 = (0.65, -0.5)          p2 = (0.885, -1.85)
  // buf3 = 0.9 buf2 + g3 = (0.485, -0.15)        p3 = (0.8365, -1.835)
  expect_trajectory(maker<optim::SGD>(0.1, 0.9), {{0.95, -1.9}, {0.885, -1.85}, {0.8365, -1.835}});
  for (bool fused : {true, false}) {
    Tensor p = make_param();
    optim::SGD opt({p}, 0.1, 0.9);
    opt.set_fused(fused);
    for (size_t s = 0; s < 3; ++s) {
      p.set_grad(Tensor::from_vector(kGrads[s], {2}, DType::f64));
      opt.step();
    }
    EXPECT_TRUE(all_close(opt.momentum_buffer(0), Tensor::from_vector({0.485, -0.15}, {2}, DType::f64))) << fused;
    EXPECT_EQ(opt.state_nbytes(), 16u);
  }
}

TEST(SGD, Nesterov) {
  // d1 = g1 + 0.9 buf1 = 1.9 g1 = (0.95, -1.9)                 p1 = (0.905, -1.81)
  // buf2 = (0.65, -0.5), d2 = g2 + 0.9 buf2 = (0.785, -0.05)    p2 = (0.8265, -1.805)
  // buf3 = (0.485, -0.15), d3 = g3 + 0.9 buf3 = (0.3365, 0.165) p3 = (0.79285, -1.8215)
  expect_trajectory(maker<optim::SGD>(0.1, 0.9, 0.0, true), {{0.905, -1.81}, {0.8265, -1.805}, {0.79285, -1.8215}});
}

TEST(SGD, WeightDecayWithMomentum) {
  // d1 = g1 + 0.01 p0 = (0.51, -1.02) = buf1                         p1 = (0.949, -1.898)
  // d2 = g2 + 0.01 p1 = (0.20949, 0.38102); buf2 = (0.66849, -0.53698) p2 = (0.882151, -1.844302)
  expect_trajectory(maker<optim::SGD>(0.1, 0.9, 0.01), {{0.949, -1.898}, {0.882151, -1.844302}});
}

// Adam's first step moves each element by lr * g / (|g| + eps): about lr against the sign
// of g. Later steps: m_hat / (sqrt(v_hat) + eps) with m, v the bias-corrected moments.
TEST(Adam, ThreeSteps) {
  expect_trajectory(maker<optim::Adam>(0.1), {{0.900000002, -1.900000001},
                                              {0.8101424839029282, -1.865439416662626},
                                              {0.7535255578069425, -1.8568614218383597}});
}

TEST(Adam, LargeEpsAndOtherBetas) {
  // beta1 0.5, beta2 0.75, eps 0.1, lr 0.01. Step 1: m_hat = g1, sqrt(v_hat) = |g1|:
  // p1 = p0 - 0.01 * g1 / (|g1| + 0.1) = (1 - 0.005 / 0.6, -2 + 0.01 / 1.1).
  // Step 2: m2 = 0.5 m1 + 0.5 g2 = (0.225, -0.05), m_hat = m2 / 0.75; v2 = 0.75 v1 + 0.25 g2^2
  // = (0.056875, 0.2275), v_hat = v2 / 0.4375; p2 = p1 - 0.01 m_hat / (sqrt(v_hat) + 0.1).
  expect_trajectory(maker<optim::Adam>(0.01, 0.5, 0.75, 0.1), {{1.0 - 0.005 / 0.6, -2.0 + 0.01 / 1.1},
                                                               {0.9851527884780067, -1.9900971820789044},
                                                               {0.9832705049458336, -1.9922043000940375}});
  for (bool fused : {true, false}) {
    Tensor p = make_param();
    optim::Adam opt({p}, 0.01, 0.5, 0.75, 0.1);
    opt.set_fused(fused);
    for (size_t s = 0; s < 3; ++s) {
      p.set_grad(Tensor::from_vector(kGrads[s], {2}, DType::f64));
      opt.step();
    }
    EXPECT_EQ(opt.step_count(0), 3);
    // m3 = 0.5 m2 + 0.5 g3 = (0.0625, 0.125).
    EXPECT_TRUE(all_close(opt.exp_avg(0), Tensor::from_vector({0.0625, 0.125}, {2}, DType::f64))) << fused;
    // v3 = 0.75 (0.75 * 0.25 g1^2 + 0.25 g2^2) + 0.25 g3^2
    const double v0 = 0.75 * (0.75 * 0.25 * 0.25 + 0.25 * 0.04) + 0.25 * 0.01;
    const double v1 = 0.75 * (0.75 * 0.25 * 1.0 + 0.25 * 0.16) + 0.25 * 0.09;
    EXPECT_TRUE(all_close(opt.exp_avg_sq(0), Tensor::from_vector({v0, v1}, {2}, DType::f64))) << fused;
  }
}

TEST(Adam, L2WeightDecayGoesThroughTheGradient) {
  // d = g + 0.1 p: the first step still moves by about lr (d1 = (0.6, -1.2), same signs as g1).
  expect_trajectory(maker<optim::Adam>(0.1, 0.9, 0.999, 1e-8, 0.1), {{0.9000000016666666, -1.9000000008333333},
                                                                     {0.8072814605072346, -1.846831886458653},
                                                                     {0.7374880492871208, -1.8119419469433486}});
}

TEST(AdamW, DecoupledWeightDecay) {
  // p is first shrunk by (1 - lr * wd) = 0.99, then the plain Adam update applies:
  // p1 = 0.99 p0 - 0.1 * g1 / (|g1| + 1e-8) = (0.99 - 0.1, -1.98 + 0.1) + O(1e-9).
  expect_trajectory(maker<optim::AdamW>(0.1, 0.9, 0.999, 1e-8, 0.1), {{0.890000002, -1.880000001},
                                                                      {0.7912424838829282, -1.826639416652626},
                                                                      {0.7267131329481132, -1.7997950276618335}});
}

TEST(Optimizer, SkipsParamsWithoutGradAndMakesStateLazily) {
  Tensor a = make_param(), b = make_param(DType::f32);
  optim::Adam opt({a, b}, 0.1);
  EXPECT_EQ(opt.state_nbytes(), 0u);
  b.set_grad(Tensor::from_vector({1.0, 1.0}, {2}, DType::f32));
  opt.step();
  EXPECT_TRUE(all_close(a, make_param(), 0, 0));  // no grad: untouched
  EXPECT_FALSE(opt.exp_avg(0).defined());
  ASSERT_TRUE(opt.exp_avg(1).defined());
  EXPECT_EQ(opt.exp_avg(1).dtype(), DType::f32);  // the parameter's dtype and device
  EXPECT_EQ(opt.exp_avg(1).device(), b.device());
  EXPECT_EQ(opt.state_nbytes(), 2u * 2 * 4);
  EXPECT_EQ(opt.step_count(0), 0);
  EXPECT_EQ(opt.step_count(1), 1);
  // zero_grad drops grads; a step then changes nothing.
  opt.zero_grad();
  EXPECT_FALSE(b.grad().defined());
  Tensor before = b.clone();
  opt.step();
  EXPECT_TRUE(all_close(b, before, 0, 0));
}

TEST(Optimizer, UpdatesInPlaceThroughRealGradients) {
  // loss = sum(p^2): grad 2p; SGD with lr 0.25 halves p each step.
  Tensor p = Tensor::from_vector({4.0, -8.0, 2.0}, {3}, TensorOptions().dtype(DType::f64).requires_grad(true));
  const TensorImpl* impl = p.impl();
  const uint64_t version = p.version();
  optim::SGD opt({p}, 0.25);
  for (int i = 0; i < 3; ++i) {
    opt.zero_grad();
    (p * p).sum().backward();
    opt.step();
  }
  EXPECT_EQ(p.impl(), impl);
  EXPECT_GT(p.version(), version);
  EXPECT_TRUE(p.requires_grad());
  EXPECT_TRUE(all_close(p, Tensor::from_vector({0.5, -1.0, 0.25}, {3}, DType::f64)));
}

// The fused CPU loop and the generic path agree on larger tensors over several steps. For
// f16/bf16 the reference is the generic path in f32: the fused loop computes in f32 and rounds
// once per stored element, whereas the generic path in f16 rounds after every op (and its
// d^2 and v lose most of their bits to f16's subnormals), so it is no reference there.
TEST(Optimizer, FusedAndGenericPathsAgree) {
  const std::vector<std::pair<const char*, MakeOpt>> makers = {
      {"sgd", maker<optim::SGD>(0.05, 0.9, 0.01, true)},
      {"adam", maker<optim::Adam>(0.01, 0.9, 0.99, 1e-3, 0.01)},
      {"adamw", maker<optim::AdamW>(0.01, 0.8, 0.95, 1e-3, 0.1)}};
  for (const auto& [name, make] : makers) {
    for (DType dtype : {DType::f32, DType::f64, DType::f16, DType::bf16}) {
      SCOPED_TRACE(std::string(name) + " " + dtype_name(dtype));
      const bool half = dtype == DType::f16 || dtype == DType::bf16;
      const DType ref_dtype = half ? DType::f32 : dtype;
      manual_seed(9);
      Tensor init = Tensor::randn({200, 170}).to(dtype);  // past the parallel grain
      Tensor a = init.clone().set_requires_grad(true), b = init.to(ref_dtype).clone().set_requires_grad(true);
      auto fused = make(a), generic = make(b);
      generic->set_fused(false);
      for (int s = 0; s < 4; ++s) {
        Tensor g = Tensor::randn({200, 170}).to(dtype);
        a.set_grad(g);
        b.set_grad(g.to(ref_dtype).clone());
        fused->step();
        generic->step();
      }
      const double tol = dtype == DType::f64 ? 1e-12 : dtype == DType::f32 ? 1e-5 : dtype == DType::f16 ? 4e-3 : 3e-2;
      EXPECT_TRUE(all_close(a.to(ref_dtype), b, tol, tol));
      EXPECT_EQ(fused->state_nbytes() * dtype_size(ref_dtype), generic->state_nbytes() * dtype_size(dtype));
    }
  }
  // A transposed (strided) leaf: the fused loop declines, the generic path updates it.
  Tensor strided = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3}).t().set_requires_grad(true);
  ASSERT_FALSE(strided.is_contiguous());
  optim::SGD opt({strided}, 0.5);
  strided.set_grad(Tensor::ones({3, 2}));
  opt.step();
  EXPECT_TRUE(all_close(strided, Tensor::from_vector({0.5, 3.5, 1.5, 4.5, 2.5, 5.5}, {3, 2})));
}

// Momentum buffers and Adam moments are allocated as MemoryCategory::optimizer_state, on the
// first step only, and freed with the optimizer.
TEST(Optimizer, StateIsTaggedOptimizerStateMemory) {
  auto& alloc = caching_allocator(Device::cpu());
  auto state_bytes = [&] { return alloc.stats().category(MemoryCategory::optimizer_state).current; };
  const int64_t before = state_bytes();
  Tensor p = Tensor::zeros({1000, 300}, TensorOptions().requires_grad(true));
  const int64_t n = 1000 * 300 * 4;
  {
    optim::AdamW opt({p});
    EXPECT_EQ(state_bytes(), before);  // lazily: nothing before the first step
    p.set_grad(Tensor::ones({1000, 300}));
    opt.step();
    EXPECT_GE(state_bytes() - before, 2 * n);
    EXPECT_LT(state_bytes() - before, 2 * n + 8192);
    EXPECT_EQ(opt.state_nbytes(), static_cast<size_t>(2 * n));
    optim::SGD sgd({p}, 0.1, 0.9);
    sgd.set_fused(false);  // the generic path allocates its buffer the same way
    sgd.step();
    EXPECT_GE(state_bytes() - before, 3 * n);
  }
  EXPECT_EQ(state_bytes(), before);
}

TEST(Optimizer, ArgumentChecks) {
  Tensor p = make_param();
  EXPECT_THROW_WITH(optim::SGD({}, 0.1), ValueError, "empty parameter list");
  EXPECT_THROW_WITH(optim::SGD({p, p}, 0.1), ValueError, "appears more than once");
  EXPECT_THROW_WITH(optim::SGD({p * 2.0}, 0.1), ValueError, "not a leaf");
  EXPECT_THROW_WITH(optim::SGD({Tensor::zeros({2}, DType::i64)}, 0.1), ValueError, "not a floating tensor");
  EXPECT_THROW_WITH(optim::SGD({p}, -1.0), ValueError, "lr must be >= 0");
  EXPECT_THROW_WITH(optim::SGD({p}, 0.1, 0.0, 0.0, true), ValueError, "nesterov needs a momentum > 0");
  EXPECT_THROW_WITH(optim::Adam({p}, 0.1, 1.0), ValueError, "betas must be in [0, 1)");
  EXPECT_THROW_WITH(optim::AdamW({p}, 0.1, 0.9, 0.999, 1e-8, -0.1), ValueError, "AdamW: weight_decay");
  optim::SGD opt({p}, 0.1);
  opt.set_lr(0.5);
  EXPECT_EQ(opt.lr(), 0.5);
  EXPECT_THROW_WITH(opt.set_lr(-0.5), ValueError, "lr must be >= 0");
  EXPECT_EQ(opt.params().size(), 1u);
}

}  // namespace
}  // namespace headroom
