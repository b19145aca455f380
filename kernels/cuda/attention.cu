// Fused (causal) attention on the GPU: the CPU kernel's algorithm (kernels/cpu/attention.cpp)
// with tiles in shared memory, on CUDA cores. f16/bf16 with head dim 64 or 128 on an sm_80+ GPU
// go to the tensor-core kernels of attention_tc.cu instead (after the checks here, and after
// step 1 of backward, which both share). q, k, v, out, dout: [B, H, T, D] contiguous, D <= 128; lse:
// [B, H, T] f32. Nothing of size T x T is ever held.
//
// Tiles: kB queries x kB keys (64, or 32 for f64 whose tiles are twice the bytes), 256 threads
// seen as 16 x 16 (tx = lane in a half-warp, ty = half-warp). For a score tile S = Q K^T each
// thread computes a kB/16 x kB/16 register block: rows ty*RM + r, columns tx + 16 c, reading Q
// rows (one address per half-warp: a broadcast) and K rows (16 consecutive rows: rows are padded
// to D + 1 elements so they fall in different banks). A row's statistics combine over the 16
// lanes of its half-warp with xor shuffles (commutative, so every lane gets the same bits).
// Output accumulators are [kB/16 rows] x [D/16 <= 8 dims] per thread (dims tx + 16 c), so the
// same thread owns a row's scores and its accumulator and the online softmax needs no shared
// state beyond the probability tile. All arithmetic is in acc_type (f32 for f16/bf16/f32, f64
// for f64); 16-bit values are converted once when a tile is loaded and rounded once when written.
//
//  - forward: a block per (b*h, query tile), heavy (late, causal) tiles launched first. It walks
//    the key tiles up to the diagonal keeping per row a running max m, sum l and accumulator
//    rescaled by exp(m_old - m_new); out = acc / l and lse = m + log l are written (=).
//  - backward, FlashAttention-2's algebra, in three kernels and no atomics:
//    1. drow_i = rowsum(dout_i * out_i), a warp per row, into a [B*H*T] scratch of acc_type;
//    2. a block per (b*h, key tile) owns its rows of dk and dv (=): for every query tile that
//       sees it, P = exp(scale S - lse) and dS = P * (dP - drow) with dP = dout V^T are put in
//       shared memory, then dv += P^T dout and dk += scale dS^T q;
//    3. a block per (b*h, query tile) owns its rows of dq (=): dq += scale dS K over the key
//       tiles it sees. P is recomputed in 2 and 3: the price of writing every gradient once.
// Every __syncthreads is reached by the whole block: loop bounds depend only on blockIdx.
// Shared memory is dynamic (up to ~162 KiB for f32 backward at D = 128; checked against the
// device's opt-in limit, with an error naming both numbers).
#include <cmath>
#include <limits>
#include <type_traits>

#include "engine/meta.h"
#include "kernels/contract_checks.h"
#include "kernels/cuda/attention_tc.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_common.cuh"

namespace headroom::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxHeadDim = 128;
constexpr int kMaxDimSlots = kMaxHeadDim / 16;  // dims per thread: tx + 16 c, c < 8

// Reductions over the 16 lanes of a half-warp (xor offsets < 16 stay inside it). Called by all
// 32 lanes of the warp.
template <typename C>
__device__ __forceinline__ C half_warp_max(C v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
template <typename C>
__device__ __forceinline__ C half_warp_sum(C v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Loads rows [r0, r0 + kB) of a [T, D] matrix into tile[kB][ld] as C, zeros past row T.
// Consecutive threads read consecutive elements (coalesced).
template <typename T, typename C, int kB>
__device__ __forceinline__ void load_tile(const T* __restrict__ src, int r0, int t, int d, int ld, C* tile) {
  for (int e = threadIdx.x; e < kB * d; e += kThreads) {
    const int r = e / d, c = e - r * d;
    const int row = r0 + r;
    tile[r * ld + c] = row < t ? convert<C>(src[static_cast<int64_t>(row) * d + c]) : C(0);
  }
}

// s[r][c] += sum_d A[ty*RM + r][d] * B[tx + 16 c][d] over tiles with row stride ld.
template <typename C, int RM, int RN>
__device__ __forceinline__ void tile_dot(const C* A, const C* B, int d, int ld, int tx, int ty, C (&s)[RM][RN]) {
#pragma unroll 4
  for (int k = 0; k < d; ++k) {
    C a[RM], b[RN];
#pragma unroll
    for (int r = 0; r < RM; ++r) a[r] = A[(ty * RM + r) * ld + k];
#pragma unroll
    for (int c = 0; c < RN; ++c) b[c] = B[(tx + 16 * c) * ld + k];
#pragma unroll
    for (int r = 0; r < RM; ++r)
#pragma unroll
      for (int c = 0; c < RN; ++c) s[r][c] += a[r] * b[c];
  }
}

// ---- forward ----

template <typename T, int kB>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                             T* __restrict__ out, acc_type<T>* __restrict__ lse, int t, int d, acc_type<T> scale,
                             bool causal) {
  using C = acc_type<T>;
  constexpr int RM = kB / 16, RN = kB / 16;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int ld = d + 1, ldp = kB + 1;
  C* qs = reinterpret_cast<C*>(smem_raw);
  C* ks = qs + kB * ld;
  C* vs = ks + kB * ld;
  C* ps = vs + kB * ld;  // [kB][kB + 1] probabilities

  const int64_t bh = blockIdx.x;
  const int n_tiles = (t + kB - 1) / kB;
  const int qt = n_tiles - 1 - static_cast<int>(blockIdx.y);  // the longest (causal) tiles first
  const int i0 = qt * kB;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t base = bh * t * static_cast<int64_t>(d);

  load_tile<T, C, kB>(q + base, i0, t, d, ld, qs);

  C m[RM], l[RM], acc[RM][kMaxDimSlots];
#pragma unroll
  for (int r = 0; r < RM; ++r) {
    m[r] = neg_inf<C>();
    l[r] = C(0);
#pragma unroll
    for (int c = 0; c < kMaxDimSlots; ++c) acc[r][c] = C(0);
  }

  const int kt_end = causal ? qt + 1 : n_tiles;
  for (int kt = 0; kt < kt_end; ++kt) {
    const int j0 = kt * kB;
    __syncthreads();  // the previous tile's reads of ks, vs, ps are done
    load_tile<T, C, kB>(k + base, j0, t, d, ld, ks);
    load_tile<T, C, kB>(v + base, j0, t, d, ld, vs);
    __syncthreads();

    C s[RM][RN];
#pragma unroll
    for (int r = 0; r < RM; ++r)
#pragma unroll
      for (int c = 0; c < RN; ++c) s[r][c] = C(0);
    tile_dot<C, RM, RN>(qs, ks, d, ld, tx, ty, s);

#pragma unroll
    for (int r = 0; r < RM; ++r) {
      const int i = i0 + ty * RM + r;
      C mx = neg_inf<C>();
#pragma unroll
      for (int c = 0; c < RN; ++c) {
        const int j = j0 + tx + 16 * c;
        const bool visible = j < t && (!causal || j <= i);
        s[r][c] = visible ? s[r][c] * scale : neg_inf<C>();
        mx = max(mx, s[r][c]);
      }
      mx = half_warp_max(mx);
      const C m_new = max(m[r], mx);
      // A row that has seen no key yet keeps m = -inf; exp(-inf - -inf) would be NaN.
      const C shift = m_new == neg_inf<C>() ? C(0) : m_new;
      const C alpha = dev_exp(m[r] - shift);
      C sum = 0;
#pragma unroll
      for (int c = 0; c < RN; ++c) {
        const C p = dev_exp(s[r][c] - shift);  // exp(-inf) = 0 for hidden keys
        sum += p;
        ps[(ty * RM + r) * ldp + tx + 16 * c] = p;
      }
      sum = half_warp_sum(sum);
      l[r] = l[r] * alpha + sum;
      m[r] = m_new;
#pragma unroll
      for (int c = 0; c < kMaxDimSlots; ++c) acc[r][c] *= alpha;
    }
    __syncthreads();  // ps complete

    const int kb = min(kB, t - j0);  // keys past T have p = 0: skip them
    for (int jj = 0; jj < kb; ++jj) {
      C p[RM];
#pragma unroll
      for (int r = 0; r < RM; ++r) p[r] = ps[(ty * RM + r) * ldp + jj];
#pragma unroll
      for (int c = 0; c < kMaxDimSlots; ++c) {
        const int dd = tx + 16 * c;
        if (dd < d) {
          const C vv = vs[jj * ld + dd];
#pragma unroll
          for (int r = 0; r < RM; ++r) acc[r][c] += p[r] * vv;
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < RM; ++r) {
    const int i = i0 + ty * RM + r;
    if (i >= t) continue;
    const C inv = C(1) / l[r];
    T* o = out + base + static_cast<int64_t>(i) * d;
#pragma unroll
    for (int c = 0; c < kMaxDimSlots; ++c) {
      const int dd = tx + 16 * c;
      if (dd < d) o[dd] = convert<T>(acc[r][c] * inv);
    }
    if (tx == 0) lse[bh * t + i] = m[r] + dev_log(l[r]);  // f32, f64 for f64 (Note [statistics dtype])
  }
}

// ---- backward ----

// drow[r] = sum_d dout[r][d] * out[r][d]: a warp per row, grid-stride over rows.
template <typename T>
__global__ void attention_drow_kernel(const T* __restrict__ out, const T* __restrict__ dout,
                                      acc_type<T>* __restrict__ drow, int64_t rows, int d) {
  using C = acc_type<T>;
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
    C acc = 0;
    for (int c = lane; c < d; c += 32) acc += convert<C>(dout[r * d + c]) * convert<C>(out[r * d + c]);
    acc = warp_sum(acc);
    if (lane == 0) drow[r] = acc;
  }
}

// Recomputes, for a query tile at i0 and a key tile at j0 (both in shared memory), the
// probabilities P and dS = P * (dP - drow) of this thread's register block, and stores them
// (ps may be null when only dS is needed).
template <typename C, int kB>
__device__ __forceinline__ void probabilities_and_ds(const C* qs, const C* dos, const C* ks, const C* vs,
                                                     const C* lse_s, const C* drow_s, int i0, int j0, int t, int d,
                                                     int ld, C scale, bool causal, int tx, int ty, C* ps, C* dss) {
  constexpr int RM = kB / 16, RN = kB / 16;
  const int ldp = kB + 1;
  C s[RM][RN], dp[RM][RN];
#pragma unroll
  for (int r = 0; r < RM; ++r)
#pragma unroll
    for (int c = 0; c < RN; ++c) s[r][c] = dp[r][c] = C(0);
  tile_dot<C, RM, RN>(qs, ks, d, ld, tx, ty, s);
  tile_dot<C, RM, RN>(dos, vs, d, ld, tx, ty, dp);
#pragma unroll
  for (int r = 0; r < RM; ++r) {
    const int row = ty * RM + r, i = i0 + row;
#pragma unroll
    for (int c = 0; c < RN; ++c) {
      const int col = tx + 16 * c, j = j0 + col;
      const bool visible = i < t && j < t && (!causal || j <= i);
      const C p = visible ? dev_exp(s[r][c] * scale - lse_s[row]) : C(0);
      if (ps != nullptr) ps[row * ldp + col] = p;
      dss[row * ldp + col] = p * (dp[r][c] - drow_s[row]);
    }
  }
}

// Loads lse and drow of rows [i0, i0 + kB) into shared memory (0 past T).
template <typename C, int kB>
__device__ __forceinline__ void load_row_stats(const C* __restrict__ lse, const C* __restrict__ drow, int64_t bh, int t,
                                               int i0, C* lse_s, C* drow_s) {
  for (int r = threadIdx.x; r < kB; r += kThreads) {
    const int i = i0 + r;
    lse_s[r] = i < t ? lse[bh * t + i] : C(0);
    drow_s[r] = i < t ? drow[bh * t + i] : C(0);
  }
}

template <typename T, int kB>
__global__ void __launch_bounds__(kThreads)
    attention_dkdv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                          const T* __restrict__ dout, const acc_type<T>* __restrict__ lse,
                          const acc_type<T>* __restrict__ drow, T* __restrict__ dk, T* __restrict__ dv, int t, int d,
                          acc_type<T> scale, bool causal) {
  using C = acc_type<T>;
  constexpr int RM = kB / 16;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int ld = d + 1, ldp = kB + 1;
  C* ks = reinterpret_cast<C*>(smem_raw);
  C* vs = ks + kB * ld;
  C* qs = vs + kB * ld;
  C* dos = qs + kB * ld;
  C* ps = dos + kB * ld;
  C* dss = ps + kB * ldp;
  C* lse_s = dss + kB * ldp;
  C* drow_s = lse_s + kB;

  const int64_t bh = blockIdx.x;
  const int n_tiles = (t + kB - 1) / kB;
  // Under causal masking early key tiles are seen by the most queries: launch them first.
  const int kt = static_cast<int>(blockIdx.y);
  const int j0 = kt * kB;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t base = bh * t * static_cast<int64_t>(d);

  load_tile<T, C, kB>(k + base, j0, t, d, ld, ks);
  load_tile<T, C, kB>(v + base, j0, t, d, ld, vs);

  C dk_acc[RM][kMaxDimSlots], dv_acc[RM][kMaxDimSlots];
#pragma unroll
  for (int r = 0; r < RM; ++r)
#pragma unroll
    for (int c = 0; c < kMaxDimSlots; ++c) dk_acc[r][c] = dv_acc[r][c] = C(0);

  for (int qt = causal ? kt : 0; qt < n_tiles; ++qt) {
    const int i0 = qt * kB;
    __syncthreads();  // the previous query tile's reads are done (and ks, vs are loaded)
    load_tile<T, C, kB>(q + base, i0, t, d, ld, qs);
    load_tile<T, C, kB>(dout + base, i0, t, d, ld, dos);
    load_row_stats<C, kB>(lse, drow, bh, t, i0, lse_s, drow_s);
    __syncthreads();
    probabilities_and_ds<C, kB>(qs, dos, ks, vs, lse_s, drow_s, i0, j0, t, d, ld, scale, causal, tx, ty, ps, dss);
    __syncthreads();                 // ps, dss complete
    const int qb = min(kB, t - i0);  // query rows past T contribute 0
    for (int ii = 0; ii < qb; ++ii) {
      C p[RM], ds[RM];
#pragma unroll
      for (int r = 0; r < RM; ++r) {
        p[r] = ps[ii * ldp + ty * RM + r];
        ds[r] = dss[ii * ldp + ty * RM + r];
      }
#pragma unroll
      for (int c = 0; c < kMaxDimSlots; ++c) {
        const int dd = tx + 16 * c;
        if (dd < d) {
          const C g = dos[ii * ld + dd], x = qs[ii * ld + dd];
#pragma unroll
          for (int r = 0; r < RM; ++r) {
            dv_acc[r][c] += p[r] * g;
            dk_acc[r][c] += ds[r] * x;
          }
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < RM; ++r) {
    const int j = j0 + ty * RM + r;
    if (j >= t) continue;
    const int64_t row = base + static_cast<int64_t>(j) * d;
#pragma unroll
    for (int c = 0; c < kMaxDimSlots; ++c) {
      const int dd = tx + 16 * c;
      if (dd < d) {
        dk[row + dd] = convert<T>(dk_acc[r][c] * scale);
        dv[row + dd] = convert<T>(dv_acc[r][c]);
      }
    }
  }
}

template <typename T, int kB>
__global__ void __launch_bounds__(kThreads)
    attention_dq_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                        const T* __restrict__ dout, const acc_type<T>* __restrict__ lse,
                        const acc_type<T>* __restrict__ drow, T* __restrict__ dq, int t, int d, acc_type<T> scale,
                        bool causal) {
  using C = acc_type<T>;
  constexpr int RM = kB / 16;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int ld = d + 1, ldp = kB + 1;
  C* qs = reinterpret_cast<C*>(smem_raw);
  C* dos = qs + kB * ld;
  C* ks = dos + kB * ld;
  C* vs = ks + kB * ld;
  C* dss = vs + kB * ld;
  C* lse_s = dss + kB * ldp;
  C* drow_s = lse_s + kB;

  const int64_t bh = blockIdx.x;
  const int n_tiles = (t + kB - 1) / kB;
  const int qt = n_tiles - 1 - static_cast<int>(blockIdx.y);  // the longest (causal) tiles first
  const int i0 = qt * kB;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t base = bh * t * static_cast<int64_t>(d);

  load_tile<T, C, kB>(q + base, i0, t, d, ld, qs);
  load_tile<T, C, kB>(dout + base, i0, t, d, ld, dos);
  load_row_stats<C, kB>(lse, drow, bh, t, i0, lse_s, drow_s);

  C dq_acc[RM][kMaxDimSlots];
#pragma unroll
  for (int r = 0; r < RM; ++r)
#pragma unroll
    for (int c = 0; c < kMaxDimSlots; ++c) dq_acc[r][c] = C(0);

  const int kt_end = causal ? qt + 1 : n_tiles;
  for (int kt = 0; kt < kt_end; ++kt) {
    const int j0 = kt * kB;
    __syncthreads();  // the previous key tile's reads are done (and qs, dos, stats are loaded)
    load_tile<T, C, kB>(k + base, j0, t, d, ld, ks);
    load_tile<T, C, kB>(v + base, j0, t, d, ld, vs);
    __syncthreads();
    probabilities_and_ds<C, kB>(qs, dos, ks, vs, lse_s, drow_s, i0, j0, t, d, ld, scale, causal, tx, ty, nullptr, dss);
    __syncthreads();                 // dss complete
    const int kb = min(kB, t - j0);  // keys past T have dS = 0
    for (int jj = 0; jj < kb; ++jj) {
      C ds[RM];
#pragma unroll
      for (int r = 0; r < RM; ++r) ds[r] = dss[(ty * RM + r) * ldp + jj];
#pragma unroll
      for (int c = 0; c < kMaxDimSlots; ++c) {
        const int dd = tx + 16 * c;
        if (dd < d) {
          const C kk = ks[jj * ld + dd];
#pragma unroll
          for (int r = 0; r < RM; ++r) dq_acc[r][c] += ds[r] * kk;
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < RM; ++r) {
    const int i = i0 + ty * RM + r;
    if (i >= t) continue;
    const int64_t row = base + static_cast<int64_t>(i) * d;
#pragma unroll
    for (int c = 0; c < kMaxDimSlots; ++c) {
      const int dd = tx + 16 * c;
      if (dd < d) dq[row + dd] = convert<T>(dq_acc[r][c] * scale);
    }
  }
}

// ---- host side ----

using kernels::AttnGeometry;

// The contract's sizes (checked by Backend, Note [op table]), then the limits of this kernel.
AttnGeometry check_attention(const char* op, const Tensor& q,
                             std::initializer_list<std::pair<Tensor, const char*>> others, const Tensor& lse) {
  const AttnGeometry g = kernels::attention_geometry(q);  // the contract is checked by Backend
  HR_CHECK(g.d <= kMaxHeadDim, ValueError, op, ": the cuda kernel supports head dims up to ", kMaxHeadDim,
           ", got D = ", g.d, " for q ", shape_str(q.shape()));
  HR_CHECK(g.bh <= std::numeric_limits<int32_t>::max() && g.t <= std::numeric_limits<int32_t>::max() / 2 &&
               g.t * g.d <= std::numeric_limits<int32_t>::max(),
           ValueError, op, ": q ", shape_str(q.shape()), " is too large for the cuda kernel's indexing");
  return g;
}

// The tile size for a compute type: 64, or 32 for f64 (twice the bytes a tile).
template <typename C>
constexpr int tile_for() {
  return std::is_same_v<C, double> ? 32 : 64;
}

// Grid (b*h, tiles) with the tile count checked against grid.y's limit.
dim3 attention_grid(const char* op, const AttnGeometry& g, int kb) {
  const int64_t tiles = (g.t + kb - 1) / kb;
  HR_CHECK(tiles <= 65535, ValueError, op, ": T = ", g.t, " needs ", tiles, " tiles of ", kb,
           " rows; the cuda kernel launches at most 65535");
  return dim3(static_cast<unsigned>(g.bh), static_cast<unsigned>(tiles));
}

// Allows `kernel` `bytes` of dynamic shared memory, after checking the device can give them.
template <typename Kernel>
void set_shared_memory(const char* op, Kernel kernel, size_t bytes, const KernelScope& scope, const AttnGeometry& g) {
  int device = 0, limit = 0;
  HR_CUDA_CHECK(cudaGetDevice(&device));
  HR_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  HR_CHECK(bytes <= static_cast<size_t>(limit), ValueError, op, ": head dim D = ", g.d, " needs ", bytes,
           " bytes of shared memory per block but the GPU allows ", limit);
  HR_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// Whether this call takes the tensor-core kernels (attention_tc.h): the dtype, head dim and GPU
// qualify and every operand's data is 16-byte aligned (a view may start anywhere).
bool use_tensor_cores(const Tensor& q, std::initializer_list<Tensor> others) {
  if (!attention_uses_tensor_cores(q.device(), q.dtype(), q.size(3))) return false;
  auto aligned = [](const Tensor& x) { return reinterpret_cast<uintptr_t>(x.raw_data()) % 16 == 0; };
  if (!aligned(q)) return false;
  for (const Tensor& x : others)
    if (!aligned(x)) return false;
  return true;
}

template <typename T>
void forward_impl(const KernelScope& scope, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                  const Tensor& lse, const AttnGeometry& g, double scale, bool causal) {
  using C = acc_type<T>;
  constexpr int kB = tile_for<C>();
  const char* op = "attention_forward";
  if constexpr (std::is_same_v<C, float>) {
    if (use_tensor_cores(q, {k, v, out})) {
      attention_grid(op, g, 64);  // the tile-count limit
      attention_tc::forward(scope.stream(), q.dtype(), {g.bh, static_cast<int>(g.t), static_cast<int>(g.d)},
                            q.raw_data(), k.raw_data(), v.raw_data(), out.raw_data(), device_data<float>(lse),
                            static_cast<float>(scale), causal);
      return;
    }
  }
  const size_t smem = sizeof(C) * (3 * static_cast<size_t>(kB) * (g.d + 1) + static_cast<size_t>(kB) * (kB + 1));
  auto kernel = attention_forward_kernel<T, kB>;
  set_shared_memory(op, kernel, smem, scope, g);
  kernel<<<attention_grid(op, g, kB), kThreads, smem, scope.stream()>>>(
      device_data<const T>(q), device_data<const T>(k), device_data<const T>(v), device_data<T>(out),
      device_data<C>(lse), static_cast<int>(g.t), static_cast<int>(g.d), static_cast<C>(scale), causal);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void backward_impl(const KernelScope& scope, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                   const Tensor& dout, const Tensor& lse, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                   const AttnGeometry& g, double scale, bool causal) {
  using C = acc_type<T>;
  constexpr int kB = tile_for<C>();
  const char* op = "attention_backward";
  const int t = static_cast<int>(g.t), d = static_cast<int>(g.d);
  const dim3 grid = attention_grid(op, g, kB);

  // 1. drow = rowsum(dout * out), [B*H*T] scratch (linear in T), freed once the kernels are queued.
  Tensor drow;
  {
    CategoryScope scratch(MemoryCategory::workspace);
    drow = Tensor::empty({g.bh * g.t},
                         TensorOptions().dtype(std::is_same_v<C, double> ? DType::f64 : DType::f32).device(q.device()));
  }
  const int64_t rows = g.bh * g.t;
  attention_drow_kernel<T><<<grid_for(rows * 32, kBlock), kBlock, 0, scope.stream()>>>(
      device_data<const T>(out), device_data<const T>(dout), device_data<C>(drow), rows, d);
  HR_CUDA_KERNEL_LAUNCH_CHECK();

  if constexpr (std::is_same_v<C, float>) {
    if (use_tensor_cores(q, {k, v, dout, dq, dk, dv})) {
      attention_tc::backward(scope.stream(), q.dtype(), {g.bh, t, d}, q.raw_data(), k.raw_data(), v.raw_data(),
                             dout.raw_data(), device_data<const float>(lse), device_data<const float>(drow),
                             dq.raw_data(), dk.raw_data(), dv.raw_data(), static_cast<float>(scale), causal);
      return;
    }
  }

  // 2. dk, dv: a block per (b*h, key tile).
  const size_t tile = static_cast<size_t>(kB) * (d + 1), ptile = static_cast<size_t>(kB) * (kB + 1);
  const size_t smem_kv = sizeof(C) * (4 * tile + 2 * ptile + 2 * static_cast<size_t>(kB));
  auto kv_kernel = attention_dkdv_kernel<T, kB>;
  set_shared_memory(op, kv_kernel, smem_kv, scope, g);
  kv_kernel<<<grid, kThreads, smem_kv, scope.stream()>>>(
      device_data<const T>(q), device_data<const T>(k), device_data<const T>(v), device_data<const T>(dout),
      device_data<const C>(lse), device_data<const C>(drow), device_data<T>(dk), device_data<T>(dv), t, d,
      static_cast<C>(scale), causal);
  HR_CUDA_KERNEL_LAUNCH_CHECK();

  // 3. dq: a block per (b*h, query tile).
  const size_t smem_q = sizeof(C) * (4 * tile + ptile + 2 * static_cast<size_t>(kB));
  auto q_kernel = attention_dq_kernel<T, kB>;
  set_shared_memory(op, q_kernel, smem_q, scope, g);
  q_kernel<<<grid, kThreads, smem_q, scope.stream()>>>(
      device_data<const T>(q), device_data<const T>(k), device_data<const T>(v), device_data<const T>(dout),
      device_data<const C>(lse), device_data<const C>(drow), device_data<T>(dq), t, d, static_cast<C>(scale), causal);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void CudaBackend::impl_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                         const Tensor& lse, double scale, bool causal) {
  const char* op = "attention_forward";
  const AttnGeometry g = check_attention(op, q, {{k, "k"}, {v, "v"}, {out, "out"}}, lse);
  if (lse.numel() == 0) return;  // (D == 0 runs through: every score 0, lse = log(keys seen))
  KernelScope scope(q);
  dispatch_cuda_float(q.dtype(), op, [&](auto tag) {
    forward_impl<typename decltype(tag)::type>(scope, q, k, v, out, lse, g, scale, causal);
  });
}

void CudaBackend::impl_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                          const Tensor& dout, const Tensor& lse, const Tensor& dq, const Tensor& dk,
                                          const Tensor& dv, double scale, bool causal) {
  const char* op = "attention_backward";
  const AttnGeometry g = check_attention(
      op, q, {{k, "k"}, {v, "v"}, {out, "out"}, {dout, "dout"}, {dq, "dq"}, {dk, "dk"}, {dv, "dv"}}, lse);
  if (q.numel() == 0) return;
  if (meta_active()) {  // Note [meta execution]: backward_impl's scratch (drow), and no kernel
    CategoryScope scratch(MemoryCategory::workspace);
    const Tensor drow = Tensor::empty(
        {g.bh * g.t}, TensorOptions().dtype(q.dtype() == DType::f64 ? DType::f64 : DType::f32).device(q.device()));
    return;
  }
  KernelScope scope(q);
  dispatch_cuda_float(q.dtype(), op, [&](auto tag) {
    backward_impl<typename decltype(tag)::type>(scope, q, k, v, out, dout, lse, dq, dk, dv, g, scale, causal);
  });
}

}  // namespace headroom::cuda
