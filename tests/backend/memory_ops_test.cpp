// Fills, arange, zeros/ones, random draws and copies on every device.
//
// These are exact operations, so they are compared element for element against values made on
// the host: a fill is the value rounded to the dtype, arange is start + i * step rounded, a
// random draw is philox_uniform / philox_normal (engine/rng.h) at the generator's offsets --
// the same function the cpu kernel calls, so on cuda the comparison says "the same numbers as
// the cpu", which DESIGN.md promises (a recomputed segment on either device replays its
// dropout masks). Copies move between devices and layouts: transposed, sliced with a step,
// expanded (stride 0), permuted and offset sources, strided destinations.
#include <cmath>

#include "device_test.h"

namespace headroom::testing {
namespace {

constexpr int64_t kLarge = int64_t{1} << 20;

std::vector<int64_t> all_sizes() {
  std::vector<int64_t> s = kSizes;
  s.push_back(kLarge);
  return s;
}

double round_to(double v, DType d) {
  switch (d) {
    case DType::f64: return v;
    case DType::f32: return static_cast<float>(v);
    case DType::f16: return static_cast<float>(Half(static_cast<float>(v)));
    case DType::bf16: return static_cast<float>(BFloat16(static_cast<float>(v)));
    case DType::i32:
    case DType::i64:
    case DType::u8: return std::trunc(v);
    case DType::boolean: return v != 0 ? 1 : 0;
  }
  return v;
}

Tensor host_tensor(const std::vector<double>& v, const Shape& shape) {
  return Tensor::from_vector(v, shape, DType::f64);
}

// ---- fill, zeros, ones, arange ----

class Factory : public DeviceTest {};

TEST_P(Factory, FullZerosOnesAndStridedFill) {
  {  // full, zeros and ones of every dtype
    const DType dtypes[] = {DType::f32, DType::f64, DType::f16, DType::bf16,
                            DType::i32, DType::i64, DType::u8,  DType::boolean};
    for (DType d : dtypes)
      for (int64_t n : all_sizes()) {
        SCOPED_TRACE(str_cat(dtype_name(d), " n=", n));
        const TensorOptions o = TensorOptions().dtype(d).device(device());
        const double value = is_floating(d) ? -3.14159 : (d == DType::boolean ? 1 : 7);
        Tensor f = Tensor::full({n}, value, o);
        EXPECT_EQ(f.dtype(), d);
        EXPECT_EQ(f.device(), device());
        EXPECT_TRUE(same(f, Tensor::full({n}, round_to(value, d), DType::f64)));
        EXPECT_TRUE(same(Tensor::zeros({n}, o), Tensor::zeros({n}, DType::f64)));
        EXPECT_TRUE(same(Tensor::ones({n}, o), Tensor::ones({n}, DType::f64)));
        // A 2-d shape, so a fill is not only ever 1-d.
        EXPECT_TRUE(same(Tensor::full({3, n}, value, o), Tensor::full({3, n}, round_to(value, d), DType::f64)));
      }
  }

  {
    // fill_ through a view that skips every other column of a transposed buffer.
    for (int64_t n : kSizes) {
      SCOPED_TRACE(str_cat("n=", n));
      Tensor buf = Tensor::zeros({2 * n, 3}, TensorOptions().dtype(DType::f32).device(device()));
      Tensor view = buf.t().slice(1, 1, 2 * n, 2);
      if (n > 1) {
        ASSERT_FALSE(view.is_contiguous());
      }
      view.fill_(2.5);
      std::vector<double> want(static_cast<size_t>(2 * n * 3), 0.0);
      for (int64_t r = 1; r < 2 * n; r += 2)
        for (int64_t c = 0; c < 3; ++c) want[static_cast<size_t>(r * 3 + c)] = 2.5;
      EXPECT_TRUE(same(buf, host_tensor(want, {2 * n, 3})));
    }
  }
}

TEST_P(Factory, ArangeEveryDtype) {
  // start and step are exact binary fractions, so start + i * step is exact in double and in
  // f32 for these sizes: the comparison does not depend on how a kernel forms the product.
  const DType dtypes[] = {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i32, DType::i64};
  for (DType d : dtypes)
    for (int64_t n : all_sizes()) {
      SCOPED_TRACE(str_cat(dtype_name(d), " n=", n));
      const double start = is_floating(d) ? -3.25 : -3, step = is_floating(d) ? 0.5 : 2;
      Tensor a =
          Tensor::arange(start, start + static_cast<double>(n) * step, step, TensorOptions().dtype(d).device(device()));
      ASSERT_EQ(a.numel(), n);
      std::vector<double> want(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) want[static_cast<size_t>(i)] = round_to(start + static_cast<double>(i) * step, d);
      EXPECT_TRUE(same(a, host_tensor(want, {n})));
    }
  // u8 within its range.
  Tensor u = Tensor::arange(0, 256, 1, TensorOptions().dtype(DType::u8).device(device()));
  EXPECT_TRUE(same(u, Tensor::arange(0, 256, 1, DType::f64)));
}

// ---- random ----

class Random : public DeviceTest {};

// The philox reference for a draw of n numbers that started at `offset` (Tensor::rand/randn).
Tensor philox_reference(bool normal, uint64_t seed, uint64_t offset, int64_t n, DType d) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const auto k = static_cast<uint64_t>(i);
    v[static_cast<size_t>(i)] = round_to(normal ? philox_normal(seed, offset, k) : philox_uniform(seed, offset, k), d);
  }
  return Tensor::from_vector(v, {n}, DType::f64);
}

TEST_P(Random, UniformAndNormalMatchPhilox) {
  // Consecutive draws of awkward sizes, so draws start at offsets that are not multiples of
  // anything a kernel might assume. Uniform values are a 24-bit integer times 2^-24: exact in
  // f32 and f64, correctly rounded into f16/bf16. Box-Muller's log, cos and sin are taken in
  // double and rounded to float on both devices, which is the correctly rounded float on every
  // input (Note [same numbers as the cpu] in kernels/cuda/copy.cu). So both must match the host
  // reference bit for bit, in every dtype.
  const uint64_t seed = 0x5eed1234;
  manual_seed(seed);
  for (bool normal : {false, true})
    for (int64_t n : all_sizes()) {
      SCOPED_TRACE(str_cat(normal ? "normal" : "uniform", " n=", n));
      const uint64_t offset = default_generator().offset();
      Tensor r = normal ? Tensor::randn({n}, opts()) : Tensor::rand({n}, opts());
      const uint64_t slots = normal ? 2 * static_cast<uint64_t>(n) : static_cast<uint64_t>(n);
      EXPECT_EQ(default_generator().offset(), offset + (slots + 3) / 4);
      EXPECT_TRUE(same(r, philox_reference(normal, seed, offset, n, dtype())));
    }
}

TEST_P(Random, Statistics) {
  // The draws also look like what they claim: mean and standard deviation within 6 standard
  // errors of U[0, 1) (1/2, 1/sqrt(12)) and N(0, 1), all uniform values in [0, 1), and two
  // successive draws different.
  manual_seed(99);
  const int64_t n = kLarge;
  const double se = 1 / std::sqrt(static_cast<double>(n));
  std::vector<double> u = host64(Tensor::rand({n}, opts())).to_vector<double>();
  std::vector<double> z = host64(Tensor::randn({n}, opts())).to_vector<double>();
  auto moments = [](const std::vector<double>& v) {
    double s = 0, ss = 0;
    for (double x : v) s += x;
    const double m = s / static_cast<double>(v.size());
    for (double x : v) ss += (x - m) * (x - m);
    return std::pair{m, std::sqrt(ss / static_cast<double>(v.size() - 1))};
  };
  auto [um, us] = moments(u);
  auto [zm, zs] = moments(z);
  // bf16 rounds values near 1 up to 1.0 (8 bits of mantissa), so only the wider dtypes keep
  // the half-open interval.
  const double hi = half() ? 1.0 : std::nextafter(1.0, 0.0);
  for (double x : u) ASSERT_TRUE(x >= 0 && x <= hi) << x;
  EXPECT_NEAR(um, 0.5, 6 * se * std::sqrt(1.0 / 12));
  EXPECT_NEAR(us, std::sqrt(1.0 / 12), 6 * se * 0.5 + (half() ? 2e-3 : 0));
  EXPECT_NEAR(zm, 0.0, 6 * se);
  EXPECT_NEAR(zs, 1.0, 6 * se + (half() ? 2e-3 : 0));
  Tensor again = Tensor::rand({n}, opts());
  EXPECT_FALSE(same(again, Tensor::from_vector(u, {n}, DType::f64)));
}

// ---- copies between devices and layouts ----

class Copy : public DeviceTest {};

TEST_P(Copy, NonContiguousSourcesAndDestinations) {
  {
    // Each view is made on the cpu (reference) and on the device from the same data, copied to a
    // contiguous tensor on the device and back; every value must survive exactly.
    struct Case {
      std::string name;
      Shape shape;
      std::function<Tensor(const Tensor&)> view;
    };
    std::vector<Case> cases;
    for (int64_t n : kSizes) {
      cases.push_back({str_cat("transposed ", n), {n, 3}, [](const Tensor& t) { return t.t(); }});
      cases.push_back(
          {str_cat("step 3 ", n), {3 * n + 2}, [](const Tensor& t) { return t.slice(0, 2, t.size(0), 3); }});
      cases.push_back({str_cat("expanded ", n), {n, 1}, [n](const Tensor& t) { return t.expand({n, 5}); }});
      cases.push_back({str_cat("offset column ", n), {4, n}, [](const Tensor& t) {
                         return t.select(0, 2).slice(0, 1, t.size(1));
                       }});
    }
    cases.push_back({"permuted 4-d large", {8, 16, 64, 128}, [](const Tensor& t) { return t.permute({3, 1, 0, 2}); }});
    cases.push_back({"transposed large", {1024, 1024}, [](const Tensor& t) { return t.t(); }});
    for (const Case& c : cases) {
      SCOPED_TRACE(c.name);
      Tensor x = randn(c.shape).to(dtype());
      Tensor want = c.view(x);
      // cpu -> device from a non-contiguous host view (to() is the identity on the cpu itself;
      // copy_ into a fresh tensor always copies).
      EXPECT_TRUE(same(want.to(device()), want));
      Tensor landed = Tensor::empty(want.shape(), opts());
      landed.copy_(want);
      EXPECT_TRUE(same(landed, want));
      // device view -> device contiguous, and device view -> cpu.
      Tensor dev_view = c.view(x.to(device()));
      EXPECT_TRUE(same(dev_view.contiguous(), want));
      EXPECT_TRUE(same(dev_view.to(Device::cpu()), want));
      EXPECT_TRUE(same(dev_view.clone(), want));
    }
  }

  {
    // copy_ into every other row of a transposed device buffer, from a cpu f64 source (a transfer
    // and a cast) and from a device f32 source (a cast on the device); the skipped rows stay.
    for (int64_t n : kSizes) {
      SCOPED_TRACE(str_cat("n=", n));
      Tensor src = randn({n, 4});
      Tensor buf = Tensor::full({4, 2 * n}, 9.0, opts());
      Tensor view = buf.t().slice(0, 0, 2 * n, 2);
      view.copy_(src);
      EXPECT_TRUE(same(view, src.to(dtype())));
      EXPECT_TRUE(same(buf.t().slice(0, 1, 2 * n, 2), Tensor::full({n, 4}, 9.0, DType::f64)));
      Tensor src32 = src.to(DType::f32).to(device());
      Tensor buf2 = Tensor::zeros({4, 2 * n}, opts());
      buf2.t().slice(0, 1, 2 * n, 2).copy_(src32);
      EXPECT_TRUE(same(buf2.t().slice(0, 1, 2 * n, 2), src.to(DType::f32).to(dtype())));
      // Broadcast source: a row copied into every row.
      Tensor row = randn({n});
      Tensor dst = Tensor::zeros({3, n}, opts());
      dst.copy_(row.to(device()));
      EXPECT_TRUE(same(dst, row.to(dtype()).expand({3, n})));
    }
  }
}

HR_DEVICE_SUITE(Factory);
HR_DEVICE_DTYPE_SUITE(Random);
HR_DEVICE_DTYPE_SUITE(Copy);

}  // namespace
}  // namespace headroom::testing
