// The fixture of the backend tests: device selection and skipping, inputs, comparison and the
// common forward-and-backward check (device_test.h says why it is shaped so).
#include "device_test.h"

#include "engine/allocator.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <span>

#ifndef HEADROOM_TEST_DEVICE
#error "HEADROOM_TEST_DEVICE must be defined (\"cpu\" or \"cuda\"): see tests/CMakeLists.txt"
#endif

namespace headroom::testing {

Device test_device() { return Device::parse(HEADROOM_TEST_DEVICE); }

void DeviceTest::SetUp() {
  if (device().is_cuda()) {
#ifdef HEADROOM_WITH_CUDA
    if (device_count(DeviceType::cuda) == 0)
      GTEST_SKIP() << "no CUDA device (device_count(cuda) == 0): this test needs a GPU";
#else
    GTEST_SKIP() << "built without CUDA (HEADROOM_WITH_CUDA undefined)";
#endif
  }
  // A fixed seed; HEADROOM_TEST_SEED picks another, to check that the tolerances hold for any
  // inputs rather than for one lucky draw.
  const char* seed = std::getenv("HEADROOM_TEST_SEED");
  manual_seed(seed ? std::strtoull(seed, nullptr, 0) : 0xbac4e9d);
}

namespace {
// Test inputs in bulk -- tens of millions of values a run, where Tensor::rand/randn spend a
// Philox counter and float transcendentals on each (engine/rng.h): the global generator gives
// one counter per draw, whose Philox output keys a splitmix64 stream over the elements, so a
// draw is still fixed by manual_seed and by its place in the sequence of draws.
struct Draw {
  uint64_t key;
  explicit Draw() {
    Generator& gen = default_generator();
    const std::array<uint32_t, 4> r = philox4x32(gen.advance(4), gen.seed());
    key = (static_cast<uint64_t>(r[0]) << 32) | r[1];
  }
  uint64_t bits(uint64_t i) const {
    uint64_t z = key + (i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in (0, 1).
  double uniform(uint64_t i) const { return (static_cast<double>(bits(i) >> 11) + 0.5) * 0x1p-53; }
  // Bell-shaped with mean 0 and variance 1: the sum of four 16-bit uniforms (Irwin-Hall),
  // centred and scaled; |x| <= 2 sqrt(3), so no input is an outlier by accident.
  double normal(uint64_t i) const {
    const uint64_t b = bits(i);
    double s = 0;
    for (int k = 0; k < 4; ++k) s += static_cast<double>((b >> (16 * k)) & 0xffff) + 0.5;
    return (s * 0x1p-16 - 2) * 1.7320508075688772;
  }
};

// An f64 cpu tensor of `shape` with element i = f(i).
template <typename F>
Tensor fill_f64(const Shape& shape, F&& f) {
  Tensor t = Tensor::empty(shape, DType::f64);
  double* p = t.data<double>();
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) p[i] = f(static_cast<uint64_t>(i));
  return t;
}
}  // namespace

Tensor DeviceTest::randn(const Shape& shape, double scale, double shift) {
  const Draw d;
  return fill_f64(shape, [&](uint64_t i) { return d.normal(i) * scale + shift; });
}

Tensor DeviceTest::uniform(const Shape& shape, double lo, double hi) {
  const Draw d;
  return fill_f64(shape, [&](uint64_t i) { return lo + (hi - lo) * d.uniform(i); });
}

Tensor DeviceTest::away_from_zero(const Shape& shape, double gap, double hi) {
  const Draw d;
  return fill_f64(shape, [&](uint64_t i) {
    const double u = d.uniform(i);
    // The sign from u < 1/2, the magnitude from the rest of u.
    return (u < 0.5 ? -1 : 1) * (gap + (hi - gap) * std::fmod(2 * u, 1.0));
  });
}

Tensor DeviceTest::randint(const Shape& shape, int64_t n) {
  const Draw d;
  Tensor t = Tensor::empty(shape, DType::i64);
  int64_t* p = t.data<int64_t>();
  for (int64_t i = 0; i < t.numel(); ++i)
    p[i] = std::min<int64_t>(n - 1, static_cast<int64_t>(d.uniform(static_cast<uint64_t>(i)) * static_cast<double>(n)));
  return t;
}

namespace {
// t as a new leaf with storage of its own: to() returns its input when there is nothing to
// convert (f64 on the cpu), and an op that writes in place (batch_norm's running statistics,
// an optimizer step) must not reach the caller's tensor or the other side's copy.
Tensor fresh_leaf(const Tensor& t, const Tensor& x, bool requires_grad) {
  Tensor out = t.raw_data() == x.raw_data() ? t.detach().clone() : t.detach();
  if (requires_grad) out.set_requires_grad(true);
  return out;
}
}  // namespace

Tensor DeviceTest::ref_in(const Tensor& x, bool requires_grad) const {
  return fresh_leaf(is_floating(x.dtype()) ? x.to(dtype()).to(DType::f64) : x, x, requires_grad);
}

Tensor DeviceTest::dev_in(const Tensor& x, bool requires_grad) const {
  return fresh_leaf((is_floating(x.dtype()) ? x.to(dtype()) : x).to(device()), x, requires_grad);
}

Tensor DeviceTest::host64(const Tensor& t) { return t.detach().to(Device::cpu()).to(DType::f64); }

::testing::AssertionResult DeviceTest::close(const Tensor& got, const Tensor& ref, Tol tol) const {
  if (!got.defined() || !ref.defined())
    return ::testing::AssertionFailure() << "undefined tensor (got " << got.defined() << ", ref " << ref.defined()
                                         << ")";
  if (!(got.device() == device()))
    return ::testing::AssertionFailure() << "result is on " << got.device() << ", expected " << device();
  if (got.shape() != ref.shape())
    return ::testing::AssertionFailure() << "shapes differ: " << shape_str(got.shape()) << " vs "
                                         << shape_str(ref.shape());
  // all_close's rule (|got - ref| <= atol + rtol |ref|, NaN only against NaN, inf only against
  // the same inf) in one pass over host copies, since atol needs the reference's scale first.
  const std::vector<double> g = got.to_vector<double>();
  // The reference is usually a contiguous f64 cpu tensor already: read it in place.
  const Tensor ref_host = host64(ref).contiguous();
  const std::span<const double> r(ref_host.data<double>(), static_cast<size_t>(ref_host.numel()));
  double largest = 0;
  for (double v : r)
    if (std::isfinite(v)) largest = std::max(largest, std::abs(v));
  const double scale = std::max(largest, tol.scale_floor);
  const double base_atol = std::max(default_atol(dtype()), default_atol(tol.at_least));
  const double base_rtol = std::max(default_rtol(dtype()), default_rtol(tol.at_least));
  const double tiny = dtype() == DType::f16 ? 0x1p-24 : dtype() == DType::f64 ? 0x1p-1022 : 0x1p-126;
  const double atol = base_atol * tol.abs * (scale > 0 ? scale : 1.0) + tiny;
  const double rtol = base_rtol * tol.rel;
  double worst = 0, worst_factor = 0;
  size_t at = 0;
  int64_t bad = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    double excess;
    if (std::isnan(g[i]) || std::isnan(r[i])) {
      excess = std::isnan(g[i]) == std::isnan(r[i]) ? 0 : INFINITY;
    } else if (std::isinf(r[i]) || std::isinf(g[i])) {
      excess = g[i] == r[i] ? 0 : INFINITY;
    } else {
      const double diff = std::abs(g[i] - r[i]);
      excess = diff - (atol + rtol * std::abs(r[i]));
      // The abs factor this element would need at the given rtol (for tuning Tol).
      worst_factor = std::max(worst_factor, (diff - rtol * std::abs(r[i]) - tiny) / ((atol - tiny) / tol.abs));
    }
    if (excess > 0) ++bad;
    if (excess > worst) {
      worst = excess;
      at = i;
    }
  }
  if (std::getenv("HEADROOM_TEST_TOL_REPORT"))
    std::printf("  [tol] %s needs abs factor %.3g (given %.3g, scale %.3g)\n", dtype_name(dtype()), worst_factor,
                tol.abs, scale);
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << r.size() << " elements out of tolerance; worst at " << at
                                       << ": " << g[at] << " vs " << r[at] << " (atol " << atol << " = " << tol.abs
                                       << " x default x scale " << scale << ", rtol " << rtol << "); abs factor needed "
                                       << worst_factor;
}

::testing::AssertionResult DeviceTest::same(const Tensor& got, const Tensor& want) {
  if (got.shape() != want.shape())
    return ::testing::AssertionFailure() << "shapes differ: " << shape_str(got.shape()) << " vs "
                                         << shape_str(want.shape());
  std::vector<double> a = host64(got).to_vector<double>(), b = host64(want).to_vector<double>();
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < a.size(); ++i) {
    const bool eq = a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i]));
    if (!eq) {
      if (first < 0) first = static_cast<int64_t>(i);
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  const auto f = static_cast<size_t>(first);
  return ::testing::AssertionFailure() << bad << " of " << a.size() << " elements differ; first at " << first << ": "
                                       << a[f] << " vs " << b[f];
}

void DeviceTest::check_op(const std::string& what, const OpFn& fn, const std::vector<Tensor>& inputs, Tol fwd, Tol bwd,
                          bool backward, const OpFn& ref_fn, const std::vector<bool>& grad_mask) {
  SCOPED_TRACE(what);
  std::vector<Tensor> ref_inputs, dev_inputs;
  std::vector<bool> wants_grad;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const bool g = backward && is_floating(inputs[i].dtype()) && (grad_mask.empty() || grad_mask.at(i));
    wants_grad.push_back(g);
    // Rounded once; the reference takes it to f64, the op under test to the device.
    const Tensor rounded = is_floating(inputs[i].dtype()) ? inputs[i].to(dtype()) : inputs[i];
    ref_inputs.push_back(fresh_leaf(is_floating(inputs[i].dtype()) ? rounded.to(DType::f64) : rounded, inputs[i], g));
    dev_inputs.push_back(fresh_leaf(rounded.to(device()), inputs[i], g));
  }
  Tensor ref = (ref_fn ? ref_fn : fn)(ref_inputs);
  Tensor got = fn(dev_inputs);
  ASSERT_TRUE(got.defined());
  EXPECT_EQ(got.dtype(), ref.dtype() == DType::f64 ? dtype() : ref.dtype()) << "output dtype";
  if (is_floating(ref.dtype())) {
    EXPECT_TRUE(close(got, ref, fwd)) << "forward";
  } else {
    EXPECT_EQ(got.device(), device());
    EXPECT_TRUE(same(got, ref)) << "forward (integer or bool output: exact)";
  }
  if (!backward) return;

  ASSERT_EQ(ref.dtype(), DType::f64) << "backward needs a float output";
  const Tensor w = randn(ref.shape()).to(dtype());
  sum(ref * w.to(DType::f64)).backward();
  sum(got * w.to(device())).backward();
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!wants_grad[i]) continue;
    SCOPED_TRACE(str_cat("gradient of input ", i));
    const Tensor gr = ref_inputs[i].grad(), gd = dev_inputs[i].grad();
    ASSERT_TRUE(gr.defined()) << "the reference has no gradient";
    ASSERT_TRUE(gd.defined()) << "no gradient reached the input";
    EXPECT_EQ(gd.dtype(), dtype());
    EXPECT_TRUE(close(gd, gr, bwd)) << "backward";
  }
}

std::string device_dtype_name(const ::testing::TestParamInfo<std::tuple<Device, DType>>& info) {
  const Device d = std::get<0>(info.param);
  return str_cat(d.is_cpu() ? "cpu" : "cuda", "_", dtype_name(std::get<1>(info.param)));
}

std::string device_only_name(const ::testing::TestParamInfo<std::tuple<Device, DType>>& info) {
  return std::get<0>(info.param).is_cpu() ? "cpu" : "cuda";
}

}  // namespace headroom::testing
