// Softmax, log-softmax and the fused softmax cross-entropy on the CPU.
//
// A contiguous tensor is seen as [outer, n, inner] around the softmax dim. When inner == 1
// (the last dim, the common case) each row is contiguous and one thread takes whole rows;
// otherwise a thread takes a block of up to kInnerBlock neighbouring columns of one outer
// slice and walks the n rows of that block, so memory is still read in order and the inner
// loops vectorise. Every row subtracts its maximum before exp, so large logits stay finite.
// f16/bf16 are read into f32 and rounded only when written; f32 computes in f32, f64 in f64.
//
// Cross-entropy is fused: one pass per row gives logsumexp (saved in lse: f32, f64 for f64 logits) and the loss
// lse - logits[target]; backward rebuilds softmax as exp(logits - lse) instead of keeping a
// [N, C] probability tensor alive between forward and backward. A negative target is ignored
// (loss 0, gradient 0); targets are checked before any thread starts, so that nothing is half
// written when one is bad.
#include <cmath>
#include <limits>

#include "kernels/contract_checks.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/strided.h"
#include "kernels/cpu/vec_math.h"

namespace headroom::cpu {

namespace {

using kernels::softmax_geometry;
using kernels::SoftmaxGeometry;

constexpr int64_t kInnerBlock = 256;

// Calls f(o, i0, i1) for every outer slice o and block [i0, i1) of inner columns, in parallel.
template <typename F>
void for_each_block(const SoftmaxGeometry& g, F&& f) {
  const int64_t block = std::min(g.inner, kInnerBlock);
  const int64_t blocks = (g.inner + block - 1) / block;
  const int64_t units = g.outer * blocks;
  parallel_for(units, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.n * block, 1)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t u = begin; u < end; ++u) {
                   int64_t o = u / blocks, b = u % blocks;
                   f(o, b * block, std::min(g.inner, (b + 1) * block));
                 }
               });
}

template <typename T>
void softmax_forward_impl(const T* x, T* y, const SoftmaxGeometry& g, bool log) {
  using C = acc_t<T>;
  if (g.inner == 1) {
    parallel_for(g.outer, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.n, 1)), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* xr = x + r * g.n;
        T* yr = y + r * g.n;
        C mx = -std::numeric_limits<C>::infinity();
        for (int64_t j = 0; j < g.n; ++j) mx = std::max(mx, static_cast<C>(xr[j]));
        C sum = 0;
        bool vectorised = false;
        if constexpr (std::is_same_v<T, float>) {
          // exp(x - max) into y, vectorised (vec_math.h; -inf, a masked score, gives exactly 0),
          // then the sum in order. Through libm's expf the exponentials were 3% of
          // gpt-tiny-cpu-f32-naive's step; 34.4 -> 32.8 ms at 1 thread with this (paired runs).
          if (!log && xr != yr) {
            exp_shifted_f32(xr, yr, g.n, mx);
            for (int64_t j = 0; j < g.n; ++j) sum += yr[j];
            vectorised = true;
          }
        }
        if (!vectorised) {
          if constexpr (std::is_same_v<T, C>) {
            // Full-precision storage: keep exp(x - max) in y and scale it afterwards.
            for (int64_t j = 0; j < g.n; ++j) {
              C ex = std::exp(xr[j] - mx);
              sum += ex;
              if (!log) yr[j] = ex;
            }
          } else {
            for (int64_t j = 0; j < g.n; ++j) sum += std::exp(static_cast<C>(xr[j]) - mx);
          }
        }
        if (log) {
          // (x - max) - log(sum), not x - (max + log(sum)): the latter rounds max + log(sum)
          // at the magnitude of max and loses the digits of large logits.
          const C log_sum = std::log(sum);
          for (int64_t j = 0; j < g.n; ++j) yr[j] = static_cast<T>((static_cast<C>(xr[j]) - mx) - log_sum);
        } else {
          const C inv = C(1) / sum;
          if constexpr (std::is_same_v<T, C>) {
            for (int64_t j = 0; j < g.n; ++j) yr[j] *= inv;
          } else {
            for (int64_t j = 0; j < g.n; ++j) yr[j] = static_cast<T>(std::exp(static_cast<C>(xr[j]) - mx) * inv);
          }
        }
      }
    });
    return;
  }
  for_each_block(g, [&](int64_t o, int64_t i0, int64_t i1) {
    const int64_t w = i1 - i0;
    C mx[kInnerBlock], sum[kInnerBlock];
    for (int64_t i = 0; i < w; ++i) {
      mx[i] = -std::numeric_limits<C>::infinity();
      sum[i] = 0;
    }
    const T* xo = x + o * g.n * g.inner + i0;
    T* yo = y + o * g.n * g.inner + i0;
    for (int64_t j = 0; j < g.n; ++j)
      for (int64_t i = 0; i < w; ++i) mx[i] = std::max(mx[i], static_cast<C>(xo[j * g.inner + i]));
    for (int64_t j = 0; j < g.n; ++j)
      for (int64_t i = 0; i < w; ++i) sum[i] += std::exp(static_cast<C>(xo[j * g.inner + i]) - mx[i]);
    if (log) {
      for (int64_t i = 0; i < w; ++i) sum[i] = std::log(sum[i]);
      for (int64_t j = 0; j < g.n; ++j)
        for (int64_t i = 0; i < w; ++i)
          yo[j * g.inner + i] = static_cast<T>((static_cast<C>(xo[j * g.inner + i]) - mx[i]) - sum[i]);
    } else {
      for (int64_t i = 0; i < w; ++i) sum[i] = C(1) / sum[i];
      for (int64_t j = 0; j < g.n; ++j)
        for (int64_t i = 0; i < w; ++i)
          yo[j * g.inner + i] = static_cast<T>(std::exp(static_cast<C>(xo[j * g.inner + i]) - mx[i]) * sum[i]);
    }
  });
}

// softmax:     dx = y * (dy - sum(dy * y))
// log-softmax: dx = dy - exp(y) * sum(dy)
template <typename T>
void softmax_backward_impl(const T* y, const T* dy, T* dx, const SoftmaxGeometry& g, bool log) {
  using C = acc_t<T>;
  if (g.inner == 1) {
    parallel_for(g.outer, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.n, 1)), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* yr = y + r * g.n;
        const T* dyr = dy + r * g.n;
        T* dxr = dx + r * g.n;
        C s = 0;
        if (log) {
          for (int64_t j = 0; j < g.n; ++j) s += static_cast<C>(dyr[j]);
          for (int64_t j = 0; j < g.n; ++j)
            dxr[j] = static_cast<T>(static_cast<C>(dyr[j]) - std::exp(static_cast<C>(yr[j])) * s);
        } else {
          for (int64_t j = 0; j < g.n; ++j) s += static_cast<C>(dyr[j]) * static_cast<C>(yr[j]);
          for (int64_t j = 0; j < g.n; ++j)
            dxr[j] = static_cast<T>(static_cast<C>(yr[j]) * (static_cast<C>(dyr[j]) - s));
        }
      }
    });
    return;
  }
  for_each_block(g, [&](int64_t o, int64_t i0, int64_t i1) {
    const int64_t w = i1 - i0;
    C s[kInnerBlock];
    for (int64_t i = 0; i < w; ++i) s[i] = 0;
    const int64_t base = o * g.n * g.inner + i0;
    for (int64_t j = 0; j < g.n; ++j) {
      const int64_t row = base + j * g.inner;
      for (int64_t i = 0; i < w; ++i)
        s[i] += log ? static_cast<C>(dy[row + i]) : static_cast<C>(dy[row + i]) * static_cast<C>(y[row + i]);
    }
    for (int64_t j = 0; j < g.n; ++j) {
      const int64_t row = base + j * g.inner;
      for (int64_t i = 0; i < w; ++i) {
        const C yv = static_cast<C>(y[row + i]), dyv = static_cast<C>(dy[row + i]);
        dx[row + i] = static_cast<T>(log ? dyv - std::exp(yv) * s[i] : yv * (dyv - s[i]));
      }
    }
  });
}

// Every target < C (negative ones are ignored rows): read here, where the targets are host memory.
void check_targets(const char* op, const Tensor& logits, const Tensor& target) {
  const int64_t n = logits.size(0), c = logits.size(1);
  const int64_t* t = static_cast<const int64_t*>(target.raw_data());
  const int64_t ts = target.stride(0);
  for (int64_t r = 0; r < n; ++r)
    HR_CHECK(t[r * ts] < c, ValueError, op, ": target ", t[r * ts], " at row ", r, " is out of range for ", c,
             " classes (logits ", shape_str(logits.shape()), ")");
}

}  // namespace

void CpuBackend::impl_softmax_forward(const Tensor& x, const Tensor& y, int64_t dim, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  if (x.numel() == 0) return;  // (the layout is checked by Backend::softmax_forward)
  const SoftmaxGeometry g = softmax_geometry(x.shape(), x.dim() == 0 ? 0 : wrap_dim(dim, x.dim(), op));
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    softmax_forward_impl<T>(static_cast<const T*>(x.raw_data()), static_cast<T*>(y.raw_data()), g, log);
  });
}

void CpuBackend::impl_softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx, int64_t dim, bool log) {
  const char* op = log ? "log_softmax backward" : "softmax backward";
  if (y.numel() == 0) return;  // (the layout is checked by Backend::softmax_backward)
  const SoftmaxGeometry g = softmax_geometry(y.shape(), y.dim() == 0 ? 0 : wrap_dim(dim, y.dim(), op));
  dispatch_float(y.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    softmax_backward_impl<T>(static_cast<const T*>(y.raw_data()), static_cast<const T*>(dy.raw_data()),
                             static_cast<T*>(dx.raw_data()), g, log);
  });
}

void CpuBackend::impl_cross_entropy_forward(const Tensor& logits, const Tensor& target, const Tensor& losses,
                                            const Tensor& lse) {
  const char* op = "cross_entropy";
  check_targets(op, logits, target);  // the values; the rest is checked by Backend::cross_entropy_forward
  const int64_t n = logits.size(0), c = logits.size(1);
  if (n == 0) return;
  const int64_t* t = static_cast<const int64_t*>(target.raw_data());
  const int64_t ts = target.stride(0);
  dispatch_float(logits.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    C* plse = static_cast<C*>(lse.raw_data());  // f32, f64 for f64 (statistics_dtype)
    const T* x = static_cast<const T*>(logits.raw_data());
    T* loss = static_cast<T*>(losses.raw_data());
    parallel_for(n, std::max<int64_t>(1, kParallelGrain / c), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* xr = x + r * c;
        C mx = -std::numeric_limits<C>::infinity();
        for (int64_t j = 0; j < c; ++j) mx = std::max(mx, static_cast<C>(xr[j]));
        C sum = 0;
        for (int64_t j = 0; j < c; ++j) sum += std::exp(static_cast<C>(xr[j]) - mx);
        const C log_sum = std::log(sum);
        plse[r] = mx + log_sum;
        const int64_t tr = t[r * ts];
        loss[r] = static_cast<T>(tr < 0 ? C(0) : log_sum - (static_cast<C>(xr[tr]) - mx));
      }
    });
  });
}

void CpuBackend::impl_cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& lse,
                                             const Tensor& dlosses, const Tensor& dlogits) {
  const char* op = "cross_entropy backward";
  check_targets(op, logits, target);  // the values; the rest is checked by Backend::cross_entropy_backward
  const int64_t n = logits.size(0), c = logits.size(1);
  if (logits.numel() == 0) return;
  const int64_t* t = static_cast<const int64_t*>(target.raw_data());
  const int64_t ts = target.stride(0), ds = dlosses.stride(0);
  dispatch_float(logits.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    const C* plse = static_cast<const C*>(lse.raw_data());
    const T* x = static_cast<const T*>(logits.raw_data());
    const T* dl = static_cast<const T*>(dlosses.raw_data());
    T* dx = static_cast<T*>(dlogits.raw_data());
    parallel_for(n, std::max<int64_t>(1, kParallelGrain / c), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* xr = x + r * c;
        T* dxr = dx + r * c;
        const int64_t tr = t[r * ts];
        if (tr < 0) {
          for (int64_t j = 0; j < c; ++j) dxr[j] = static_cast<T>(C(0));
          continue;
        }
        const C g = static_cast<C>(dl[r * ds]);
        const C l = plse[r];
        for (int64_t j = 0; j < c; ++j) dxr[j] = static_cast<T>(g * std::exp(static_cast<C>(xr[j]) - l));
        dxr[tr] = static_cast<T>(g * (std::exp(static_cast<C>(xr[tr]) - l) - C(1)));  // rounded once
      }
    });
  });
}

}  // namespace headroom::cpu
