// Layer norm and batch norm on the CPU: forward and backward of each in one place.
//
// Statistics (means, variances and the gradient sums) accumulate in double whatever the
// storage dtype, because they run over whole rows or channels; the per-element arithmetic is
// done in acc_t (f32 for f16/bf16/f32, f64 for f64). The forward normalises with the double
// statistics and only then rounds them to the mean/rstd that backward gets -- f32, or f64 for
// f64 data (statistics_dtype), so f64 gradients are f64-accurate and gradcheck means what it says.
//
// Per-feature tensors (weight, bias, running stats, dweight, dbias) are small and may have any
// float dtype and stride: they are read into and written from std::vector<double>, so an f16
// input can run with f32 parameters (mixed precision) without a cast kernel. All gradients are
// written (=), never accumulated: the autograd engine sums fan-in itself.
//
// Layer norm ([M, N], over N) runs rows in parallel; its dweight/dbias are column sums, taken
// as per-block partial sums over a fixed number of row blocks (independent of the thread count,
// so results are reproducible) and then added up. Batch norm ([N, C, S], per channel) runs
// channels in parallel for the statistics and (n, c) planes for the elementwise passes.
#include <cmath>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/strided.h"

namespace headroom::cpu {

namespace {

constexpr int64_t kMaxRowBlocks = 32;
constexpr int64_t kPartialBudget = int64_t{1} << 22;  // doubles of partial sums we allow

// The n values of a 1-d tensor (any float dtype, any stride) as doubles; `fill` when undefined.
std::vector<double> read_vector(const Tensor& t, int64_t n, double fill, const char* op, const char* what) {
  if (!t.defined()) return std::vector<double>(static_cast<size_t>(n), fill);
  HR_CHECK(t.dim() == 1 && t.size(0) == n, ShapeError, op, ": ", what, " must have shape ", shape_str({n}), ", got ",
           describe(t));
  std::vector<double> v(static_cast<size_t>(n));
  dispatch_float(t.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* p = static_cast<const T*>(t.raw_data());
    for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<double>(p[i * t.stride(0)]);
  });
  return v;
}

// Writes v into a 1-d tensor of any float dtype and stride; nothing when t is undefined.
void write_vector(const Tensor& t, const std::vector<double>& v, const char* op, const char* what) {
  if (!t.defined()) return;
  const auto n = static_cast<int64_t>(v.size());
  HR_CHECK(t.dim() == 1 && t.size(0) == n, ShapeError, op, ": ", what, " must have shape ", shape_str({n}), ", got ",
           describe(t));
  dispatch_float(t.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    T* p = static_cast<T*>(t.raw_data());
    for (int64_t i = 0; i < n; ++i) p[i * t.stride(0)] = static_cast<T>(static_cast<C>(v[static_cast<size_t>(i)]));
  });
}

}  // namespace

// ---- layer norm ----

void CpuBackend::impl_layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                                         const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  const char* op = "layer_norm";
  // The arguments are checked by Backend::layer_norm_forward (Note [op table]).
  const int64_t m = x.size(0), n = x.size(1);
  if (m == 0) return;
  const std::vector<double> w = read_vector(weight, n, 1.0, op, "weight");
  const std::vector<double> bv = read_vector(bias, n, 0.0, op, "bias");
  const bool affine = weight.defined() || bias.defined();
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    C* pmean = static_cast<C*>(mean.raw_data());
    C* prstd = static_cast<C*>(rstd.raw_data());
    const T* px = static_cast<const T*>(x.raw_data());
    T* py = static_cast<T*>(y.raw_data());
    std::vector<C> wc(w.begin(), w.end()), bc(bv.begin(), bv.end());
    parallel_for(m, std::max<int64_t>(1, kParallelGrain / n), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* xr = px + r * n;
        T* yr = py + r * n;
        double s = 0;
        for (int64_t j = 0; j < n; ++j) s += static_cast<double>(static_cast<C>(xr[j]));
        const double mu = s / static_cast<double>(n);
        double ss = 0;
        for (int64_t j = 0; j < n; ++j) {
          const double d = static_cast<double>(static_cast<C>(xr[j])) - mu;
          ss += d * d;
        }
        const double rs = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
        pmean[r] = static_cast<C>(mu);
        prstd[r] = static_cast<C>(rs);
        const C cmu = static_cast<C>(mu), crs = static_cast<C>(rs);
        if (affine) {
          for (int64_t j = 0; j < n; ++j)
            yr[j] = static_cast<T>((static_cast<C>(xr[j]) - cmu) * crs * wc[static_cast<size_t>(j)] +
                                   bc[static_cast<size_t>(j)]);
        } else {
          for (int64_t j = 0; j < n; ++j) yr[j] = static_cast<T>((static_cast<C>(xr[j]) - cmu) * crs);
        }
      }
    });
  });
}

// With xhat = (x - mean) * rstd and g = dy * weight:
//   dx = rstd * (g - mean_j(g) - xhat * mean_j(g * xhat))
//   dweight = sum_rows(dy * xhat), dbias = sum_rows(dy)
void CpuBackend::impl_layer_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                                          const Tensor& rstd, const Tensor& dx, const Tensor& dweight,
                                          const Tensor& dbias) {
  const char* op = "layer_norm backward";
  // The arguments are checked by Backend::layer_norm_backward (Note [op table]).
  const int64_t m = x.size(0), n = x.size(1);
  const std::vector<double> w = read_vector(weight, n, 1.0, op, "weight");
  const bool want_params = dweight.defined() || dbias.defined();
  std::vector<double> dw(static_cast<size_t>(n), 0.0), db(static_cast<size_t>(n), 0.0);
  if (m > 0 && n > 0 && (dx.defined() || want_params)) {
    // Row blocks for the column sums: a fixed count, so the summation order does not depend
    // on how many threads run.
    int64_t blocks = std::min(m, kMaxRowBlocks);
    if (want_params) blocks = std::max<int64_t>(1, std::min(blocks, kPartialBudget / (2 * n)));
    else blocks = std::min(m, std::max<int64_t>(1, m * n / kParallelGrain));
    std::vector<double> part_w(want_params ? static_cast<size_t>(blocks * n) : 0);
    std::vector<double> part_b(want_params ? static_cast<size_t>(blocks * n) : 0);
    dispatch_float(x.dtype(), op, [&](auto tag) {
      using T = typename decltype(tag)::type;
      using C = acc_t<T>;
      const C* pmean = static_cast<const C*>(mean.raw_data());
      const C* prstd = static_cast<const C*>(rstd.raw_data());
      const T* px = static_cast<const T*>(x.raw_data());
      const T* pdy = static_cast<const T*>(dy.raw_data());
      T* pdx = dx.defined() ? static_cast<T*>(dx.raw_data()) : nullptr;
      std::vector<C> wc(w.begin(), w.end());
      const int64_t block_work = std::max<int64_t>(1, (m / blocks) * n);
      parallel_for(blocks, std::max<int64_t>(1, kParallelGrain / block_work), [&](int64_t b0, int64_t b1) {
        std::vector<C> xhat(static_cast<size_t>(n));
        for (int64_t blk = b0; blk < b1; ++blk) {
          double* pw = want_params ? part_w.data() + blk * n : nullptr;
          double* pb = want_params ? part_b.data() + blk * n : nullptr;
          const int64_t r0 = m * blk / blocks, r1 = m * (blk + 1) / blocks;
          for (int64_t r = r0; r < r1; ++r) {
            const T* xr = px + r * n;
            const T* dyr = pdy + r * n;
            const C mu = static_cast<C>(pmean[r]), rs = static_cast<C>(prstd[r]);
            double sum_g = 0, sum_gx = 0;
            for (int64_t j = 0; j < n; ++j) {
              const C xh = (static_cast<C>(xr[j]) - mu) * rs;
              const C d = static_cast<C>(dyr[j]);
              const C g = d * wc[static_cast<size_t>(j)];
              xhat[static_cast<size_t>(j)] = xh;
              sum_g += static_cast<double>(g);
              sum_gx += static_cast<double>(g * xh);
              if (pw) {
                pw[j] += static_cast<double>(d * xh);
                pb[j] += static_cast<double>(d);
              }
            }
            if (!pdx) continue;
            const C mg = static_cast<C>(sum_g / static_cast<double>(n));
            const C mgx = static_cast<C>(sum_gx / static_cast<double>(n));
            T* dxr = pdx + r * n;
            for (int64_t j = 0; j < n; ++j) {
              const C g = static_cast<C>(dyr[j]) * wc[static_cast<size_t>(j)];
              dxr[j] = static_cast<T>(rs * (g - mg - xhat[static_cast<size_t>(j)] * mgx));
            }
          }
        }
      });
    });
    if (want_params) {
      for (int64_t blk = 0; blk < blocks; ++blk)
        for (int64_t j = 0; j < n; ++j) {
          dw[static_cast<size_t>(j)] += part_w[static_cast<size_t>(blk * n + j)];
          db[static_cast<size_t>(j)] += part_b[static_cast<size_t>(blk * n + j)];
        }
    }
  }
  write_vector(dweight, dw, op, "dweight");
  write_vector(dbias, db, op, "dbias");
}

// ---- batch norm ----

namespace {

struct BatchGeometry {
  int64_t n = 0, c = 0, s = 0;
};

// The sizes of an x that passed the batch_norm contract (Note [op table]).
BatchGeometry batch_geometry(const Tensor& x) { return {x.size(0), x.size(1), x.size(2)}; }

}  // namespace

namespace {

// Note [batch-norm sums]: the per-channel sums run over N * S values in f64. One accumulator is
// a chain of dependent adds (four cycles each, no vectorisation: the compiler may not reorder
// them), which made the statistics about 5% of a ResNet-18 step on the CPU. Eight independent
// accumulators, combined in a fixed order at the end, vectorise and keep the result the same
// from run to run and at every thread count (each channel is summed by one thread).
constexpr int kLanes = 8;

inline double combine(const double (&a)[kLanes], double tail) {
  return (((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))) + tail;
}

// sum of x
template <typename T, typename C>
double plane_sum(const T* __restrict x, int64_t n) {
  double a[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int j = 0; j < kLanes; ++j) a[j] += static_cast<double>(static_cast<C>(x[k + j]));
  double t = 0;
  for (; k < n; ++k) t += static_cast<double>(static_cast<C>(x[k]));
  return combine(a, t);
}

// sum of (x - m)^2
template <typename T, typename C>
double plane_squared_deviation(const T* __restrict x, int64_t n, double m) {
  double a[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const double d = static_cast<double>(static_cast<C>(x[k + j])) - m;
      a[j] += d * d;
    }
  double t = 0;
  for (; k < n; ++k) {
    const double d = static_cast<double>(static_cast<C>(x[k])) - m;
    t += d * d;
  }
  return combine(a, t);
}

// sum of dy, and sum of dy * (x - m) * is (computed in C, summed in f64)
template <typename T, typename C>
void plane_grad_sums(const T* __restrict dy, const T* __restrict x, int64_t n, C m, C is, double* s, double* sx) {
  double a[kLanes] = {}, b[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const C d = static_cast<C>(dy[k + j]);
      a[j] += static_cast<double>(d);
      b[j] += static_cast<double>(d * (static_cast<C>(x[k + j]) - m) * is);
    }
  double ta = 0, tb = 0;
  for (; k < n; ++k) {
    const C d = static_cast<C>(dy[k]);
    ta += static_cast<double>(d);
    tb += static_cast<double>(d * (static_cast<C>(x[k]) - m) * is);
  }
  *s += combine(a, ta);
  *sx += combine(b, tb);
}

}  // namespace

void CpuBackend::impl_batch_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                         const Tensor& running_mean, const Tensor& running_var, bool training,
                                         double momentum, double eps, const Tensor& y, const Tensor& save_mean,
                                         const Tensor& save_invstd) {
  const char* op = "batch_norm";
  const BatchGeometry g = batch_geometry(x);
  const int64_t count = g.n * g.s;
  const std::vector<double> w = read_vector(weight, g.c, 1.0, op, "weight");
  const std::vector<double> bv = read_vector(bias, g.c, 0.0, op, "bias");
  std::vector<double> mu(static_cast<size_t>(g.c)), invstd(static_cast<size_t>(g.c));
  if (training) {
    std::vector<double> var_biased(static_cast<size_t>(g.c));
    dispatch_float(x.dtype(), op, [&](auto tag) {
      using T = typename decltype(tag)::type;
      using C = acc_t<T>;
      const T* px = static_cast<const T*>(x.raw_data());
      parallel_for(g.c, std::max<int64_t>(1, kParallelGrain / count), [&](int64_t b, int64_t e) {
        for (int64_t ch = b; ch < e; ++ch) {
          double s = 0, ss = 0;  // Note [batch-norm sums]
          for (int64_t i = 0; i < g.n; ++i) s += plane_sum<T, C>(px + (i * g.c + ch) * g.s, g.s);
          const double m = s / static_cast<double>(count);
          for (int64_t i = 0; i < g.n; ++i) ss += plane_squared_deviation<T, C>(px + (i * g.c + ch) * g.s, g.s, m);
          mu[static_cast<size_t>(ch)] = m;
          var_biased[static_cast<size_t>(ch)] = ss / static_cast<double>(count);
        }
      });
    });
    for (size_t ch = 0; ch < mu.size(); ++ch) invstd[ch] = 1.0 / std::sqrt(var_biased[ch] + eps);
    // Running statistics: the unbiased variance, as PyTorch does.
    if (running_mean.defined()) {
      std::vector<double> rm = read_vector(running_mean, g.c, 0.0, op, "running_mean");
      for (size_t ch = 0; ch < rm.size(); ++ch) rm[ch] = (1 - momentum) * rm[ch] + momentum * mu[ch];
      write_vector(running_mean, rm, op, "running_mean");
    }
    if (running_var.defined()) {
      std::vector<double> rv = read_vector(running_var, g.c, 1.0, op, "running_var");
      const double bessel = static_cast<double>(count) / static_cast<double>(count - 1);
      for (size_t ch = 0; ch < rv.size(); ++ch) rv[ch] = (1 - momentum) * rv[ch] + momentum * var_biased[ch] * bessel;
      write_vector(running_var, rv, op, "running_var");
    }
  } else {
    mu = read_vector(running_mean, g.c, 0.0, op, "running_mean");
    std::vector<double> rv = read_vector(running_var, g.c, 1.0, op, "running_var");
    for (size_t ch = 0; ch < rv.size(); ++ch) invstd[ch] = 1.0 / std::sqrt(rv[ch] + eps);
  }
  dispatch_float(save_mean.dtype(), op, [&](auto tag) {  // f32, or f64 for f64 data
    using S = typename decltype(tag)::type;
    S* psm = static_cast<S*>(save_mean.raw_data());
    S* psi = static_cast<S*>(save_invstd.raw_data());
    for (size_t ch = 0; ch < mu.size(); ++ch) {
      psm[ch] = static_cast<S>(mu[ch]);
      psi[ch] = static_cast<S>(invstd[ch]);
    }
  });
  if (x.numel() == 0) return;
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    const T* px = static_cast<const T*>(x.raw_data());
    T* py = static_cast<T*>(y.raw_data());
    // y = (x - mean) * scale + bias per channel; the mean is subtracted first so that a large
    // mean does not cancel away the digits of a small spread.
    std::vector<C> cmu(static_cast<size_t>(g.c)), scale(static_cast<size_t>(g.c)), shift(static_cast<size_t>(g.c));
    for (size_t ch = 0; ch < scale.size(); ++ch) {
      cmu[ch] = static_cast<C>(mu[ch]);
      scale[ch] = static_cast<C>(invstd[ch] * w[ch]);
      shift[ch] = static_cast<C>(bv[ch]);
    }
    const int64_t plane_grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.s, 1));
    parallel_for(g.n * g.c, plane_grain, [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) {
        const auto ch = static_cast<size_t>(p % g.c);
        const T* xp = px + p * g.s;
        T* yp = py + p * g.s;
        const C mc = cmu[ch], sc = scale[ch], sh = shift[ch];
        for (int64_t k = 0; k < g.s; ++k) yp[k] = static_cast<T>((static_cast<C>(xp[k]) - mc) * sc + sh);
      }
    });
  });
}

// With xhat = (x - mean) * invstd, per channel over the N * S values:
//   dbias = sum(dy), dweight = sum(dy * xhat)
//   training: dx = weight * invstd * (dy - dbias / count - xhat * dweight / count)
//   eval:     dx = weight * invstd * dy (the statistics are constants)
void CpuBackend::impl_batch_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                          const Tensor& save_mean, const Tensor& save_invstd, bool training,
                                          const Tensor& dx, const Tensor& dweight, const Tensor& dbias) {
  const char* op = "batch_norm backward";
  const BatchGeometry g = batch_geometry(x);
  const int64_t count = g.n * g.s;
  const std::vector<double> w = read_vector(weight, g.c, 1.0, op, "weight");
  const std::vector<double> psm = read_vector(save_mean, g.c, 0.0, op, "save_mean");
  const std::vector<double> psi = read_vector(save_invstd, g.c, 1.0, op, "save_invstd");
  std::vector<double> sum_dy(static_cast<size_t>(g.c), 0.0), sum_dy_xhat(static_cast<size_t>(g.c), 0.0);
  const bool need_sums = dweight.defined() || dbias.defined() || (training && dx.defined());
  if (x.numel() > 0) {
    dispatch_float(x.dtype(), op, [&](auto tag) {
      using T = typename decltype(tag)::type;
      using C = acc_t<T>;
      const T* px = static_cast<const T*>(x.raw_data());
      const T* pdy = static_cast<const T*>(dy.raw_data());
      if (need_sums) {
        parallel_for(g.c, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(count, 1)),
                     [&](int64_t b, int64_t e) {
                       for (int64_t ch = b; ch < e; ++ch) {
                         const C m = static_cast<C>(psm[ch]), is = static_cast<C>(psi[ch]);
                         double s = 0, sx = 0;  // Note [batch-norm sums]
                         for (int64_t i = 0; i < g.n; ++i) {
                           const int64_t base = (i * g.c + ch) * g.s;
                           plane_grad_sums<T, C>(pdy + base, px + base, g.s, m, is, &s, &sx);
                         }
                         sum_dy[static_cast<size_t>(ch)] = s;
                         sum_dy_xhat[static_cast<size_t>(ch)] = sx;
                       }
                     });
      }
      if (!dx.defined()) return;
      T* pdx = static_cast<T*>(dx.raw_data());
      std::vector<C> k_dy(static_cast<size_t>(g.c)), k_xhat(static_cast<size_t>(g.c)),
          k_const(static_cast<size_t>(g.c));
      std::vector<C> cm(static_cast<size_t>(g.c));
      for (size_t ch = 0; ch < k_dy.size(); ++ch) {
        // dx = k_dy * dy + k_xhat * (x - mean) + k_const
        const double wi = w[ch] * static_cast<double>(psi[ch]);
        cm[ch] = static_cast<C>(psm[ch]);
        k_dy[ch] = static_cast<C>(wi);
        if (training) {
          const double inv_count = 1.0 / static_cast<double>(count);
          k_xhat[ch] = static_cast<C>(-wi * sum_dy_xhat[ch] * inv_count * static_cast<double>(psi[ch]));
          k_const[ch] = static_cast<C>(-wi * sum_dy[ch] * inv_count);
        } else {
          k_xhat[ch] = C(0);
          k_const[ch] = C(0);
        }
      }
      const int64_t plane_grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.s, 1));
      parallel_for(g.n * g.c, plane_grain, [&](int64_t b, int64_t e) {
        for (int64_t p = b; p < e; ++p) {
          const auto ch = static_cast<size_t>(p % g.c);
          const T* xp = px + p * g.s;
          const T* dyp = pdy + p * g.s;
          T* dxp = pdx + p * g.s;
          const C kd = k_dy[ch], kx = k_xhat[ch], kc = k_const[ch], mc = cm[ch];
          for (int64_t k = 0; k < g.s; ++k)
            dxp[k] = static_cast<T>(kd * static_cast<C>(dyp[k]) + kx * (static_cast<C>(xp[k]) - mc) + kc);
        }
      });
    });
  }
  write_vector(dweight, sum_dy_xhat, op, "dweight");
  write_vector(dbias, sum_dy, op, "dbias");
}

}  // namespace headroom::cpu
