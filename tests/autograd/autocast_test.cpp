// Autocast (autograd/autocast.h): the policy table as the ops apply it (output dtypes inside a
// scope, and unchanged outside), nesting and disabling, the cast cache (a parameter is cast
// once per scope however often it is used), and gradients reaching the f32 master weights --
// close to those of f32 training for a small MLP, f16 and bf16.
#include <cmath>

#include "autograd/autocast.h"
#include "engine/caching_allocator.h"
#include "test_util.h"

namespace headroom::testing {
namespace {

Tensor param(const Shape& shape, double scale = 0.3) {
  Tensor p = Tensor::randn(shape) * scale;
  return p.detach().set_requires_grad(true);
}

TEST(Autocast, PolicyTableIsTheDocumentedOne) {
  for (AutocastOp op : {AutocastOp::matmul, AutocastOp::linear, AutocastOp::conv2d})
    EXPECT_EQ(autocast_policy(op), CastPolicy::low) << autocast_op_name(op);
  EXPECT_EQ(autocast_policy(AutocastOp::batch_norm), CastPolicy::f32_params);
  EXPECT_EQ(autocast_policy(AutocastOp::group_norm), CastPolicy::f32_params);
  for (AutocastOp op :
       {AutocastOp::softmax, AutocastOp::log_softmax, AutocastOp::layer_norm, AutocastOp::sum, AutocastOp::mean,
        AutocastOp::cross_entropy, AutocastOp::mse_loss, AutocastOp::exp, AutocastOp::log, AutocastOp::pow})
    EXPECT_EQ(autocast_policy(op), CastPolicy::f32) << autocast_op_name(op);
  EXPECT_STREQ(autocast_op_name(AutocastOp::cross_entropy), "cross_entropy");
}

TEST(Autocast, OutputDtypesInsideTheScope) {
  manual_seed(1);
  Tensor x = Tensor::randn({4, 6}), w = param({5, 6}), b = param({5});
  Tensor img = Tensor::randn({2, 3, 6, 6}), cw = param({4, 3, 3, 3}), cb = param({4});
  Tensor target = Tensor::from_vector<int64_t>({0, 1, 2, 4}, {4}, TensorOptions().dtype(DType::i64));
  for (DType low : {DType::f16, DType::bf16}) {
    SCOPED_TRACE(dtype_name(low));
    AutocastGuard amp(Device::cpu(), low);
    EXPECT_TRUE(autocast_enabled(DeviceType::cpu));
    EXPECT_EQ(autocast_dtype(DeviceType::cpu), low);
    // low: the products
    Tensor y = linear(x, w, b);
    EXPECT_EQ(y.dtype(), low);
    EXPECT_EQ(matmul(x, w.t()).dtype(), low);
    Tensor c = conv2d(img, cw, cb, 1, 1);
    EXPECT_EQ(c.dtype(), low);
    // f32: range- and accumulation-sensitive ops upcast their 16-bit inputs
    EXPECT_EQ(softmax(y, 1).dtype(), DType::f32);
    EXPECT_EQ(log_softmax(y, 1).dtype(), DType::f32);
    EXPECT_EQ(layer_norm(y, {5}, Tensor(), Tensor()).dtype(), DType::f32);
    EXPECT_EQ(cross_entropy(y, target).dtype(), DType::f32);
    EXPECT_EQ(mse_loss(y, y.detach()).dtype(), DType::f32);
    EXPECT_EQ(sum(y).dtype(), DType::f32);
    EXPECT_EQ(mean(y, {1}).dtype(), DType::f32);
    EXPECT_EQ(exp(y).dtype(), DType::f32);
    EXPECT_EQ(log(abs(y) + 1.0).dtype(), DType::f32);
    EXPECT_EQ(pow(y, 2.0).dtype(), DType::f32);
    // promote: everything else follows its inputs
    EXPECT_EQ(relu(y).dtype(), low);
    EXPECT_EQ(max_pool2d(c, 2).dtype(), low);
    EXPECT_EQ((y + y).dtype(), low);
    EXPECT_EQ((y + Tensor::ones({5})).dtype(), DType::f32);
    // f64 is never cast, and the module's weights stay f32
    Tensor x64 = Tensor::randn({4, 6}, TensorOptions().dtype(DType::f64));
    EXPECT_EQ(matmul(x64, x64.t()).dtype(), DType::f64);
    EXPECT_EQ(w.dtype(), DType::f32);
  }
  // Outside the scope nothing is cast.
  EXPECT_FALSE(autocast_enabled(DeviceType::cpu));
  EXPECT_EQ(linear(x, w, b).dtype(), DType::f32);
  Tensor h = x.to(DType::f16);
  EXPECT_EQ(softmax(h, 1).dtype(), DType::f16);
  EXPECT_EQ(sum(h).dtype(), DType::f16);
}

// BatchNorm keeps its parameters and statistics in f32 and computes in f32; the activations
// stay 16-bit. Its result is the f32 computation on the same data, rounded once to f16.
TEST(Autocast, BatchNormKeepsF32ParametersAndStatistics) {
  manual_seed(2);
  Tensor x = (Tensor::randn({4, 3, 5, 5}) * 3.0 + 1.0).to(DType::f16);
  Tensor w = param({3}, 1.0), b = param({3});
  Tensor rm = Tensor::zeros({3}), rv = Tensor::ones({3});
  Tensor ref_rm = Tensor::zeros({3}), ref_rv = Tensor::ones({3});
  Tensor wr = w.detach().clone().set_requires_grad(true);
  Tensor ref = batch_norm(x.to(DType::f32), wr, b.detach(), ref_rm, ref_rv, true);
  Tensor y;
  {
    AutocastGuard amp(DeviceType::cpu, DType::f16);
    y = batch_norm(x, w, b, rm, rv, true);
  }
  EXPECT_EQ(y.dtype(), DType::f16);
  EXPECT_EQ(rm.dtype(), DType::f32);
  EXPECT_EQ(w.dtype(), DType::f32);
  EXPECT_TRUE(all_close(y, ref.to(DType::f16), 0, 0));
  EXPECT_TRUE(all_close(rm, ref_rm, 1e-6, 1e-6));  // the running statistics were updated in place, in f32
  EXPECT_TRUE(all_close(rv, ref_rv, 1e-6, 1e-6));
  EXPECT_GT(rm.abs().sum().item<double>(), 0.15);  // momentum 0.1 times means near 1
  sum(y * y.detach()).backward();
  sum(ref * ref.detach()).backward();
  ASSERT_EQ(w.grad().dtype(), DType::f32);
  EXPECT_TRUE(all_close(w.grad(), wr.grad(), 0.05, 0.01));
}

TEST(Autocast, NestingDisablingAndOtherDeviceTypes) {
  manual_seed(3);
  Tensor x = Tensor::randn({2, 4}), w = param({3, 4});
  {
    AutocastGuard outer(DeviceType::cpu, DType::f16);
    EXPECT_EQ(linear(x, w, Tensor()).dtype(), DType::f16);
    {
      AutocastGuard inner(DeviceType::cpu, DType::bf16);
      EXPECT_EQ(linear(x, w, Tensor()).dtype(), DType::bf16);
      {
        auto off = AutocastGuard::disabled(DeviceType::cpu);
        EXPECT_FALSE(autocast_enabled(DeviceType::cpu));
        EXPECT_EQ(linear(x, w, Tensor()).dtype(), DType::f32);
      }
      EXPECT_EQ(linear(x, w, Tensor()).dtype(), DType::bf16);
    }
    EXPECT_EQ(linear(x, w, Tensor()).dtype(), DType::f16);
    EXPECT_EQ(autocast_dtype(DeviceType::cpu), DType::f16);
  }
  EXPECT_FALSE(autocast_enabled(DeviceType::cpu));
  {
    // A scope for cuda leaves cpu tensors alone.
    AutocastGuard gpu(DeviceType::cuda, DType::f16);
    EXPECT_TRUE(autocast_enabled(DeviceType::cuda));
    EXPECT_EQ(linear(x, w, Tensor()).dtype(), DType::f32);
  }
  EXPECT_FALSE(autocast_enabled(DeviceType::cuda));
  EXPECT_THROW_WITH(AutocastGuard(DeviceType::cpu, DType::f32), ValueError, "f16 or bf16");
}

TEST(Autocast, CastCacheCastsAParameterOncePerScope) {
  manual_seed(4);
  Tensor w = param({8, 8}), x = Tensor::randn({3, 8});
  reset_autocast_cache_stats();
  {
    AutocastGuard amp(DeviceType::cpu, DType::f16);
    Tensor h = linear(x, w, Tensor());
    Tensor y = linear(relu(h), w, Tensor());  // the same weight again (as tied weights are)
    EXPECT_EQ(y.dtype(), DType::f16);
    AutocastCacheStats s = autocast_cache_stats();
    EXPECT_EQ(s.casts, 1);
    EXPECT_EQ(s.hits, 1);
    EXPECT_EQ(s.entries, 1);
    // Allocated once, as parameter memory (the second, low-precision copy of the weights).
    const int64_t param_bytes = caching_allocator(Device::cpu()).stats().category(MemoryCategory::parameter).current;
    linear(x, w, Tensor());
    EXPECT_EQ(caching_allocator(Device::cpu()).stats().category(MemoryCategory::parameter).current, param_bytes);
    {
      AutocastGuard nested(DeviceType::cpu, DType::f16);  // an inner scope shares the cache
      linear(x, w, Tensor());
    }
    EXPECT_EQ(autocast_cache_stats().casts, 1);
    EXPECT_EQ(autocast_cache_stats().entries, 1);
    // A different target dtype is another entry; an activation (non-leaf) is never cached.
    {
      AutocastGuard inner(DeviceType::cpu, DType::bf16);
      linear(x, w, Tensor());
    }
    linear(h.to(DType::f32), w, Tensor());
    EXPECT_EQ(autocast_cache_stats().casts, 2);
    EXPECT_EQ(autocast_cache_stats().entries, 2);
    // An in-place write to the parameter (an optimizer step) makes its cast stale.
    {
      NoGradGuard no_grad;
      w.mul_(0.5);
    }
    Tensor y2 = linear(x, w, Tensor());
    EXPECT_EQ(autocast_cache_stats().casts, 3);
    Tensor ref;
    {
      auto off = AutocastGuard::disabled(DeviceType::cpu);
      ref = linear(x.to(DType::f16), w.detach().to(DType::f16), Tensor());
    }
    EXPECT_TRUE(all_close(y2, ref, 0, 0));
  }
  // The outermost scope's exit clears the cache; the next scope casts again.
  EXPECT_EQ(autocast_cache_stats().entries, 0);
  {
    auto& alloc = caching_allocator(Device::cpu());
    const int64_t before = alloc.stats().category(MemoryCategory::parameter).current;
    AutocastGuard amp(DeviceType::cpu, DType::f16);
    linear(x, w, Tensor());
    EXPECT_GE(alloc.stats().category(MemoryCategory::parameter).current - before, 8 * 8 * 2);  // the f16 copy of w
  }
  EXPECT_EQ(autocast_cache_stats().casts, 4);
  // Without grad (evaluation) nothing is cached: the cast would carry no history.
  {
    NoGradGuard no_grad;
    AutocastGuard amp(DeviceType::cpu, DType::f16);
    linear(x, w, Tensor());
    EXPECT_EQ(autocast_cache_stats().entries, 0);
  }
}

// Gradients reach the f32 weight through the cached cast, from a weight used twice and from
// several micro-batches of one scope (each backward flows through the same cast node).
TEST(Autocast, GradientsFlowThroughTheCachedCastToF32Weights) {
  manual_seed(5);
  Tensor w = param({6, 6}), x1 = Tensor::randn({4, 6}), x2 = Tensor::randn({4, 6});
  auto loss_of = [&](const Tensor& x) { return sum(linear(tanh(linear(x, w, Tensor())), w, Tensor())); };
  // Reference: f32, no autocast.
  loss_of(x1).backward();
  loss_of(x2).backward();
  Tensor ref = w.grad().clone();
  w.zero_grad();
  reset_autocast_cache_stats();
  {
    AutocastGuard amp(DeviceType::cpu, DType::bf16);
    Tensor l1 = loss_of(x1);
    EXPECT_EQ(l1.dtype(), DType::f32);
    l1.backward();
    Tensor l2 = loss_of(x2);  // the second micro-batch reuses the cast of the first
    l2.backward();
    EXPECT_EQ(autocast_cache_stats().casts, 1);
    EXPECT_EQ(autocast_cache_stats().hits, 3);
  }
  ASSERT_TRUE(w.grad().defined());
  EXPECT_EQ(w.grad().dtype(), DType::f32);
  EXPECT_TRUE(all_close(w.grad(), ref, 0.05, 0.03));
  EXPECT_FALSE(all_close(w.grad(), ref * 0.5, 0.05, 0.03));  // the tolerance can tell one pass from two

  // The same with backward outside autocast: an AutocastCacheScope spans the micro-batches,
  // each forward has its own AutocastGuard, and the weight is still cast once.
  w.zero_grad();
  reset_autocast_cache_stats();
  {
    AutocastCacheScope step_cache;
    for (const Tensor& xb : {x1, x2}) {
      Tensor l;
      {
        AutocastGuard amp(DeviceType::cpu, DType::bf16);
        l = loss_of(xb);
      }
      EXPECT_FALSE(autocast_enabled(DeviceType::cpu));
      l.backward();
    }
    EXPECT_EQ(autocast_cache_stats().casts, 1);
    EXPECT_EQ(autocast_cache_stats().entries, 1);
  }
  EXPECT_EQ(autocast_cache_stats().entries, 0);
  EXPECT_TRUE(all_close(w.grad(), ref, 0.05, 0.03));
}

// A small MLP trained for a few SGD steps under autocast stays close to f32 training: the
// gradients of the f32 master weights agree to 16-bit precision and so do the weights after.
TEST(Autocast, MlpTrainingMatchesF32) {
  for (DType low : {DType::f16, DType::bf16}) {
    SCOPED_TRACE(dtype_name(low));
    manual_seed(6);
    Tensor w1 = param({32, 16}), b1 = param({32}), w2 = param({10, 32}), b2 = param({10});
    Tensor x = Tensor::randn({64, 16});
    Tensor y = Tensor::from_vector<int64_t>(std::vector<int64_t>(64, 3), {64}, TensorOptions().dtype(DType::i64));
    std::vector<Tensor> ref_params, amp_params;
    for (const Tensor& p : {w1, b1, w2, b2}) {
      ref_params.push_back(p.detach().clone().set_requires_grad(true));
      amp_params.push_back(p.detach().clone().set_requires_grad(true));
    }
    auto forward = [&](const std::vector<Tensor>& p) {
      return cross_entropy(linear(relu(linear(x, p[0], p[1])), p[2], p[3]), y);
    };
    auto sgd = [](const std::vector<Tensor>& p) {
      NoGradGuard no_grad;
      for (Tensor t : p) {
        t.sub_(t.grad() * 0.5);
        t.zero_grad();
      }
    };
    const double tol = low == DType::f16 ? 0.01 : 0.04;
    for (int step = 0; step < 3; ++step) {
      forward(ref_params).backward();
      Tensor loss;
      {
        AutocastGuard amp(DeviceType::cpu, low);
        loss = forward(amp_params);
      }
      EXPECT_EQ(loss.dtype(), DType::f32);
      loss.backward();
      for (size_t i = 0; i < amp_params.size(); ++i) {
        ASSERT_EQ(amp_params[i].grad().dtype(), DType::f32);
        const double gmax = ref_params[i].grad().abs().max().item<double>();
        EXPECT_TRUE(all_close(amp_params[i].grad(), ref_params[i].grad(), tol * gmax, tol))
            << "parameter " << i << " at step " << step;
      }
      sgd(ref_params);
      sgd(amp_params);
    }
    for (size_t i = 0; i < amp_params.size(); ++i) {
      EXPECT_EQ(amp_params[i].dtype(), DType::f32);
      EXPECT_TRUE(all_close(amp_params[i], ref_params[i], 2 * tol * 0.3, tol)) << "parameter " << i;
    }
  }
}

}  // namespace
}  // namespace headroom::testing
