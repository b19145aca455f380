// GradScaler (optim/grad_scaler.h) and its fused pass (Backend::unscale_and_check): the pass
// divides every gradient of every float dtype and flags inf/NaN (on the cpu, and on cuda when a
// GPU is present, against the cpu); the scaler skips exactly the steps with an injected
// overflow and follows the scale schedule (halve on overflow, double after growth_interval
// clean steps, never past the f32 maximum); unscaling k accumulated micro-batches of a scaled
// loss gives the gradients of the whole batch; misuse (unscale twice, update without a check)
// throws.
#include <cmath>
#include <limits>

#include "autograd/autocast.h"
#include "engine/allocator.h"
#include "optim/grad_scaler.h"
#include "optim/optim.h"
#include "test_util.h"

namespace headroom::testing {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kF32Max = static_cast<double>(std::numeric_limits<float>::max());

// Gradients of several dtypes and sizes (0, 1, odd, and past the parallel grain), values
// within f16 range.
std::vector<Tensor> make_grads(int count_scale = 1) {
  std::vector<Tensor> gs;
  const DType dtypes[] = {DType::f32, DType::f16, DType::bf16, DType::f64};
  const int64_t sizes[] = {0, 1, 127, 256, 40000};
  int k = 0;
  for (int rep = 0; rep < count_scale; ++rep)
    for (int64_t n : sizes)
      for (DType d : dtypes) gs.push_back((Tensor::randn({n}) * (1.0 + (k++ % 7))).to(d));
  return gs;
}

std::vector<Tensor> clone_all(const std::vector<Tensor>& ts, Device device) {
  std::vector<Tensor> out;
  for (const Tensor& t : ts) out.push_back(t.to(device).clone());
  return out;
}

float read_flag(const Tensor& f) { return f.to(Device::cpu()).item<float>(); }

// One element of t set to value (t's storage written through the host).
void poke(Tensor t, int64_t i, double value) {
  Tensor host = t.to(Device::cpu()).clone();
  host.slice(0, i, i + 1).fill_(value);
  t.copy_(host.to(t.device()));
}

void check_unscale(Device device) {
  SCOPED_TRACE(device.str());
  manual_seed(11);
  // More tensors than one cuda launch holds (48) and a tensor of more chunks than one launch
  // has blocks (320 x 16384): the list is refilled mid-tensor.
  std::vector<Tensor> ref = make_grads(3);
  if (device.is_cuda()) ref.push_back(Tensor::randn({int64_t{320} * 16384 + 5000}));
  Backend& be = backend_for(device);
  auto flag = [&] { return Tensor::zeros({1}, TensorOptions().dtype(DType::f32).device(device)); };
  const double inv = 1.0 / 1024;  // a power of two: the quotient is exact in every dtype

  std::vector<Tensor> gs = clone_all(ref, device);
  Tensor found = flag();
  be.unscale_and_check(gs, inv, found);
  EXPECT_EQ(read_flag(found), 0.0f);
  for (size_t i = 0; i < gs.size(); ++i) {
    EXPECT_EQ(gs[i].dtype(), ref[i].dtype());
    EXPECT_TRUE(all_close(gs[i].to(Device::cpu()), ref[i] * inv, 0, 0)) << "gradient " << i;
  }

  // One inf, or one NaN, in any one tensor (first, middle, last element) is found.
  for (double bad : {kInf, -kInf, std::nan("")}) {
    for (size_t which : {size_t{1}, gs.size() / 2 + 3, gs.size() - 1}) {
      std::vector<Tensor> g2 = clone_all(ref, device);
      if (g2[which].numel() == 0) continue;
      poke(g2[which], g2[which].numel() - 1, bad);
      Tensor f = flag();
      be.unscale_and_check(g2, inv, f);
      EXPECT_EQ(read_flag(f), 1.0f) << "value " << bad << " in gradient " << which;
    }
  }
  // A finite value that the scaling takes past f16's range (65504) counts as an overflow.
  {
    std::vector<Tensor> g3 = {Tensor::full({3}, 60000.0, TensorOptions().dtype(DType::f16).device(device))};
    Tensor f = flag();
    be.unscale_and_check(g3, 2.0, f);
    EXPECT_EQ(read_flag(f), 1.0f);
  }
  // found_inf is only ever set: a flag already at 1 stays 1 after finite gradients.
  {
    std::vector<Tensor> g4 = clone_all(ref, device);
    Tensor f = flag();
    f.fill_(1.0);
    be.unscale_and_check(g4, inv, f);
    EXPECT_EQ(read_flag(f), 1.0f);
  }
  // Contract violations name the op.
  Tensor strided = Tensor::zeros({4, 4}, TensorOptions().device(device)).t();
  Tensor f = flag();
  EXPECT_THROW_WITH(be.unscale_and_check({strided}, inv, f), ValueError, "unscale_and_check");
  EXPECT_THROW_WITH(be.unscale_and_check({}, inv, Tensor::zeros({2}, TensorOptions().device(device))), ValueError,
                    "found_inf");
}

TEST(UnscaleAndCheck, CpuDividesEveryGradientAndFlagsNonFinite) { check_unscale(Device::cpu()); }

TEST(UnscaleAndCheck, CudaMatchesTheDefinition) {
#ifdef HEADROOM_WITH_CUDA
  if (device_count(DeviceType::cuda) == 0) GTEST_SKIP() << "no CUDA device";
  check_unscale(Device::cuda(0));
#else
  GTEST_SKIP() << "built without CUDA";
#endif
}

// The schedule: S starts at 2^16, halves on an overflow step (which is skipped: the parameter
// does not move), doubles after growth_interval (3) clean steps in a row.
TEST(GradScaler, SkipsExactlyTheOverflowStepsAndFollowsTheSchedule) {
  Tensor w = Tensor::zeros({4}).set_requires_grad(true);
  optim::SGD opt({w}, 1.0);
  optim::GradScalerOptions o;
  o.growth_interval = 3;
  optim::GradScaler scaler(o);
  EXPECT_EQ(scaler.scale(), 65536.0);
  const std::vector<double> bad_at = {2, 7, 8, 14};  // steps whose gradient gets an inf or NaN
  double expect_scale = 65536.0, expect_w = 0.0;
  int64_t clean_run = 0, expect_skipped = 0;
  Tensor x = Tensor::from_vector({1.0, 2.0, 3.0, 4.0}, {4});
  for (int step = 0; step < 18; ++step) {
    SCOPED_TRACE(step);
    opt.zero_grad();
    Tensor loss = sum(w * x) * 0.25;  // dloss/dw = x / 4
    scaler.scale(loss).backward();
    EXPECT_TRUE(all_close(w.grad(), x * 0.25 * scaler.scale(), 0, 0));  // scaled by S exactly
    const bool bad = std::find(bad_at.begin(), bad_at.end(), step) != bad_at.end();
    if (bad) poke(w.grad(), 1, step == 8 ? std::nan("") : kInf);
    const bool stepped = scaler.step(opt);
    EXPECT_EQ(stepped, !bad);
    scaler.update();
    if (bad) {
      expect_scale *= 0.5;
      clean_run = 0;
      ++expect_skipped;
    } else {
      expect_w -= 1.0;  // lr 1 times the unscaled gradient x / 4, for w[3] = 4 / 4
      if (++clean_run == 3) {
        expect_scale *= 2;
        clean_run = 0;
      }
    }
    EXPECT_EQ(scaler.scale(), expect_scale);
    EXPECT_EQ(scaler.growth_tracker(), clean_run);
    EXPECT_EQ(scaler.skipped_steps(), expect_skipped);
    EXPECT_FLOAT_EQ(w.to_vector<float>()[3], static_cast<float>(expect_w));
    EXPECT_TRUE(std::isfinite(w.to_vector<float>()[1]));  // a skipped step never touched w
  }
  EXPECT_EQ(scaler.skipped_steps(), 4);
}

TEST(GradScaler, ScaleNeverGrowsPastTheF32Maximum) {
  Tensor w = Tensor::zeros({2}).set_requires_grad(true);
  optim::SGD opt({w}, 0.0);
  optim::GradScalerOptions o;
  o.init_scale = std::ldexp(1.0, 127);
  o.growth_interval = 1;
  optim::GradScaler scaler(o);
  for (int step = 0; step < 3; ++step) {
    w.set_grad(Tensor::ones({2}));
    EXPECT_TRUE(scaler.step(opt));
    scaler.update();
    EXPECT_LE(scaler.scale(), kF32Max);
    EXPECT_TRUE(std::isfinite(static_cast<float>(scaler.scale())));
  }
  EXPECT_EQ(scaler.scale(), kF32Max);
  EXPECT_THROW_WITH((void)optim::GradScaler({kInf}), ValueError, "init_scale");
  optim::GradScalerOptions bad;
  bad.growth_interval = 0;
  EXPECT_THROW_WITH((void)optim::GradScaler{bad}, ValueError, "growth_interval");
}

TEST(GradScaler, UnscaleOncePerStep) {
  Tensor w = Tensor::ones({3}).set_requires_grad(true);
  optim::SGD opt({w}, 0.1);
  optim::GradScaler scaler;
  scaler.scale(sum(w * 3.0)).backward();
  scaler.unscale_(opt);
  EXPECT_TRUE(all_close(w.grad(), Tensor::full({3}, 3.0), 0, 0));
  EXPECT_THROW_WITH(scaler.unscale_(opt), ValueError, "already called");
  EXPECT_TRUE(scaler.step(opt));  // does not divide a second time
  EXPECT_TRUE(all_close(w, Tensor::full({3}, 0.7), 1e-6, 1e-6));
  scaler.update();
  EXPECT_THROW_WITH(scaler.update(), ValueError, "no unscale_() or step()");
  // A disabled scaler passes everything through.
  optim::GradScalerOptions off;
  off.enabled = false;
  optim::GradScaler none(off);
  Tensor loss = sum(w);
  EXPECT_TRUE(none.scale(loss).is_same(loss));
  EXPECT_EQ(none.scale(), 1.0);
}

// k micro-batches, each loss scaled by the same S and divided by k, accumulate into the .grad
// that one unscale turns into the whole batch's gradient -- here of an MLP under f16 autocast
// against the same MLP in f16 autocast over the whole batch (no batch statistics involved),
// and, to f16 accuracy, against f32.
TEST(GradScaler, AccumulatedMicroBatchesUnscaleToTheWholeBatchGradient) {
  manual_seed(12);
  const int64_t n = 32, k = 4;
  Tensor x = Tensor::randn({n, 12});
  Tensor y = (Tensor::rand({n}) * 5.0).to(DType::i64);
  std::vector<Tensor> params = {
      (Tensor::randn({16, 12}) * 0.3).set_requires_grad(true), Tensor::zeros({16}).set_requires_grad(true),
      (Tensor::randn({5, 16}) * 0.3).set_requires_grad(true), Tensor::zeros({5}).set_requires_grad(true)};
  auto loss_of = [&](const Tensor& xb, const Tensor& yb) {
    return cross_entropy(linear(relu(linear(xb, params[0], params[1])), params[2], params[3]), yb);
  };
  // Whole batch, f32.
  loss_of(x, y).backward();
  std::vector<Tensor> ref;
  for (Tensor& p : params) {
    ref.push_back(p.grad().clone());
    p.zero_grad();
  }
  optim::SGD opt(params, 0.1);
  optim::GradScaler scaler;
  for (int64_t m = 0; m < k; ++m) {
    Tensor loss;
    {
      AutocastGuard amp(DeviceType::cpu, DType::f16);
      loss = loss_of(x.slice(0, m * n / k, (m + 1) * n / k), y.slice(0, m * n / k, (m + 1) * n / k)) / double(k);
    }
    scaler.scale(loss).backward();
  }
  // Before unscaling the gradients are S times too large.
  EXPECT_GT(params[0].grad().abs().max().item<double>(), 1000 * ref[0].abs().max().item<double>());
  scaler.unscale_(opt);
  for (size_t i = 0; i < params.size(); ++i) {
    const double gmax = ref[i].abs().max().item<double>();
    EXPECT_TRUE(all_close(params[i].grad(), ref[i], 0.01 * gmax, 0.01)) << "parameter " << i;
  }
  EXPECT_TRUE(scaler.step(opt));
  scaler.update();
  EXPECT_EQ(scaler.growth_tracker(), 1);
}

// In f32 (no autocast), the exact identity: k micro-batch losses scaled by a power of two and
// unscaled once equal the unscaled accumulated gradients.
TEST(GradScaler, ScalingIsExactInF32WithAccumulation) {
  manual_seed(13);
  Tensor w = (Tensor::randn({6, 5}) * 0.5).set_requires_grad(true);
  Tensor x = Tensor::randn({12, 5});
  optim::SGD opt({w}, 0.1);
  for (int64_t m = 0; m < 3; ++m) sum(tanh(linear(x.slice(0, 4 * m, 4 * m + 4), w, Tensor()))).backward();
  Tensor plain = w.grad().clone();
  w.zero_grad();
  optim::GradScaler scaler;
  for (int64_t m = 0; m < 3; ++m) scaler.scale(sum(tanh(linear(x.slice(0, 4 * m, 4 * m + 4), w, Tensor())))).backward();
  scaler.unscale_(opt);
  EXPECT_TRUE(all_close(w.grad(), plain, 0, 0));
}

}  // namespace
}  // namespace headroom::testing
