// Fused (causal) attention on the CPU: out = softmax(scale q k^T + mask) v without a T x T matrix.
//
// q, k, v, out are [B, H, T, D] contiguous; each (b, h) is an independent [T, D] problem. The
// queries are cut into blocks of kBlockQ rows and the keys into blocks of kBlockK; a unit of
// work is one (b*h, query block), and parallel_for spreads the units over the cores. A unit walks
// the key blocks once, keeping per query a running maximum m and sum l of exp(score - m) and an
// accumulator of exp(score - m) v, rescaled by exp(m_old - m_new) whenever the maximum grows
// (online softmax). At the end out = acc / l and lse = m + log(l) is written for backward. The
// only buffers are block-sized (a query, key and value block, one block of scores), so memory is
// linear in T. With causal, query t sees keys 0..t: key blocks wholly after a query block are
// skipped and the diagonal block is cut per row.
//
// Backward (FlashAttention-2's algebra) recomputes the probabilities block by block from q, k and
// the saved lse: P = exp(scale s - lse), dP = dout v^T, D_i = rowsum(dout_i * out_i), and
// dS = P * (dP - D). Then dv = P^T dout, dk = scale dS^T q, dq = scale dS k. To stay free of races
// without per-thread copies of dq, it runs two passes: one unit per (b*h, key block) owns that
// block's rows of dk and dv and walks the query blocks that see it; one unit per (b*h, query
// block) owns its rows of dq and streams over the key blocks. Each recomputes P (the price of
// writing every output exactly once, =, with no atomics), which is also how the CUDA kernel works.
//
// Note [attention blocks as gemms]: every product of two blocks -- the scores q k^T, dP = dout v^T,
// P v, P^T dout, dS^T q, dS k -- is one gemm (gemm.h, serial inside the unit's thread) of at most
// 64 x 64 x D; only the softmax and the masking run row by row between them. Written as a row of
// scores against a transposed key block and outputs as weighted sums of rows, the same products
// were matrix-vector loops that reread each block from L1 once per query row: moving to gemms
// made gpt-4l-cpu-f32-fused 127 -> 113 ms a step at 1 thread (2-core AMD EPYC, 2026-12-07,
// median of 4 paired runs). f16/bf16 are converted to f32 when a block is loaded and rounded once
// when written; f32 computes in f32, f64 in f64. Units are visited in a zig-zag order of query
// blocks so that with causal masking (later blocks cost more) the contiguous ranges parallel_for
// hands each thread get a similar amount of work.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/contract_checks.h"
#include "engine/meta.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/strided.h"
#include "kernels/cpu/vec_math.h"

namespace headroom::cpu {

namespace {

constexpr int64_t kBlockQ = 64;
constexpr int64_t kBlockK = 64;

using kernels::attention_geometry;
using kernels::AttnGeometry;

// Maps unit u of n_bh * n_blocks to (b*h, block), zig-zagging the blocks of each (b*h) so that
// neighbouring units alternate cheap and expensive blocks.
inline void unit_to_block(int64_t u, int64_t n_blocks, int64_t& bh, int64_t& block) {
  bh = u / n_blocks;
  const int64_t r = u % n_blocks;
  block = (r % 2 == 0) ? r / 2 : n_blocks - 1 - r / 2;
}

// Units per parallel_for grain: enough rows x keys x dims that waking a thread pays.
int64_t unit_grain(int64_t work_per_unit) {
  return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(work_per_unit, 1));
}

// Number of keys of block [j0, j0 + w) that query i sees: all w, or up to the diagonal.
inline int64_t visible_keys(bool causal, int64_t i, int64_t j0, int64_t w) {
  return causal ? std::min(w, i - j0 + 1) : w;
}

// Loads rows [r0, r0 + n) of a [T, D] matrix into dst as [n, D], in C.
template <typename T, typename C>
void load_rows(const T* src, int64_t r0, int64_t n, int64_t d, C* dst) {
  const T* p = src + r0 * d;
  for (int64_t e = 0; e < n * d; ++e) dst[e] = static_cast<C>(p[e]);
}

// s[j] = e^(s[j] * scale - shift) for j < n: vectorised for f32 (vec_math.h), libm for f64
// (gradcheck's reference precision). The exponentials were 6% of gpt-4l-cpu-f32-fused's step
// through scalar expf.
template <typename C>
void exp_scores(C* s, int64_t n, C scale, C shift) {
  if constexpr (std::is_same_v<C, float>) {
    exp_affine_f32(s, n, scale, shift);
  } else {
    for (int64_t j = 0; j < n; ++j) s[j] = std::exp(s[j] * scale - shift);
  }
}

// c[M, N] = a' @ b' (or += with accumulate) through gemm.h, for the blocks below; with an
// inner dimension of 0 (D == 0) the product is zero.
template <typename C>
void block_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const C* a, int64_t lda, const C* b, int64_t ldb,
                bool accumulate, C* c, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate)
      for (int64_t r = 0; r < M; ++r) std::fill(c + r * ldc, c + r * ldc + N, C(0));
    return;
  }
  gemm<C>(ta, tb, M, N, K, a, lda, b, ldb, accumulate ? C(1) : C(0), c, ldc);
}

template <typename T>
void forward_impl(const T* q, const T* k, const T* v, T* out, acc_t<T>* lse, const AttnGeometry& g, double scale_d,
                  bool causal) {
  using C = acc_t<T>;
  const C scale = static_cast<C>(scale_d);
  const int64_t T_ = g.t, D = g.d;
  const int64_t n_qb = (T_ + kBlockQ - 1) / kBlockQ, n_kb = (T_ + kBlockK - 1) / kBlockK;
  parallel_for(g.bh * n_qb, unit_grain(kBlockQ * T_ * D), [&](int64_t begin, int64_t end) {
    std::vector<C> qb(static_cast<size_t>(kBlockQ * D)), kb(static_cast<size_t>(kBlockK * D)),
        vb(static_cast<size_t>(kBlockK * D)), acc(static_cast<size_t>(kBlockQ * D)),
        s(static_cast<size_t>(kBlockQ * kBlockK)), m(kBlockQ), l(kBlockQ);
    for (int64_t u = begin; u < end; ++u) {
      int64_t bh, qblk;
      unit_to_block(u, n_qb, bh, qblk);
      const int64_t base = bh * T_ * D;
      const int64_t i0 = qblk * kBlockQ, h = std::min(kBlockQ, T_ - i0);
      load_rows(q + base, i0, h, D, qb.data());
      std::fill(acc.begin(), acc.begin() + h * D, C(0));
      std::fill(m.begin(), m.begin() + h, -std::numeric_limits<C>::infinity());
      std::fill(l.begin(), l.begin() + h, C(0));
      const int64_t kb_end = causal ? std::min(n_kb, (i0 + h - 1) / kBlockK + 1) : n_kb;
      for (int64_t kblk = 0; kblk < kb_end; ++kblk) {
        const int64_t j0 = kblk * kBlockK, w = std::min(kBlockK, T_ - j0);
        load_rows(k + base, j0, w, D, kb.data());
        load_rows(v + base, j0, w, D, vb.data());
        block_gemm<C>(false, true, h, w, D, qb.data(), D, kb.data(), D, false, s.data(), kBlockK);  // scores
        for (int64_t ii = 0; ii < h; ++ii) {
          C* sr = s.data() + ii * kBlockK;
          const int64_t n = std::max<int64_t>(0, visible_keys(causal, i0 + ii, j0, w));
          std::fill(sr + n, sr + w, C(0));  // keys this query does not see add nothing below
          if (n == 0) continue;
          C mx = -std::numeric_limits<C>::infinity();
          for (int64_t jj = 0; jj < n; ++jj) {
            sr[jj] *= scale;
            mx = std::max(mx, sr[jj]);
          }
          const C m_new = std::max(m[ii], mx);
          // A row whose scores are all -inf so far keeps m = -inf; exp(-inf - -inf) would be NaN.
          const C base_m = m_new == -std::numeric_limits<C>::infinity() ? C(0) : m_new;
          const C alpha = std::exp(m[ii] - base_m);
          exp_scores(sr, n, C(1), base_m);
          C sum = 0;
          for (int64_t jj = 0; jj < n; ++jj) sum += sr[jj];
          l[ii] = l[ii] * alpha + sum;
          m[ii] = m_new;
          C* a = acc.data() + ii * D;
          if (alpha != C(1))
            for (int64_t c = 0; c < D; ++c) a[c] *= alpha;
        }
        block_gemm<C>(false, false, h, D, w, s.data(), kBlockK, vb.data(), D, true, acc.data(), D);  // acc += P v
      }
      T* o = out + base + i0 * D;
      C* ls = lse + bh * T_ + i0;
      for (int64_t ii = 0; ii < h; ++ii) {
        const C inv = C(1) / l[ii];
        for (int64_t c = 0; c < D; ++c) o[ii * D + c] = static_cast<T>(acc[static_cast<size_t>(ii * D + c)] * inv);
        ls[ii] = m[ii] + std::log(l[ii]);
      }
    }
  });
}

// Rows [0, h) of a block: p = P = exp(scale s - lse) and dp = dS = P * (dP - D_i) * scale for the
// keys each query sees, 0 for the others. On entry p holds the scores s and dp holds dP.
template <typename C>
void block_probabilities(C* p, C* dp, int64_t h, int64_t w, int64_t i0, int64_t j0, bool causal, C scale, const C* lse,
                         const C* drow) {
  for (int64_t ii = 0; ii < h; ++ii) {
    C* pr = p + ii * kBlockK;
    C* dpr = dp + ii * kBlockK;
    const int64_t n = std::max<int64_t>(0, visible_keys(causal, i0 + ii, j0, w));
    if (n > 0) {
      exp_scores(pr, n, scale, lse[ii]);
      const C di = drow[ii];
      for (int64_t jj = 0; jj < n; ++jj) dpr[jj] = pr[jj] * (dpr[jj] - di) * scale;
    }
    std::fill(pr + n, pr + w, C(0));
    std::fill(dpr + n, dpr + w, C(0));
  }
}

template <typename T>
void backward_impl(const T* q, const T* k, const T* v, const T* out, const T* dout, const acc_t<T>* lse, T* dq, T* dk,
                   T* dv, const AttnGeometry& g, double scale_d, bool causal) {
  using C = acc_t<T>;
  const C scale = static_cast<C>(scale_d);
  const int64_t T_ = g.t, D = g.d;
  const int64_t n_qb = (T_ + kBlockQ - 1) / kBlockQ, n_kb = (T_ + kBlockK - 1) / kBlockK;

  // D_i = rowsum(dout_i * out_i), one per query: [B*H*T] in C (block-free, linear in T).
  Tensor drow_t;
  {
    CategoryScope scratch(MemoryCategory::workspace);
    drow_t = Tensor::empty({g.bh * T_}, TensorOptions().dtype(dtype_of<C>()).device(g.device));
  }
  if (meta_active()) return;  // Note [meta execution]: the scratch is what it takes
  C* drow = drow_t.data<C>();
  parallel_for(g.bh * T_, unit_grain(D), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      C acc = 0;
      const T* o = out + r * D;
      const T* go = dout + r * D;
      for (int64_t c = 0; c < D; ++c) acc += static_cast<C>(go[c]) * static_cast<C>(o[c]);
      drow[r] = acc;
    }
  });

  // Pass 1: dk and dv, a unit per (b*h, key block), over the query blocks that see it:
  // dv += P^T dout and dk += dS^T q, block by block.
  parallel_for(g.bh * n_kb, unit_grain(kBlockK * T_ * D), [&](int64_t begin, int64_t end) {
    std::vector<C> kb(static_cast<size_t>(kBlockK * D)), vb(static_cast<size_t>(kBlockK * D)),
        qb(static_cast<size_t>(kBlockQ * D)), dob(static_cast<size_t>(kBlockQ * D)),
        dkb(static_cast<size_t>(kBlockK * D)), dvb(static_cast<size_t>(kBlockK * D)),
        p(static_cast<size_t>(kBlockQ * kBlockK)), dp(static_cast<size_t>(kBlockQ * kBlockK));
    for (int64_t u = begin; u < end; ++u) {
      int64_t bh, kblk;
      unit_to_block(u, n_kb, bh, kblk);
      const int64_t base = bh * T_ * D;
      const int64_t j0 = kblk * kBlockK, w = std::min(kBlockK, T_ - j0);
      load_rows(k + base, j0, w, D, kb.data());
      load_rows(v + base, j0, w, D, vb.data());
      std::fill(dkb.begin(), dkb.begin() + w * D, C(0));
      std::fill(dvb.begin(), dvb.begin() + w * D, C(0));
      for (int64_t qblk = causal ? j0 / kBlockQ : 0; qblk < n_qb; ++qblk) {
        const int64_t i0 = qblk * kBlockQ, h = std::min(kBlockQ, T_ - i0);
        load_rows(q + base, i0, h, D, qb.data());
        load_rows(dout + base, i0, h, D, dob.data());
        block_gemm<C>(false, true, h, w, D, qb.data(), D, kb.data(), D, false, p.data(), kBlockK);    // s
        block_gemm<C>(false, true, h, w, D, dob.data(), D, vb.data(), D, false, dp.data(), kBlockK);  // dP
        block_probabilities(p.data(), dp.data(), h, w, i0, j0, causal, scale, lse + bh * T_ + i0, drow + bh * T_ + i0);
        block_gemm<C>(true, false, w, D, h, p.data(), kBlockK, dob.data(), D, true, dvb.data(), D);
        block_gemm<C>(true, false, w, D, h, dp.data(), kBlockK, qb.data(), D, true, dkb.data(), D);
      }
      for (int64_t e = 0; e < w * D; ++e) {
        dk[base + j0 * D + e] = static_cast<T>(dkb[static_cast<size_t>(e)]);
        dv[base + j0 * D + e] = static_cast<T>(dvb[static_cast<size_t>(e)]);
      }
    }
  });

  // Pass 2: dq, a unit per (b*h, query block), streaming over the key blocks it sees: dq += dS k.
  parallel_for(g.bh * n_qb, unit_grain(kBlockQ * T_ * D), [&](int64_t begin, int64_t end) {
    std::vector<C> qb(static_cast<size_t>(kBlockQ * D)), dob(static_cast<size_t>(kBlockQ * D)),
        dqb(static_cast<size_t>(kBlockQ * D)), kb(static_cast<size_t>(kBlockK * D)),
        vb(static_cast<size_t>(kBlockK * D)), p(static_cast<size_t>(kBlockQ * kBlockK)),
        dp(static_cast<size_t>(kBlockQ * kBlockK));
    for (int64_t u = begin; u < end; ++u) {
      int64_t bh, qblk;
      unit_to_block(u, n_qb, bh, qblk);
      const int64_t base = bh * T_ * D;
      const int64_t i0 = qblk * kBlockQ, h = std::min(kBlockQ, T_ - i0);
      load_rows(q + base, i0, h, D, qb.data());
      load_rows(dout + base, i0, h, D, dob.data());
      std::fill(dqb.begin(), dqb.begin() + h * D, C(0));
      const int64_t kb_end = causal ? std::min(n_kb, (i0 + h - 1) / kBlockK + 1) : n_kb;
      for (int64_t kblk = 0; kblk < kb_end; ++kblk) {
        const int64_t j0 = kblk * kBlockK, w = std::min(kBlockK, T_ - j0);
        load_rows(k + base, j0, w, D, kb.data());
        load_rows(v + base, j0, w, D, vb.data());
        block_gemm<C>(false, true, h, w, D, qb.data(), D, kb.data(), D, false, p.data(), kBlockK);
        block_gemm<C>(false, true, h, w, D, dob.data(), D, vb.data(), D, false, dp.data(), kBlockK);
        block_probabilities(p.data(), dp.data(), h, w, i0, j0, causal, scale, lse + bh * T_ + i0, drow + bh * T_ + i0);
        block_gemm<C>(false, false, h, D, w, dp.data(), kBlockK, kb.data(), D, true, dqb.data(), D);
      }
      for (int64_t e = 0; e < h * D; ++e) dq[base + i0 * D + e] = static_cast<T>(dqb[static_cast<size_t>(e)]);
    }
  });
}

}  // namespace

void CpuBackend::impl_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                        const Tensor& lse, double scale, bool causal) {
  const char* op = "attention_forward";
  const AttnGeometry g = attention_geometry(q);  // checked by Backend::attention_forward
  if (lse.numel() == 0) return;                  // (D == 0 runs through: every score 0, lse = log(keys seen))
  dispatch_float(q.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    forward_impl<T>(q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(), lse.data<acc_t<T>>(), g, scale, causal);
  });
}

void CpuBackend::impl_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                         const Tensor& dout, const Tensor& lse, const Tensor& dq, const Tensor& dk,
                                         const Tensor& dv, double scale, bool causal) {
  const char* op = "attention_backward";
  const AttnGeometry g = attention_geometry(q);  // checked by Backend::attention_backward
  if (q.numel() == 0) return;
  dispatch_float(q.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    backward_impl<T>(q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(), dout.data<T>(), lse.data<acc_t<T>>(),
                     dq.data<T>(), dk.data<T>(), dv.data<T>(), g, scale, causal);
  });
}

}  // namespace headroom::cpu
