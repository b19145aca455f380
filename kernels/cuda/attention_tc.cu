// Fused causal attention on tensor cores: FlashAttention-2's algorithm with the matrix products
// of every tile on WMMA 16x16x16 fragments (f16/bf16 inputs, f32 accumulation), for head dims
// 64 and 128. The CUDA-core kernels of attention.cu do the same arithmetic one multiply-add at a
// time; for GPT-2 small (T = 1024) attention is then slower than all its gemms together.
//
// Shape of a block: 4 warps, 64 rows of the tile that the block owns (queries in forward and
// dq, keys in dk/dv); each warp owns 16 of them, so the row statistics of the online softmax
// never leave a warp. The other operand's tiles (64 rows) are shared by the 4 warps in shared
// memory. WMMA does not say which lane holds which accumulator element, so elementwise work
// (masking, exp, rescaling) goes through a per-warp f32 scratch: a fragment is stored, the warp
// works on it with a known layout -- lane l owns row l / 2 and the half (l % 2) of its columns
// -- and, where it feeds another product, writes it back rounded to 16 bits. Accumulators that
// only ever add (dk, dv, dq) stay in fragments for the whole loop; forward's output, which the
// online softmax rescales every tile, lives in registers in the lane layout above and adds each
// tile's P V through the scratch.
//
// Precision: as in FlashAttention, P (forward) and P, dS (backward) are rounded to 16 bits
// before they multiply V, dout, q or k; sums, statistics and accumulators are f32. Scores are
// scaled by scale * log2(e) so exp2f does the exponentials; lse is stored in natural log. In f16
// a dS beyond 65504 (|dP - rowsum| that large, under a big loss scale) becomes inf, which the
// GradScaler sees as an overflow and answers by halving the scale, as with FlashAttention.
//
// Tiles: 16-bit rows are padded to D + 8 elements and f32 scratch rows to 64 + 4 (or D + 4), so
// every fragment pointer is 32-byte aligned (WMMA's rule) and neighbouring rows start in
// different banks. Every __syncthreads is reached by the whole block (loop bounds depend on
// blockIdx only); __syncwarp orders a warp's scratch writes and reads.
#include "kernels/cuda/attention_tc.h"

#include <mma.h>

#include <algorithm>
#include <atomic>
#include <cmath>

#include "engine/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_common.cuh"

namespace headroom::cuda {

namespace {

std::atomic<bool> g_allow_tensor_cores{true};

constexpr int kWarps = 4;
constexpr int kThreadsTc = 32 * kWarps;
constexpr int kRows = 16 * kWarps;  // rows a block owns
constexpr int kCols = 64;           // rows of the other operand's tile (keys or queries)
constexpr int kLdS = kCols + 4;     // f32 scratch row stride for a 16 x kCols score tile
// The causal loop bounds (forward and dq stop at the diagonal tile kt == qt, dk/dv start there)
// take a query tile and a key tile to cover the same positions.
static_assert(kRows == kCols, "query and key tiles must be the same length");
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <int D>
struct TcGeometry {
  static_assert(D % 16 == 0 && D <= 128, "head dims are multiples of 16 up to 128");
  static constexpr int ld = D + 8;         // 16-bit tile row stride (elements)
  static constexpr int ldp = kCols + 8;    // 16-bit P / dS row stride
  static constexpr int ldo = D + 4;        // f32 scratch row stride for a 16 x D tile
  static constexpr int tile = kRows * ld;  // elements of a 64-row 16-bit tile
  static constexpr int ptile = 16 * ldp;   // elements of a warp's 16-row P tile
  // f32 per warp in backward: two 16 x kCols score tiles (S and dP), which also hold one 16 x D
  // result tile at the end.
  static constexpr int scratch = 2 * 16 * kLdS;
  static_assert(16 * ldo <= scratch, "a warp's scratch holds a 16 x D tile");
  // Forward needs one score tile or one 16 x D tile at a time.
  static constexpr int fwd_scratch = 16 * (kLdS > ldo ? kLdS : ldo);
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define HR_TC_ATTENTION 1
namespace wmma = nvcuda::wmma;
template <typename T>
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
template <typename T>
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
template <typename T>
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// Rows [r0, r0 + kRows) of a [t, D] matrix into tile[kRows][ld], 16 bytes a load, zeros past t.
template <typename T, int D>
__device__ __forceinline__ void load_rows(const T* __restrict__ src, int r0, int t, T* tile) {
  constexpr int chunks = D / 8;  // 8 elements of 2 bytes
  for (int e = threadIdx.x; e < kRows * chunks; e += kThreadsTc) {
    const int r = e / chunks, c = e - r * chunks;
    const int row = r0 + r;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (row < t) val = *reinterpret_cast<const uint4*>(src + static_cast<int64_t>(row) * D + c * 8);
    *reinterpret_cast<uint4*>(tile + r * TcGeometry<D>::ld + c * 8) = val;
  }
}

// out[16 x 16n] (f32, row stride ldo) = A[16 x K] B^T where B is [16n x K]: A rows at a (stride
// lda), B rows at b (stride ldb) -- B^T read as a column-major matrix_b.
template <typename T, int K, int N>
__device__ __forceinline__ void warp_abt(const T* a, int lda, const T* b, int ldb, float* out, int ldo) {
#pragma unroll
  for (int n = 0; n < N / 16; ++n) {
    FragC acc;
    wmma::fill_fragment(acc, 0.0f);
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) {
      FragA<T> fa;
      FragBCol<T> fb;
      wmma::load_matrix_sync(fa, a + kk * 16, lda);
      wmma::load_matrix_sync(fb, b + n * 16 * ldb + kk * 16, ldb);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(out + n * 16, acc, ldo, wmma::mem_row_major);
  }
}

// acc[n] += A[16 x kCols] B[kCols x D] for B row-major (stride ldb): the products that add
// into a 16 x D result.
template <typename T, int D>
__device__ __forceinline__ void warp_ab_add(const T* a, int lda, const T* b, int ldb, FragC (&acc)[D / 16]) {
#pragma unroll
  for (int kk = 0; kk < kCols / 16; ++kk) {
    FragA<T> fa;
    wmma::load_matrix_sync(fa, a + kk * 16, lda);
#pragma unroll
    for (int n = 0; n < D / 16; ++n) {
      FragBRow<T> fb;
      wmma::load_matrix_sync(fb, b + kk * 16 * ldb + n * 16, ldb);
      wmma::mma_sync(acc[n], fa, fb, acc[n]);
    }
  }
}

// Writes a warp's 16 x D accumulator, times `mul`, to rows [r0, r0 + 16) of a [t, D] matrix
// (rows past t skipped), through the warp's scratch.
template <typename T, int D>
__device__ __forceinline__ void store_acc(FragC (&acc)[D / 16], float mul, float* scratch, T* __restrict__ dst, int r0,
                                          int t) {
  constexpr int ldo = TcGeometry<D>::ldo;
  __syncwarp();
#pragma unroll
  for (int n = 0; n < D / 16; ++n) wmma::store_matrix_sync(scratch + n * 16, acc[n], ldo, wmma::mem_row_major);
  __syncwarp();
  const int lane = threadIdx.x % 32;
  for (int e = lane; e < 16 * D; e += 32) {
    const int r = e / D, c = e - r * D;
    if (r0 + r < t) dst[static_cast<int64_t>(r0 + r) * D + c] = convert<T>(scratch[r * ldo + c] * mul);
  }
}
#endif

// ---- forward ----

template <typename T, int D>
__global__ void __launch_bounds__(kThreadsTc)
    tc_forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ out,
                      float* __restrict__ lse, int t, float scale_log2, bool causal) {
#ifdef HR_TC_ATTENTION
  using G = TcGeometry<D>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* qs = reinterpret_cast<T*>(smem_raw);
  T* ks = qs + G::tile;
  T* vs = ks + G::tile;
  T* ps_all = vs + G::tile;
  float* scratch_all = reinterpret_cast<float*>(ps_all + kWarps * G::ptile);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T* ps = ps_all + warp * G::ptile;
  float* sc = scratch_all + warp * G::fwd_scratch;
  const int64_t bh = blockIdx.x;
  const int n_tiles = (t + kRows - 1) / kRows;
  const int qt = n_tiles - 1 - static_cast<int>(blockIdx.y);  // the longest (causal) tiles first
  const int i0 = qt * kRows;
  const int64_t base = bh * t * static_cast<int64_t>(D);

  load_rows<T, D>(q + base, i0, t, qs);

  // Lane layout: row r of the warp's 16, column half `half` (scores: 32 of 64; output: D/2 of D).
  const int r = lane / 2, half = lane % 2;
  const int i = i0 + warp * 16 + r;
  float m = -INFINITY, l = 0.0f, o[D / 2];
#pragma unroll
  for (int c = 0; c < D / 2; ++c) o[c] = 0.0f;

  const int kt_end = causal ? qt + 1 : n_tiles;  // kRows == kCols: tile qt holds the diagonal
  for (int kt = 0; kt < kt_end; ++kt) {
    const int j0 = kt * kCols;
    __syncthreads();  // every warp is done with the previous ks, vs
    load_rows<T, D>(k + base, j0, t, ks);
    load_rows<T, D>(v + base, j0, t, vs);
    __syncthreads();

    warp_abt<T, D, kCols>(qs + warp * 16 * G::ld, G::ld, ks, G::ld, sc, kLdS);  // S = Q K^T
    __syncwarp();

    float* srow = sc + r * kLdS + half * 32;
    float mx = -INFINITY;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const int j = j0 + half * 32 + c;
      const bool visible = j < t && (!causal || j <= i);
      const float s = visible ? srow[c] * scale_log2 : -INFINITY;
      srow[c] = s;
      mx = fmaxf(mx, s);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_new = fmaxf(m, mx);
    const float shift = m_new == -INFINITY ? 0.0f : m_new;  // a row with no key seen yet keeps m = -inf
    const float alpha = exp2f(m - shift);
    float sum = 0.0f;
    T* prow = ps + r * G::ldp + half * 32;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const float p = exp2f(srow[c] - shift);  // exp2(-inf) = 0 for hidden keys
      sum += p;
      prow[c] = convert<T>(p);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * alpha + sum;
    m = m_new;
#pragma unroll
    for (int c = 0; c < D / 2; ++c) o[c] *= alpha;
    __syncwarp();  // P written, the score scratch free again

    // This tile's P V into the scratch, then into the lanes' accumulators.
    FragC pv[D / 16];
#pragma unroll
    for (int n = 0; n < D / 16; ++n) wmma::fill_fragment(pv[n], 0.0f);
    warp_ab_add<T, D>(ps, G::ldp, vs, G::ld, pv);
#pragma unroll
    for (int n = 0; n < D / 16; ++n) wmma::store_matrix_sync(sc + n * 16, pv[n], G::ldo, wmma::mem_row_major);
    __syncwarp();
    const float* orow = sc + r * G::ldo + half * (D / 2);
#pragma unroll
    for (int c = 0; c < D / 2; ++c) o[c] += orow[c];
    __syncwarp();  // the scratch is read before the next tile's scores overwrite it
  }

  if (i < t) {
    // The lane's D/2 contiguous outputs, 8 to a 16-byte store (the row half starts 16-byte aligned).
    const float inv = 1.0f / l;
    uint4* orow = reinterpret_cast<uint4*>(out + base + static_cast<int64_t>(i) * D + half * (D / 2));
#pragma unroll
    for (int c = 0; c < D / 2; c += 8) {
      union {
        uint4 v;
        T e[8];
      } pack;
#pragma unroll
      for (int e = 0; e < 8; ++e) pack.e[e] = convert<T>(o[c + e] * inv);
      orow[c / 8] = pack.v;
    }
    if (half == 0) lse[bh * t + i] = m * kLn2 + logf(l);
  }
#endif
}

// ---- backward ----

#ifdef HR_TC_ATTENTION
// lse (natural log) of rows [r0, r0 + kRows) in log2 units, and drow, into shared memory (0 past t).
__device__ __forceinline__ void load_stats(const float* __restrict__ lse, const float* __restrict__ drow, int64_t bh,
                                           int t, int r0, float* lse2_s, float* drow_s) {
  for (int e = threadIdx.x; e < kRows; e += kThreadsTc) {
    const int row = r0 + e;
    lse2_s[e] = row < t ? lse[bh * t + row] * kLog2e : 0.0f;
    drow_s[e] = row < t ? drow[bh * t + row] : 0.0f;
  }
}
#endif

// A block per (b*h, key tile): the warp's 16 keys' rows of dk and dv (=), over every query tile
// that sees them. Works on the transposed scores S^T = K Q^T, so that P^T and dS^T are the
// A operands of dv += P^T dout and dk += dS^T q.
template <typename T, int D>
__global__ void __launch_bounds__(kThreadsTc)
    tc_dkdv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                   const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ drow,
                   T* __restrict__ dk, T* __restrict__ dv, int t, float scale, bool causal) {
#ifdef HR_TC_ATTENTION
  using G = TcGeometry<D>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* ks = reinterpret_cast<T*>(smem_raw);
  T* vs = ks + G::tile;
  T* qs = vs + G::tile;
  T* dos = qs + G::tile;
  T* pt_all = dos + G::tile;                // per warp: P^T [16][ldp]
  T* dst_all = pt_all + kWarps * G::ptile;  // per warp: dS^T [16][ldp]
  float* scratch_all = reinterpret_cast<float*>(dst_all + kWarps * G::ptile);
  float* lse2_s = scratch_all + kWarps * G::scratch;
  float* drow_s = lse2_s + kRows;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T* pt = pt_all + warp * G::ptile;
  T* dst = dst_all + warp * G::ptile;
  float* sc_s = scratch_all + warp * G::scratch;  // S^T
  float* sc_dp = sc_s + 16 * kLdS;                // dP^T
  const int64_t bh = blockIdx.x;
  const int n_tiles = (t + kRows - 1) / kRows;
  const int kt = static_cast<int>(blockIdx.y);  // early key tiles are seen by the most queries: first
  const int j0 = kt * kRows;
  const int64_t base = bh * t * static_cast<int64_t>(D);
  const float scale_log2 = scale * kLog2e;

  load_rows<T, D>(k + base, j0, t, ks);
  load_rows<T, D>(v + base, j0, t, vs);

  FragC dk_acc[D / 16], dv_acc[D / 16];
#pragma unroll
  for (int n = 0; n < D / 16; ++n) {
    wmma::fill_fragment(dk_acc[n], 0.0f);
    wmma::fill_fragment(dv_acc[n], 0.0f);
  }

  const int r = lane / 2, half = lane % 2;
  const int j = j0 + warp * 16 + r;  // this lane's key
  for (int qt = causal ? kt : 0; qt < n_tiles; ++qt) {
    const int i0 = qt * kCols;
    __syncthreads();  // the previous query tile's reads are done (and ks, vs are loaded)
    load_rows<T, D>(q + base, i0, t, qs);
    load_rows<T, D>(dout + base, i0, t, dos);
    load_stats(lse, drow, bh, t, i0, lse2_s, drow_s);
    __syncthreads();

    const T* kw = ks + warp * 16 * G::ld;
    const T* vw = vs + warp * 16 * G::ld;
    warp_abt<T, D, kCols>(kw, G::ld, qs, G::ld, sc_s, kLdS);    // S^T = K Q^T
    warp_abt<T, D, kCols>(vw, G::ld, dos, G::ld, sc_dp, kLdS);  // dP^T = V dout^T
    __syncwarp();
#pragma unroll 8
    for (int c = 0; c < 32; ++c) {
      const int col = half * 32 + c, i = i0 + col;
      const bool visible = i < t && j < t && (!causal || j <= i);
      const float p = visible ? exp2f(sc_s[r * kLdS + col] * scale_log2 - lse2_s[col]) : 0.0f;
      pt[r * G::ldp + col] = convert<T>(p);
      dst[r * G::ldp + col] = convert<T>(p * (sc_dp[r * kLdS + col] - drow_s[col]));
    }
    __syncwarp();
    warp_ab_add<T, D>(pt, G::ldp, dos, G::ld, dv_acc);  // dv += P^T dout
    warp_ab_add<T, D>(dst, G::ldp, qs, G::ld, dk_acc);  // dk += dS^T q
  }

  store_acc<T, D>(dv_acc, 1.0f, sc_s, dv + base, j0 + warp * 16, t);
  store_acc<T, D>(dk_acc, scale, sc_s, dk + base, j0 + warp * 16, t);
#endif
}

// A block per (b*h, query tile): the warp's 16 queries' rows of dq (=), over every key tile
// they see.
template <typename T, int D>
__global__ void __launch_bounds__(kThreadsTc)
    tc_dq_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ dout,
                 const float* __restrict__ lse, const float* __restrict__ drow, T* __restrict__ dq, int t, float scale,
                 bool causal) {
#ifdef HR_TC_ATTENTION
  using G = TcGeometry<D>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* qs = reinterpret_cast<T*>(smem_raw);
  T* dos = qs + G::tile;
  T* ks = dos + G::tile;
  T* vs = ks + G::tile;
  T* ds_all = vs + G::tile;  // per warp: dS [16][ldp]
  float* scratch_all = reinterpret_cast<float*>(ds_all + kWarps * G::ptile);
  float* lse2_s = scratch_all + kWarps * G::scratch;
  float* drow_s = lse2_s + kRows;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T* dsw = ds_all + warp * G::ptile;
  float* sc_s = scratch_all + warp * G::scratch;
  float* sc_dp = sc_s + 16 * kLdS;
  const int64_t bh = blockIdx.x;
  const int n_tiles = (t + kRows - 1) / kRows;
  const int qt = n_tiles - 1 - static_cast<int>(blockIdx.y);  // the longest (causal) tiles first
  const int i0 = qt * kRows;
  const int64_t base = bh * t * static_cast<int64_t>(D);
  const float scale_log2 = scale * kLog2e;

  load_rows<T, D>(q + base, i0, t, qs);
  load_rows<T, D>(dout + base, i0, t, dos);
  load_stats(lse, drow, bh, t, i0, lse2_s, drow_s);

  FragC dq_acc[D / 16];
#pragma unroll
  for (int n = 0; n < D / 16; ++n) wmma::fill_fragment(dq_acc[n], 0.0f);

  const int r = lane / 2, half = lane % 2;
  const int row = warp * 16 + r, i = i0 + row;  // this lane's query
  const int kt_end = causal ? qt + 1 : n_tiles;
  for (int kt = 0; kt < kt_end; ++kt) {
    const int j0 = kt * kCols;
    __syncthreads();  // the previous key tile's reads are done (and qs, dos, the stats are loaded)
    load_rows<T, D>(k + base, j0, t, ks);
    load_rows<T, D>(v + base, j0, t, vs);
    __syncthreads();

    warp_abt<T, D, kCols>(qs + warp * 16 * G::ld, G::ld, ks, G::ld, sc_s, kLdS);    // S = Q K^T
    warp_abt<T, D, kCols>(dos + warp * 16 * G::ld, G::ld, vs, G::ld, sc_dp, kLdS);  // dP = dout V^T
    __syncwarp();
#pragma unroll 8
    for (int c = 0; c < 32; ++c) {
      const int col = half * 32 + c, j = j0 + col;
      const bool visible = i < t && j < t && (!causal || j <= i);
      const float p = visible ? exp2f(sc_s[r * kLdS + col] * scale_log2 - lse2_s[row]) : 0.0f;
      dsw[r * G::ldp + col] = convert<T>(p * (sc_dp[r * kLdS + col] - drow_s[row]));
    }
    __syncwarp();
    warp_ab_add<T, D>(dsw, G::ldp, ks, G::ld, dq_acc);  // dq += dS k
  }

  store_acc<T, D>(dq_acc, scale, sc_s, dq + base, i0 + warp * 16, t);
#endif
}

// ---- host side ----

size_t forward_smem(int d) {
  const size_t ld = d + 8, ldp = kCols + 8, ldo = d + 4;
  return 2 * (3 * kRows * ld + kWarps * 16 * ldp) + 4 * static_cast<size_t>(kWarps) * 16 * std::max<size_t>(kLdS, ldo);
}
size_t dkdv_smem(int d) {
  const size_t ld = d + 8, ldp = kCols + 8;
  return 2 * (4 * kRows * ld + 2 * kWarps * 16 * ldp) + 4 * (static_cast<size_t>(kWarps) * 2 * 16 * kLdS + 2 * kRows);
}
size_t dq_smem(int d) {
  const size_t ld = d + 8, ldp = kCols + 8;
  return 2 * (4 * kRows * ld + kWarps * 16 * ldp) + 4 * (static_cast<size_t>(kWarps) * 2 * 16 * kLdS + 2 * kRows);
}

// Allows `kernel` `bytes` of dynamic shared memory, checked against the device's opt-in limit.
template <typename Kernel>
void allow_smem(const char* op, Kernel kernel, size_t bytes, int d) {
  int device = 0, limit = 0;
  HR_CUDA_CHECK(cudaGetDevice(&device));
  HR_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  HR_CHECK(bytes <= static_cast<size_t>(limit), ValueError, op, ": the tensor-core kernel for head dim ", d, " needs ",
           bytes, " bytes of shared memory per block but the GPU allows ", limit);
  HR_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

dim3 tc_grid(const attention_tc::Geometry& g) {
  return dim3(static_cast<unsigned>(g.bh), static_cast<unsigned>((g.t + kRows - 1) / kRows));
}

template <typename T, int D>
void forward_launch(cudaStream_t stream, const attention_tc::Geometry& g, const void* q, const void* k, const void* v,
                    void* out, float* lse, float scale, bool causal) {
  const size_t smem = forward_smem(D);
  auto kernel = tc_forward_kernel<T, D>;
  allow_smem("attention_forward", kernel, smem, D);
  kernel<<<tc_grid(g), kThreadsTc, smem, stream>>>(static_cast<const T*>(q), static_cast<const T*>(k),
                                                   static_cast<const T*>(v), static_cast<T*>(out), lse, g.t,
                                                   scale * kLog2e, causal);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int D>
void backward_launch(cudaStream_t stream, const attention_tc::Geometry& g, const void* q, const void* k, const void* v,
                     const void* dout, const float* lse, const float* drow, void* dq, void* dk, void* dv, float scale,
                     bool causal) {
  const char* op = "attention_backward";
  const size_t smem_kv = dkdv_smem(D), smem_q = dq_smem(D);
  auto kv_kernel = tc_dkdv_kernel<T, D>;
  auto q_kernel = tc_dq_kernel<T, D>;
  allow_smem(op, kv_kernel, smem_kv, D);
  allow_smem(op, q_kernel, smem_q, D);
  const T *qp = static_cast<const T*>(q), *kp = static_cast<const T*>(k), *vp = static_cast<const T*>(v),
          *dop = static_cast<const T*>(dout);
  kv_kernel<<<tc_grid(g), kThreadsTc, smem_kv, stream>>>(qp, kp, vp, dop, lse, drow, static_cast<T*>(dk),
                                                         static_cast<T*>(dv), g.t, scale, causal);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
  q_kernel<<<tc_grid(g), kThreadsTc, smem_q, stream>>>(qp, kp, vp, dop, lse, drow, static_cast<T*>(dq), g.t, scale,
                                                       causal);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

// Calls f(TypeTag<T>{}, std::integral_constant<int, D>{}) for a supported (dtype, d).
template <typename F>
void dispatch_tc(DType dtype, int d, F&& f) {
  auto by_dim = [&](auto tag) {
    if (d == 64) f(tag, std::integral_constant<int, 64>{});
    else if (d == 128) f(tag, std::integral_constant<int, 128>{});
    else HR_CHECK(false, ValueError, "attention: the tensor-core kernels take head dims 64 and 128, got ", d);
  };
  if (dtype == DType::f16) by_dim(TypeTag<__half>{});
  else if (dtype == DType::bf16) by_dim(TypeTag<__nv_bfloat16>{});
  else HR_CHECK(false, DTypeError, "attention: the tensor-core kernels take f16 and bf16, got ", dtype_name(dtype));
}

// Whether `device` can run the kernels: sm_80 or newer, and the image loaded for it was
// compiled for sm_80+ (a build for older GPUs only has empty bodies). Asked once per device.
int smem_limit[64];  // the device's opt-in shared memory per block, set with cached[device]

bool capable(int device) {
  static std::atomic<int> cached[64];  // 0 unknown, 1 yes, 2 no
  if (device < 0 || device >= 64) return false;
  int state = cached[device].load();
  if (state == 0) {
    int major = 0, current = 0;
    HR_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    cudaFuncAttributes attr{};
    if (major >= 8) {
      HR_CUDA_CHECK(cudaGetDevice(&current));
      if (current != device) HR_CUDA_CHECK(cudaSetDevice(device));
      // An error here (no image in the build for this GPU) means "no", not a failure.
      const cudaError_t err = cudaFuncGetAttributes(&attr, tc_forward_kernel<__half, 64>);
      if (err != cudaSuccess) (void)cudaGetLastError();
      if (current != device) HR_CUDA_CHECK(cudaSetDevice(current));
      if (err != cudaSuccess) attr.ptxVersion = 0;
    }
    HR_CUDA_CHECK(cudaDeviceGetAttribute(&smem_limit[device], cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    state = major >= 8 && attr.ptxVersion >= 80 ? 1 : 2;
    cached[device].store(state);
  }
  return state == 1;
}

}  // namespace

bool set_attention_tensor_cores(bool allow) { return g_allow_tensor_cores.exchange(allow); }

bool attention_uses_tensor_cores(Device device, DType dtype, int64_t head_dim) {
  // The backward kernels need the most shared memory: 123 KiB at D = 128, more than sm_86/89
  // GPUs give a block (99 KiB); those take the CUDA-core kernels for it.
  return g_allow_tensor_cores.load() && device.is_cuda() && (dtype == DType::f16 || dtype == DType::bf16) &&
         (head_dim == 64 || head_dim == 128) && capable(device.index) &&
         std::max({forward_smem(static_cast<int>(head_dim)), dkdv_smem(static_cast<int>(head_dim)),
                   dq_smem(static_cast<int>(head_dim))}) <= static_cast<size_t>(smem_limit[device.index]);
}

namespace attention_tc {

void forward(cudaStream_t stream, DType dtype, const Geometry& g, const void* q, const void* k, const void* v,
             void* out, float* lse, float scale, bool causal) {
  dispatch_tc(dtype, g.d, [&](auto tag, auto dim) {
    forward_launch<typename decltype(tag)::type, decltype(dim)::value>(stream, g, q, k, v, out, lse, scale, causal);
  });
}

void backward(cudaStream_t stream, DType dtype, const Geometry& g, const void* q, const void* k, const void* v,
              const void* dout, const float* lse, const float* drow, void* dq, void* dk, void* dv, float scale,
              bool causal) {
  dispatch_tc(dtype, g.d, [&](auto tag, auto dim) {
    backward_launch<typename decltype(tag)::type, decltype(dim)::value>(stream, g, q, k, v, dout, lse, drow, dq, dk, dv,
                                                                        scale, causal);
  });
}

}  // namespace attention_tc
}  // namespace headroom::cuda
