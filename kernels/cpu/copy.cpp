// Copies, casts, fills, arange and random draws.
#include <cstring>

#include "engine/rng.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/strided.h"

namespace headroom::cpu {

namespace {
// Converts between storage types through their compute types (f16/bf16 via float).
template <typename To, typename From>
inline To convert(From v) {
  if constexpr (std::is_same_v<To, bool>) {
    return static_cast<acc_t<From>>(v) != acc_t<From>(0);
  } else if constexpr (std::is_same_v<To, Half> || std::is_same_v<To, BFloat16>) {
    return To(static_cast<float>(static_cast<acc_t<From>>(v)));
  } else {
    return static_cast<To>(static_cast<acc_t<From>>(v));
  }
}
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define HR_CAST_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HR_CAST_CLONES
#endif

// Note [vectorised casts]: a cast between f32 and f16 or bf16 -- autocast makes one of every
// 16-bit matmul's operands and of many activations, and the unfused optimizer one of every
// gradient -- ran the strided element loop below, which GCC leaves scalar: a quarter of
// mlp-cpu-f16's step and 14% of mlp-cpu-bf16's (1 thread, AMD EPYC, 2026-12-07). Contiguous
// ranges take these loops instead, compiled for AVX-512, AVX2 and x86-64: the same branch-free
// conversions (engine/dtype.h), so the same bits at every width.
// target_clones does not take templates: one instance per pair.
HR_CAST_CLONES void cast_f32_f16(const float* __restrict s, Half* __restrict d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = Half(s[i]);
}
HR_CAST_CLONES void cast_f16_f32(const Half* __restrict s, float* __restrict d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(s[i]);
}
HR_CAST_CLONES void cast_f32_bf16(const float* __restrict s, BFloat16* __restrict d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = BFloat16(s[i]);
}
HR_CAST_CLONES void cast_bf16_f32(const BFloat16* __restrict s, float* __restrict d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(s[i]);
}

// Casts n contiguous elements where a loop above covers the pair (d and s do not overlap);
// false where none does.
template <typename D, typename S>
bool cast_vectorised(const S* s, D* d, int64_t n) {
  if constexpr (std::is_same_v<S, float> && std::is_same_v<D, Half>) cast_f32_f16(s, d, n);
  else if constexpr (std::is_same_v<S, Half> && std::is_same_v<D, float>) cast_f16_f32(s, d, n);
  else if constexpr (std::is_same_v<S, float> && std::is_same_v<D, BFloat16>) cast_f32_bf16(s, d, n);
  else if constexpr (std::is_same_v<S, BFloat16> && std::is_same_v<D, float>) cast_bf16_f32(s, d, n);
  else return false;
  return true;
}
}  // namespace

void CpuBackend::impl_copy(const Tensor& dst, const Tensor& src) {
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    std::memcpy(dst.raw_data(), src.raw_data(), dst.nbytes());
    return;
  }
  StridedLayout<2> layout({&dst, &src});
  dispatch_dtype(dst.dtype(), [&](auto dtag) {
    using D = typename decltype(dtag)::type;
    dispatch_dtype(src.dtype(), [&](auto stag) {
      using S = typename decltype(stag)::type;
      D* d = static_cast<D*>(dst.raw_data());
      const S* s = static_cast<const S*>(src.raw_data());
      parallel_for(layout.numel(), kParallelGrain, [&](int64_t b, int64_t e) {
        layout.for_range(b, e, [&](const std::array<int64_t, 2>& off, const std::array<int64_t, 2>& st, int64_t len) {
          D* dp = d + off[0];
          const S* sp = s + off[1];
          if (st[0] == 1 && st[1] == 1 &&
              (static_cast<const void*>(dp + len) <= static_cast<const void*>(sp) ||
               static_cast<const void*>(sp + len) <= static_cast<const void*>(dp)) &&
              cast_vectorised(sp, dp, len))  // Note [vectorised casts]
            return;
          for (int64_t i = 0; i < len; ++i) dp[i * st[0]] = convert<D>(sp[i * st[1]]);
        });
      });
    });
  });
}

void CpuBackend::copy_to_host(void* host_dst, const void* src, size_t nbytes, Device, bool) {
  std::memcpy(host_dst, src, nbytes);
}
void CpuBackend::copy_from_host(void* dst, const void* host_src, size_t nbytes, Device, bool) {
  std::memcpy(dst, host_src, nbytes);
}

void CpuBackend::impl_fill(const Tensor& out, double value) {
  StridedLayout<1> layout({&out});
  dispatch_dtype(out.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T v = convert<T>(value);
    T* p = static_cast<T*>(out.raw_data());
    parallel_for(layout.numel(), kParallelGrain, [&](int64_t b, int64_t e) {
      layout.for_range(b, e, [&](const std::array<int64_t, 1>& off, const std::array<int64_t, 1>& st, int64_t len) {
        for (int64_t i = 0; i < len; ++i) p[off[0] + i * st[0]] = v;
      });
    });
  });
}

void CpuBackend::impl_arange(const Tensor& out, double start, double step) {
  dispatch_dtype(out.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* p = static_cast<T*>(out.raw_data());
    for (int64_t i = 0; i < out.numel(); ++i) p[i] = convert<T>(start + static_cast<double>(i) * step);
  });
}

void CpuBackend::impl_random_uniform(const Tensor& out, uint64_t seed, uint64_t offset) {
  dispatch_float(out.dtype(), "rand", [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* p = static_cast<T*>(out.raw_data());
    parallel_for(out.numel(), 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) p[i] = convert<T>(philox_uniform(seed, offset, static_cast<uint64_t>(i)));
    });
  });
}

void CpuBackend::impl_random_normal(const Tensor& out, uint64_t seed, uint64_t offset) {
  dispatch_float(out.dtype(), "randn", [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* p = static_cast<T*>(out.raw_data());
    parallel_for(out.numel(), 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) p[i] = convert<T>(philox_normal(seed, offset, static_cast<uint64_t>(i)));
    });
  });
}

namespace {
CpuBackend g_cpu_backend;
const bool g_registered = [] {
  register_backend(DeviceType::cpu, &g_cpu_backend);
  return true;
}();
}  // namespace

}  // namespace headroom::cpu
