// Group norm on the CPU: x [N, C, S] normalised per (sample n, group g) over the C/G channels
// of the group and all S positions -- forward and backward of one fused op.
//
// The values of one (n, g) are contiguous (channels g*C/G .. (g+1)*C/G - 1 of sample n, each a
// plane of S), so the forward runs the N * G groups in parallel, each with a two-pass mean and
// variance in double (a large mean does not cancel the digits of a small spread) and then the
// per-channel affine y = (x - mean) * (rstd * weight[c]) + bias[c] in acc_t (f32 for 16-bit and
// f32 data, f64 for f64). mean and rstd are rounded to the [N, G] backward gets (f32, f64 for
// f64 data: Note [statistics dtype]) only after y is written with the double values.
//
// Backward keeps nothing but x and those statistics (no normalised copy of the input): one
// parallel pass over the N * C planes takes per-plane sums of dy and dy * xhat in double, from
// which both the group sums dx needs (sum g = sum_c w[c] sum dy, sum g xhat likewise) and the
// per-channel dweight / dbias (sums over n in a fixed order: deterministic, independent of the
// thread count) follow; a second parallel pass writes dx = k_dy dy + k_x (x - mean) + k_c per
// plane. weight, bias, dweight, dbias are [C] of any float dtype and stride (an f16 input may run
// with f32 parameters under autocast), read into and written from double vectors. Everything is
// written (=), never accumulated.
#include <cmath>
#include <vector>

#include "kernels/contract_checks.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/strided.h"

namespace headroom::cpu {

namespace {

using kernels::GroupNormGeometry;

// The c values of a [C] parameter (any float dtype, any stride; checked by the caller) as
// doubles; `fill` when undefined.
std::vector<double> read_param(const Tensor& t, int64_t c, double fill, const char* op) {
  if (!t.defined()) return std::vector<double>(static_cast<size_t>(c), fill);
  std::vector<double> v(static_cast<size_t>(c));
  dispatch_float(t.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* p = static_cast<const T*>(t.raw_data());
    for (int64_t i = 0; i < c; ++i) v[static_cast<size_t>(i)] = static_cast<double>(p[i * t.stride(0)]);
  });
  return v;
}

void write_param(const Tensor& t, const std::vector<double>& v, const char* op) {
  if (!t.defined()) return;
  const auto c = static_cast<int64_t>(v.size());
  dispatch_float(t.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* p = static_cast<T*>(t.raw_data());
    for (int64_t i = 0; i < c; ++i)
      p[i * t.stride(0)] = static_cast<T>(static_cast<acc_t<T>>(v[static_cast<size_t>(i)]));
  });
}

}  // namespace

void CpuBackend::impl_group_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups,
                                         double eps, const Tensor& y, const Tensor& save_mean,
                                         const Tensor& save_rstd) {
  const char* op = "group_norm";
  const GroupNormGeometry g = kernels::group_norm_geometry(x, groups);  // checked by Backend::group_norm_forward
  const std::vector<double> w = read_param(weight, g.c, 1.0, op);
  const std::vector<double> bv = read_param(bias, g.c, 0.0, op);
  const int64_t rows = g.n * g.g, m = g.cg * g.s;
  if (rows == 0) return;
  HR_CHECK(m > 0, ValueError, op, ": cannot normalise groups of size 0 in ", describe(x));
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    C* pmean = static_cast<C*>(save_mean.raw_data());  // f32, or f64 for f64 data (statistics_dtype)
    C* prstd = static_cast<C*>(save_rstd.raw_data());
    const T* px = static_cast<const T*>(x.raw_data());
    T* py = static_cast<T*>(y.raw_data());
    parallel_for(rows, std::max<int64_t>(1, kParallelGrain / m), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* xr = px + r * m;
        T* yr = py + r * m;
        double s = 0;
        for (int64_t j = 0; j < m; ++j) s += static_cast<double>(static_cast<C>(xr[j]));
        const double mu = s / static_cast<double>(m);
        double ss = 0;
        for (int64_t j = 0; j < m; ++j) {
          const double d = static_cast<double>(static_cast<C>(xr[j])) - mu;
          ss += d * d;
        }
        const double rs = 1.0 / std::sqrt(ss / static_cast<double>(m) + eps);
        pmean[r] = static_cast<C>(mu);
        prstd[r] = static_cast<C>(rs);
        const C cmu = static_cast<C>(mu);
        const int64_t c0 = (r % g.g) * g.cg;
        for (int64_t k = 0; k < g.cg; ++k) {
          const auto ch = static_cast<size_t>(c0 + k);
          const C scale = static_cast<C>(rs * w[ch]), shift = static_cast<C>(bv[ch]);
          const T* xp = xr + k * g.s;
          T* yp = yr + k * g.s;
          for (int64_t j = 0; j < g.s; ++j) yp[j] = static_cast<T>((static_cast<C>(xp[j]) - cmu) * scale + shift);
        }
      }
    });
  });
}

void CpuBackend::impl_group_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                          const Tensor& save_mean, const Tensor& save_rstd, int64_t groups,
                                          const Tensor& dx, const Tensor& dweight, const Tensor& dbias) {
  const char* op = "group_norm backward";
  const GroupNormGeometry g = kernels::group_norm_geometry(x, groups);  // checked by Backend::group_norm_backward
  const std::vector<double> w = read_param(weight, g.c, 1.0, op);
  const int64_t planes = g.n * g.c, m = g.cg * g.s;
  std::vector<double> dw(static_cast<size_t>(g.c), 0.0), db(static_cast<size_t>(g.c), 0.0);
  if (planes > 0 && g.s > 0 && (dx.defined() || dweight.defined() || dbias.defined())) {
    // The [N, G] statistics as doubles (f32, or f64 for f64 data).
    std::vector<double> pmean(static_cast<size_t>(g.n * g.g)), prstd(pmean.size());
    dispatch_float(save_mean.dtype(), op, [&](auto tag) {
      using S = typename decltype(tag)::type;
      for (size_t i = 0; i < pmean.size(); ++i) {
        pmean[i] = static_cast<double>(static_cast<const S*>(save_mean.raw_data())[i]);
        prstd[i] = static_cast<double>(static_cast<const S*>(save_rstd.raw_data())[i]);
      }
    });
    // Per-plane sums of dy and dy * xhat, [N, C] in double.
    std::vector<double> sum_dy(static_cast<size_t>(planes)), sum_dy_xhat(static_cast<size_t>(planes));
    const int64_t plane_grain = std::max<int64_t>(1, kParallelGrain / g.s);
    dispatch_float(x.dtype(), op, [&](auto tag) {
      using T = typename decltype(tag)::type;
      using C = acc_t<T>;
      const T* px = static_cast<const T*>(x.raw_data());
      const T* pdy = static_cast<const T*>(dy.raw_data());
      parallel_for(planes, plane_grain, [&](int64_t b, int64_t e) {
        for (int64_t p = b; p < e; ++p) {
          const int64_t r = (p / g.c) * g.g + (p % g.c) / g.cg;  // the plane's (n, g)
          const C mu = static_cast<C>(pmean[static_cast<size_t>(r)]),
                  rs = static_cast<C>(prstd[static_cast<size_t>(r)]);
          const T* xp = px + p * g.s;
          const T* dyp = pdy + p * g.s;
          double s = 0, sx = 0;
          for (int64_t j = 0; j < g.s; ++j) {
            const C d = static_cast<C>(dyp[j]);
            s += static_cast<double>(d);
            sx += static_cast<double>(d * ((static_cast<C>(xp[j]) - mu) * rs));
          }
          sum_dy[static_cast<size_t>(p)] = s;
          sum_dy_xhat[static_cast<size_t>(p)] = sx;
        }
      });
      if (!dx.defined()) return;
      // Per (n, g): dx = k_dy[c] * dy + k_x * (x - mean) + k_c with k_dy = rstd * w[c],
      // k_x = -rstd^2 * mean(g * xhat), k_c = -rstd * mean(g).
      const int64_t rows = g.n * g.g;
      std::vector<C> k_x(static_cast<size_t>(rows)), k_c(static_cast<size_t>(rows));
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = r / g.g, c0 = (r % g.g) * g.cg;
        double sg = 0, sgx = 0;
        for (int64_t k = 0; k < g.cg; ++k) {
          const auto p = static_cast<size_t>(i * g.c + c0 + k);
          sg += w[static_cast<size_t>(c0 + k)] * sum_dy[p];
          sgx += w[static_cast<size_t>(c0 + k)] * sum_dy_xhat[p];
        }
        const double rs = static_cast<double>(prstd[static_cast<size_t>(r)]);
        k_x[static_cast<size_t>(r)] = static_cast<C>(-rs * rs * sgx / static_cast<double>(m));
        k_c[static_cast<size_t>(r)] = static_cast<C>(-rs * sg / static_cast<double>(m));
      }
      T* pdx = static_cast<T*>(dx.raw_data());
      parallel_for(planes, plane_grain, [&](int64_t b, int64_t e) {
        for (int64_t p = b; p < e; ++p) {
          const int64_t ch = p % g.c, r = (p / g.c) * g.g + ch / g.cg;
          const C mu = static_cast<C>(pmean[static_cast<size_t>(r)]);
          const C kdy = static_cast<C>(static_cast<double>(prstd[static_cast<size_t>(r)]) * w[static_cast<size_t>(ch)]);
          const C kx = k_x[static_cast<size_t>(r)], kc = k_c[static_cast<size_t>(r)];
          const T* xp = px + p * g.s;
          const T* dyp = pdy + p * g.s;
          T* dxp = pdx + p * g.s;
          for (int64_t j = 0; j < g.s; ++j)
            dxp[j] = static_cast<T>(kdy * static_cast<C>(dyp[j]) + kx * (static_cast<C>(xp[j]) - mu) + kc);
        }
      });
    });
    // dweight, dbias: per channel over n in order.
    for (int64_t i = 0; i < g.n; ++i)
      for (int64_t ch = 0; ch < g.c; ++ch) {
        const auto p = static_cast<size_t>(i * g.c + ch);
        dw[static_cast<size_t>(ch)] += sum_dy_xhat[p];
        db[static_cast<size_t>(ch)] += sum_dy[p];
      }
  }
  write_param(dweight, dw, op);
  write_param(dbias, db, op);
}

}  // namespace headroom::cpu
