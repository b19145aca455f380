// Fused (causal) attention on the CPU: out = softmax(scale q k^T + mask) v without a T x T matrix.
//
// q, k, v, out are [B, H, T, D] contiguous; each (b, h) is an independent [T, D] problem. The
// queries are cut into blocks of kBlockQ rows and the keys into blocks of kBlockK; a unit of
// work is one (b*h, query block), and parallel_for spreads the units over the cores. A unit walks
// the key blocks once, keeping per query a running maximum m and sum l of exp(score - m) and an
// accumulator of exp(score - m) v, rescaled by exp(m_old - m_new) whenever the maximum grows
// (online softmax). At the end out = acc / l and lse = m + log(l) is written for backward. The
// only buffers are block-sized (a [D, kBlockK] transposed key block, a value block, one row of
// scores), so memory is linear in T. With causal, query t sees keys 0..t: key blocks wholly
// after a query block are skipped and the diagonal block is cut per row.
//
// Backward (FlashAttention-2's algebra) recomputes the probabilities block by block from q, k and
// the saved lse: P = exp(scale s - lse), dP = dout v^T, D_i = rowsum(dout_i * out_i), and
// dS = P * (dP - D). Then dv = P^T dout, dk = scale dS^T q, dq = scale dS k. To stay free of races
// without per-thread copies of dq, it runs two passes: one unit per (b*h, key block) owns that
// block's rows of dk and dv and walks the query blocks that see it; one unit per (b*h, query
// block) owns its rows of dq and streams over the key blocks. Each recomputes P (the price of
// writing every output exactly once, =, with no atomics), which is also how the CUDA kernel works.
//
// Inner loops run over a contiguous block dimension with the operation fixed, so they vectorise:
// scores against a transposed key block (s[j] += q[d] * kT[d][j]), outputs as weighted sums of
// rows over D, in chunks of columns whose sums stay in registers (Note [attention isa]).
// f16/bf16 are converted to f32 when a block is loaded and rounded once when written; f32
// computes in f32, f64 in f64. Units are visited in a zig-zag order of query blocks so that with
// causal masking (later blocks cost more) the contiguous ranges parallel_for hands each thread
// get a similar amount of work.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/contract_checks.h"
#include "engine/meta.h"
#include "kernels/cpu/cpu_backend.h"
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

// Loads rows [j0, j0 + w) of a [T, D] matrix into dst as [D, kBlockK] (transposed), in C.
template <typename T, typename C>
void load_transposed(const T* src, int64_t j0, int64_t w, int64_t d, C* dst) {
  for (int64_t jj = 0; jj < w; ++jj) {
    const T* row = src + (j0 + jj) * d;
    for (int64_t c = 0; c < d; ++c) dst[c * kBlockK + jj] = static_cast<C>(row[c]);
  }
}

// Loads rows [r0, r0 + n) of a [T, D] matrix into dst as [n, D], in C.
template <typename T, typename C>
void load_rows(const T* src, int64_t r0, int64_t n, int64_t d, C* dst) {
  const T* p = src + r0 * d;
  for (int64_t e = 0; e < n * d; ++e) dst[e] = static_cast<C>(p[e]);
}

// Note [attention isa]: the library is built for the baseline x86-64 ISA (SSE2: 4 floats an
// instruction, no FMA). These two loops are nearly all of the arithmetic, so they are compiled
// three times, for AVX-512, AVX2+FMA and the baseline, and the loader picks the best one the CPU
// runs (GCC function multiversioning, an ifunc resolved once). The results differ only by the
// rounding of fused multiply-adds.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HR_ATTENTION_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HR_ATTENTION_MULTIVERSION
#endif

// Output columns whose running sums stay in registers across a whole dot product (256 bytes: 4
// AVX-512 or 8 AVX2 registers, four or more independent FMA chains to hide their latency): the
// sums are stored once, not once per term.
template <typename C>
inline constexpr int64_t kChunk = 256 / static_cast<int64_t>(sizeof(C));

// s[0, w) = a[0, D) @ bt[D, kBlockK] (the first w columns of a transposed block).
template <typename C>
HR_ATTENTION_MULTIVERSION void row_times_block(const C* __restrict a, const C* __restrict bt, int64_t d, int64_t w,
                                               C* __restrict s) {
  int64_t j0 = 0;
  for (; j0 + kChunk<C> <= w; j0 += kChunk<C>) {
    C acc[kChunk<C>] = {};
    for (int64_t c = 0; c < d; ++c) {
      const C ac = a[c];
      const C* __restrict b = bt + c * kBlockK + j0;
      for (int64_t jj = 0; jj < kChunk<C>; ++jj) acc[jj] += ac * b[jj];
    }
    for (int64_t jj = 0; jj < kChunk<C>; ++jj) s[j0 + jj] = acc[jj];
  }
  for (int64_t jj = j0; jj < w; ++jj) s[jj] = C(0);
  for (int64_t c = 0; c < d && j0 < w; ++c) {
    const C ac = a[c];
    const C* __restrict b = bt + c * kBlockK;
    for (int64_t jj = j0; jj < w; ++jj) s[jj] += ac * b[jj];
  }
}

// y[0, D) += sum over r < n of p[r] * x[r * ldx + (0, D)]: a weighted sum of n rows.
template <typename C>
HR_ATTENTION_MULTIVERSION void accumulate_rows(const C* __restrict p, const C* __restrict x, int64_t ldx, int64_t n,
                                               int64_t d, C* __restrict y) {
  int64_t c0 = 0;
  for (; c0 + kChunk<C> <= d; c0 += kChunk<C>) {
    C acc[kChunk<C>];
    for (int64_t c = 0; c < kChunk<C>; ++c) acc[c] = y[c0 + c];
    for (int64_t r = 0; r < n; ++r) {
      const C pr = p[r];
      const C* __restrict xr = x + r * ldx + c0;
      for (int64_t c = 0; c < kChunk<C>; ++c) acc[c] += pr * xr[c];
    }
    for (int64_t c = 0; c < kChunk<C>; ++c) y[c0 + c] = acc[c];
  }
  for (int64_t r = 0; r < n && c0 < d; ++r) {
    const C pr = p[r];
    const C* __restrict xr = x + r * ldx;
    for (int64_t c = c0; c < d; ++c) y[c] += pr * xr[c];
  }
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

template <typename T>
void forward_impl(const T* q, const T* k, const T* v, T* out, acc_t<T>* lse, const AttnGeometry& g, double scale_d,
                  bool causal) {
  using C = acc_t<T>;
  const C scale = static_cast<C>(scale_d);
  const int64_t T_ = g.t, D = g.d;
  const int64_t n_qb = (T_ + kBlockQ - 1) / kBlockQ, n_kb = (T_ + kBlockK - 1) / kBlockK;
  parallel_for(g.bh * n_qb, unit_grain(kBlockQ * T_ * D), [&](int64_t begin, int64_t end) {
    std::vector<C> qb(static_cast<size_t>(kBlockQ * D)), kt(static_cast<size_t>(D * kBlockK)),
        vb(static_cast<size_t>(kBlockK * D)), acc(static_cast<size_t>(kBlockQ * D)), s(kBlockK), m(kBlockQ), l(kBlockQ);
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
        load_transposed(k + base, j0, w, D, kt.data());
        load_rows(v + base, j0, w, D, vb.data());
        for (int64_t ii = 0; ii < h; ++ii) {
          const int64_t n = visible_keys(causal, i0 + ii, j0, w);
          if (n <= 0) continue;
          row_times_block(qb.data() + ii * D, kt.data(), D, w, s.data());  // all w: full chunks are faster
          C mx = -std::numeric_limits<C>::infinity();
          for (int64_t jj = 0; jj < n; ++jj) {
            s[jj] *= scale;
            mx = std::max(mx, s[jj]);
          }
          const C m_new = std::max(m[ii], mx);
          // A row whose scores are all -inf so far keeps m = -inf; exp(-inf - -inf) would be NaN.
          const C base_m = m_new == -std::numeric_limits<C>::infinity() ? C(0) : m_new;
          const C alpha = std::exp(m[ii] - base_m);
          exp_scores(s.data(), n, C(1), base_m);
          C sum = 0;
          for (int64_t jj = 0; jj < n; ++jj) sum += s[jj];
          l[ii] = l[ii] * alpha + sum;
          m[ii] = m_new;
          C* a = acc.data() + ii * D;
          if (alpha != C(1))
            for (int64_t c = 0; c < D; ++c) a[c] *= alpha;
          accumulate_rows(s.data(), vb.data(), D, n, D, a);
        }
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

  // Pass 1: dk and dv, a unit per (b*h, key block), over the query blocks that see it. A query
  // block's P and scale * dS are kept transposed ([key][query]), so that each key's rows of dv
  // and dk are one weighted sum of the block's dout and q rows.
  parallel_for(g.bh * n_kb, unit_grain(kBlockK * T_ * D), [&](int64_t begin, int64_t end) {
    std::vector<C> kt(static_cast<size_t>(D * kBlockK)), vt(static_cast<size_t>(D * kBlockK)),
        qb(static_cast<size_t>(kBlockQ * D)), dob(static_cast<size_t>(kBlockQ * D)),
        dkb(static_cast<size_t>(kBlockK * D)), dvb(static_cast<size_t>(kBlockK * D)),
        pt(static_cast<size_t>(kBlockK * kBlockQ)), dst(static_cast<size_t>(kBlockK * kBlockQ)), p(kBlockK),
        dp(kBlockK);
    for (int64_t u = begin; u < end; ++u) {
      int64_t bh, kblk;
      unit_to_block(u, n_kb, bh, kblk);
      const int64_t base = bh * T_ * D;
      const int64_t j0 = kblk * kBlockK, w = std::min(kBlockK, T_ - j0);
      load_transposed(k + base, j0, w, D, kt.data());
      load_transposed(v + base, j0, w, D, vt.data());
      std::fill(dkb.begin(), dkb.begin() + w * D, C(0));
      std::fill(dvb.begin(), dvb.begin() + w * D, C(0));
      for (int64_t qblk = causal ? j0 / kBlockQ : 0; qblk < n_qb; ++qblk) {
        const int64_t i0 = qblk * kBlockQ, h = std::min(kBlockQ, T_ - i0);
        load_rows(q + base, i0, h, D, qb.data());
        load_rows(dout + base, i0, h, D, dob.data());
        for (int64_t ii = 0; ii < h; ++ii) {
          const int64_t i = i0 + ii;
          const int64_t n = std::max<int64_t>(0, visible_keys(causal, i, j0, w));
          const C li = static_cast<C>(lse[bh * T_ + i]), di = drow[bh * T_ + i];
          if (n > 0) {
            row_times_block(qb.data() + ii * D, kt.data(), D, w, p.data());
            row_times_block(dob.data() + ii * D, vt.data(), D, w, dp.data());
            exp_scores(p.data(), n, scale, li);
          }
          for (int64_t jj = 0; jj < w; ++jj) {
            const C pj = jj < n ? p[jj] : C(0);
            pt[static_cast<size_t>(jj * kBlockQ + ii)] = pj;
            dst[static_cast<size_t>(jj * kBlockQ + ii)] = jj < n ? pj * (dp[jj] - di) * scale : C(0);
          }
        }
        for (int64_t jj = 0; jj < w; ++jj) {
          accumulate_rows(pt.data() + jj * kBlockQ, dob.data(), D, h, D, dvb.data() + jj * D);
          accumulate_rows(dst.data() + jj * kBlockQ, qb.data(), D, h, D, dkb.data() + jj * D);
        }
      }
      for (int64_t e = 0; e < w * D; ++e) {
        dk[base + j0 * D + e] = static_cast<T>(dkb[static_cast<size_t>(e)]);
        dv[base + j0 * D + e] = static_cast<T>(dvb[static_cast<size_t>(e)]);
      }
    }
  });

  // Pass 2: dq, a unit per (b*h, query block), streaming over the key blocks it sees.
  parallel_for(g.bh * n_qb, unit_grain(kBlockQ * T_ * D), [&](int64_t begin, int64_t end) {
    std::vector<C> qb(static_cast<size_t>(kBlockQ * D)), dob(static_cast<size_t>(kBlockQ * D)),
        dqb(static_cast<size_t>(kBlockQ * D)), kt(static_cast<size_t>(D * kBlockK)),
        vt(static_cast<size_t>(D * kBlockK)), kr(static_cast<size_t>(kBlockK * D)), p(kBlockK), dp(kBlockK);
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
        load_transposed(k + base, j0, w, D, kt.data());
        load_transposed(v + base, j0, w, D, vt.data());
        load_rows(k + base, j0, w, D, kr.data());
        for (int64_t ii = 0; ii < h; ++ii) {
          const int64_t i = i0 + ii;
          const int64_t n = visible_keys(causal, i, j0, w);
          if (n <= 0) continue;
          const C li = static_cast<C>(lse[bh * T_ + i]), di = drow[bh * T_ + i];
          row_times_block(qb.data() + ii * D, kt.data(), D, w, p.data());
          row_times_block(dob.data() + ii * D, vt.data(), D, w, dp.data());
          exp_scores(p.data(), n, scale, li);
          for (int64_t jj = 0; jj < n; ++jj) p[jj] = p[jj] * (dp[jj] - di) * scale;  // dS
          accumulate_rows(p.data(), kr.data(), D, n, D, dqb.data() + ii * D);
        }
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
