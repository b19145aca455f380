// Note [direct tap kernels]: the padded-plane weight gradient was KH * KW gemms of an [O, span]
// by [span, C] product, O and C 16 or 32 and span tens of thousands: OpenBLAS packed both
// operands anew for every tap, and each packed value took part in only 16 or 32 multiply-adds,
// so the layer ran at under half the core's peak (36 GFLOP/s for ResNet-18's 32 x 32 layer on
// the 2-core AMD EPYC, against 53 for its 8 x 8 layers and about 78 peak). Here the taps of one kernel
// row share their loads: for four output channels and the three taps of a row, twelve vector
// sums stay in registers while the loop over j reads each input vector once (three shifted loads)
// and each output-gradient vector once -- seven loads for twelve fused multiply-adds. The columns
// go in blocks that fit the L2 cache, so that the [O, block] output gradient is reused from there
// across every input channel. Each block's vector sums are added horizontally into wt, in float,
// as a gemm's would be; the order of the additions differs from OpenBLAS's, so the results agree
// to rounding, not bit for bit.
//
// Forward and backward input are one kernel (tap_forward_f32): an output row r at column j sums
// w * in[s, j + shift] over input rows s and taps. Four output rows by 24 columns are twelve
// vector sums held in registers over all S * taps terms, so the output is written once, where
// the per-tap gemms read and wrote the whole [O, span] output once per tap (beta = 1), and each
// term costs three input loads and four weight broadcasts for twelve multiply-adds. Measured with
// ResNet-18's shapes at 1 thread (2-core AMD EPYC, 2026-12-07, batch 16): 16 channels at 32 x 32,
// forward 1.60 -> 1.01 ms, backward input 1.55 -> 1.00, backward weight 2.09 -> 1.10; 32 channels
// at 16 x 16, 1.39 -> 1.09, 1.36 -> 1.07, 1.69 -> 1.24.
#include "kernels/cpu/conv_taps.h"

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "engine/error.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HR_TAP_KERNELS 1
#endif

namespace headroom::cpu {

#ifdef HR_TAP_KERNELS

namespace {

constexpr int64_t kColumns = 2048;  // columns per block: [O, block] floats of 16..32 rows in L2

__attribute__((target("avx2,fma"))) inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// NO output channels (1..4) by the three taps of a row, over columns [0, n) of the block.
template <int NO>
__attribute__((target("avx2,fma"))) void row_block(const float* const* w, const float* p, int64_t tap_shift, int64_t n,
                                                   float (&out)[4][3]) {
  __m256 acc[NO][3];
  for (int oo = 0; oo < NO; ++oo)
    for (int k = 0; k < 3; ++k) acc[oo][k] = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 p0 = _mm256_loadu_ps(p + j), p1 = _mm256_loadu_ps(p + j + tap_shift),
                 p2 = _mm256_loadu_ps(p + j + 2 * tap_shift);
    for (int oo = 0; oo < NO; ++oo) {
      const __m256 wv = _mm256_loadu_ps(w[oo] + j);
      acc[oo][0] = _mm256_fmadd_ps(wv, p0, acc[oo][0]);
      acc[oo][1] = _mm256_fmadd_ps(wv, p1, acc[oo][1]);
      acc[oo][2] = _mm256_fmadd_ps(wv, p2, acc[oo][2]);
    }
  }
  for (int oo = 0; oo < NO; ++oo)
    for (int k = 0; k < 3; ++k) {
      float s = horizontal_sum(acc[oo][k]);
      for (int64_t t = j; t < n; ++t) s += w[oo][t] * p[t + k * tap_shift];
      out[oo][k] = s;
    }
}

// Columns [j, j + 8 * NV) of four output rows (NR of them real): twelve sums in registers at
// NV = 3, one input load per vector and one weight broadcast per row for every term k, whose
// input row and tap shift are folded into offsets[k]. (One flat loop over k: with a loop over
// taps inside one over rows, GCC kept a copy of the sums on the stack, stored every iteration.)
template <int NR, int NV>
__attribute__((target("avx2,fma"))) void forward_block(const float* in, const int64_t* offsets, int64_t K,
                                                       const float* wk, int64_t R, int64_t j, float* const* out) {
  __m256 acc[NR][NV];
  for (int rr = 0; rr < NR; ++rr)
    for (int v = 0; v < NV; ++v) acc[rr][v] = _mm256_setzero_ps();
  const float* x0 = in + j;
  for (int64_t k = 0; k < K; ++k) {
    const float* p = x0 + offsets[k];
    __m256 x[NV];
    for (int v = 0; v < NV; ++v) x[v] = _mm256_loadu_ps(p + 8 * v);
    const float* w = wk + k * R;
    for (int rr = 0; rr < NR; ++rr) {
      const __m256 wv = _mm256_broadcast_ss(w + rr);
      for (int v = 0; v < NV; ++v) acc[rr][v] = _mm256_fmadd_ps(wv, x[v], acc[rr][v]);
    }
  }
  for (int rr = 0; rr < NR; ++rr)
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(out[rr] + j + 8 * v, acc[rr][v]);
}

// forward_block<4, 3> written out: in the generic form GCC kept the twelve sums in registers but
// also stored them to the stack every iteration, which halved the speed.
__attribute__((target("avx2,fma"))) void forward_block_4x3(const float* in, const int64_t* offsets, int64_t K,
                                                           const float* wk, int64_t R, int64_t j, float* const* out) {
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
  __m256 a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
  const float* x0 = in + j;
  for (int64_t k = 0; k < K; ++k) {
    const float* p = x0 + offsets[k];
    const __m256 x_0 = _mm256_loadu_ps(p), x_1 = _mm256_loadu_ps(p + 8), x_2 = _mm256_loadu_ps(p + 16);
    const float* w = wk + k * R;
    __m256 wv = _mm256_broadcast_ss(w);
    a00 = _mm256_fmadd_ps(wv, x_0, a00), a01 = _mm256_fmadd_ps(wv, x_1, a01), a02 = _mm256_fmadd_ps(wv, x_2, a02);
    wv = _mm256_broadcast_ss(w + 1);
    a10 = _mm256_fmadd_ps(wv, x_0, a10), a11 = _mm256_fmadd_ps(wv, x_1, a11), a12 = _mm256_fmadd_ps(wv, x_2, a12);
    wv = _mm256_broadcast_ss(w + 2);
    a20 = _mm256_fmadd_ps(wv, x_0, a20), a21 = _mm256_fmadd_ps(wv, x_1, a21), a22 = _mm256_fmadd_ps(wv, x_2, a22);
    wv = _mm256_broadcast_ss(w + 3);
    a30 = _mm256_fmadd_ps(wv, x_0, a30), a31 = _mm256_fmadd_ps(wv, x_1, a31), a32 = _mm256_fmadd_ps(wv, x_2, a32);
  }
  float* o0 = out[0] + j;
  float* o1 = out[1] + j;
  float* o2 = out[2] + j;
  float* o3 = out[3] + j;
  _mm256_storeu_ps(o0, a00), _mm256_storeu_ps(o0 + 8, a01), _mm256_storeu_ps(o0 + 16, a02);
  _mm256_storeu_ps(o1, a10), _mm256_storeu_ps(o1 + 8, a11), _mm256_storeu_ps(o1 + 16, a12);
  _mm256_storeu_ps(o2, a20), _mm256_storeu_ps(o2 + 8, a21), _mm256_storeu_ps(o2 + 16, a22);
  _mm256_storeu_ps(o3, a30), _mm256_storeu_ps(o3 + 8, a31), _mm256_storeu_ps(o3 + 16, a32);
}

// Note [avx-512 tap blocks]: forward_block_4x3 at twice the width, 4 rows by 48 columns in twelve
// 512-bit sums, where the CPU has AVX-512 (runtime check). Each lane still adds its terms in the
// order k, one fused multiply-add each, so a column gets the same bits at either width.
// resnet18-cpu-f32: 53.2 -> 47.4 ms a step at 1 thread (AMD EPYC with AVX-512, 2026-12-07,
// medians of 4 runs alternating with HEADROOM_NO_AVX512=1).
__attribute__((target("avx512f"))) void forward_block_4x3_512(const float* in, const int64_t* offsets, int64_t K,
                                                              const float* wk, int64_t R, int64_t j,
                                                              float* const* out) {
  __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
  __m512 a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
  const float* x0 = in + j;
  for (int64_t k = 0; k < K; ++k) {
    const float* p = x0 + offsets[k];
    const __m512 x_0 = _mm512_loadu_ps(p), x_1 = _mm512_loadu_ps(p + 16), x_2 = _mm512_loadu_ps(p + 32);
    const float* w = wk + k * R;
    __m512 wv = _mm512_set1_ps(w[0]);
    a00 = _mm512_fmadd_ps(wv, x_0, a00), a01 = _mm512_fmadd_ps(wv, x_1, a01), a02 = _mm512_fmadd_ps(wv, x_2, a02);
    wv = _mm512_set1_ps(w[1]);
    a10 = _mm512_fmadd_ps(wv, x_0, a10), a11 = _mm512_fmadd_ps(wv, x_1, a11), a12 = _mm512_fmadd_ps(wv, x_2, a12);
    wv = _mm512_set1_ps(w[2]);
    a20 = _mm512_fmadd_ps(wv, x_0, a20), a21 = _mm512_fmadd_ps(wv, x_1, a21), a22 = _mm512_fmadd_ps(wv, x_2, a22);
    wv = _mm512_set1_ps(w[3]);
    a30 = _mm512_fmadd_ps(wv, x_0, a30), a31 = _mm512_fmadd_ps(wv, x_1, a31), a32 = _mm512_fmadd_ps(wv, x_2, a32);
  }
  float* o0 = out[0] + j;
  float* o1 = out[1] + j;
  float* o2 = out[2] + j;
  float* o3 = out[3] + j;
  _mm512_storeu_ps(o0, a00), _mm512_storeu_ps(o0 + 16, a01), _mm512_storeu_ps(o0 + 32, a02);
  _mm512_storeu_ps(o1, a10), _mm512_storeu_ps(o1 + 16, a11), _mm512_storeu_ps(o1 + 32, a12);
  _mm512_storeu_ps(o2, a20), _mm512_storeu_ps(o2 + 16, a21), _mm512_storeu_ps(o2 + 32, a22);
  _mm512_storeu_ps(o3, a30), _mm512_storeu_ps(o3 + 16, a31), _mm512_storeu_ps(o3 + 32, a32);
}

bool avx512_tap_blocks() {
  static const bool ok = __builtin_cpu_supports("avx512f") && std::getenv("HEADROOM_NO_AVX512") == nullptr;
  return ok;
}

template <int NR>
__attribute__((target("avx2,fma"))) void forward_rows(const float* in, const int64_t* offsets, int64_t K,
                                                      const float* wk, int64_t R, int64_t n, float* const* out) {
  int64_t j = 0;
  if constexpr (NR == 4)
    if (avx512_tap_blocks())  // Note [avx-512 tap blocks]
      for (; j + 48 <= n; j += 48) forward_block_4x3_512(in, offsets, K, wk, R, j, out);
  for (; j + 24 <= n; j += 24) {
    if constexpr (NR == 4) forward_block_4x3(in, offsets, K, wk, R, j, out);
    else forward_block<NR, 3>(in, offsets, K, wk, R, j, out);
  }
  for (; j + 8 <= n; j += 8) forward_block<NR, 1>(in, offsets, K, wk, R, j, out);
  for (; j < n; ++j)  // the last few columns one at a time
    for (int rr = 0; rr < NR; ++rr) {
      float sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += wk[k * R + rr] * in[offsets[k] + j];
      out[rr][j] = sum;
    }
}

// Note [native bf16 taps]: bf16 convolutions on a CPU with AVX-512 BF16 multiply bf16 pairs
// directly: VDPBF16PS adds two bf16 products to each f32 lane, 32 multiply-adds an instruction
// against 16 for an f32 FMA, and the operands stay two bytes wide. The input is laid out as
// channel pairs (element 2i and 2i+1 of a pair row are channels 2s and 2s+1 at position i), the
// weight as the matching pairs, and the block is forward_block_4x3_512's: 4 rows by 48 columns,
// twelve f32 sums. The weight gradient (row_block_bf16) needs no pairs layout: its sum runs over
// columns, so each lane takes two neighbouring columns of both operands. The products are exact
// in f32 and each lane adds them in a fixed order, but that order (a pair's second element
// first) and the instruction's flushing of subnormals (which the CPU kernels do anyway, README)
// differ from the f32 kernels', so the two agree to f32 rounding, not bit for bit. The operands
// are converted once into the f32 path's scratch (half of it), not to f32 for every use.
// resnet18-cpu-bf16 (whose 3 x 3 stride-1 layers all take these): 61.0 -> 51.5 ms a step at 1
// thread, 37.4 -> 32.6 at 2 (AMD EPYC with AVX-512 BF16, 2026-12-07, medians of 4 and 3 runs
// alternating with HEADROOM_NO_AVX512=1, which turns both AVX-512 paths off).
__attribute__((target("avx512f,avx512bf16"))) void bf16_block_4x3(const uint16_t* in, const int64_t* offsets, int64_t K,
                                                                  const uint32_t* wk, int64_t R, int64_t j,
                                                                  float* const* out) {
  __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
  __m512 a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
  const uint16_t* x0 = in + 2 * j;
  for (int64_t k = 0; k < K; ++k) {
    const uint16_t* p = x0 + 2 * offsets[k];
    const auto x_0 = (__m512bh)_mm512_loadu_si512(p), x_1 = (__m512bh)_mm512_loadu_si512(p + 32),
               x_2 = (__m512bh)_mm512_loadu_si512(p + 64);
    const uint32_t* w = wk + k * R;
    auto wv = (__m512bh)_mm512_set1_epi32(static_cast<int>(w[0]));
    a00 = _mm512_dpbf16_ps(a00, x_0, wv), a01 = _mm512_dpbf16_ps(a01, x_1, wv), a02 = _mm512_dpbf16_ps(a02, x_2, wv);
    wv = (__m512bh)_mm512_set1_epi32(static_cast<int>(w[1]));
    a10 = _mm512_dpbf16_ps(a10, x_0, wv), a11 = _mm512_dpbf16_ps(a11, x_1, wv), a12 = _mm512_dpbf16_ps(a12, x_2, wv);
    wv = (__m512bh)_mm512_set1_epi32(static_cast<int>(w[2]));
    a20 = _mm512_dpbf16_ps(a20, x_0, wv), a21 = _mm512_dpbf16_ps(a21, x_1, wv), a22 = _mm512_dpbf16_ps(a22, x_2, wv);
    wv = (__m512bh)_mm512_set1_epi32(static_cast<int>(w[3]));
    a30 = _mm512_dpbf16_ps(a30, x_0, wv), a31 = _mm512_dpbf16_ps(a31, x_1, wv), a32 = _mm512_dpbf16_ps(a32, x_2, wv);
  }
  float* o0 = out[0] + j;
  float* o1 = out[1] + j;
  float* o2 = out[2] + j;
  float* o3 = out[3] + j;
  _mm512_storeu_ps(o0, a00), _mm512_storeu_ps(o0 + 16, a01), _mm512_storeu_ps(o0 + 32, a02);
  _mm512_storeu_ps(o1, a10), _mm512_storeu_ps(o1 + 16, a11), _mm512_storeu_ps(o1 + 32, a12);
  _mm512_storeu_ps(o2, a20), _mm512_storeu_ps(o2 + 16, a21), _mm512_storeu_ps(o2 + 32, a22);
  _mm512_storeu_ps(o3, a30), _mm512_storeu_ps(o3 + 16, a31), _mm512_storeu_ps(o3 + 32, a32);
}

// NR rows (1..4) by up to 16 columns from j: the lanes of `mask` only (loads and stores).
template <int NR>
__attribute__((target("avx512f,avx512bf16"))) void bf16_block_16(const uint16_t* in, const int64_t* offsets, int64_t K,
                                                                 const uint32_t* wk, int64_t R, int64_t j,
                                                                 __mmask16 mask, float* const* out) {
  __m512 acc[NR];
  for (int rr = 0; rr < NR; ++rr) acc[rr] = _mm512_setzero_ps();
  const uint16_t* x0 = in + 2 * j;
  for (int64_t k = 0; k < K; ++k) {
    const auto x = (__m512bh)_mm512_maskz_loadu_epi32(mask, x0 + 2 * offsets[k]);
    const uint32_t* w = wk + k * R;
    for (int rr = 0; rr < NR; ++rr)
      acc[rr] = _mm512_dpbf16_ps(acc[rr], x, (__m512bh)_mm512_set1_epi32(static_cast<int>(w[rr])));
  }
  for (int rr = 0; rr < NR; ++rr) _mm512_mask_storeu_ps(out[rr] + j, mask, acc[rr]);
}

template <int NR>
__attribute__((target("avx512f,avx512bf16"))) void bf16_rows(const uint16_t* in, const int64_t* offsets, int64_t K,
                                                             const uint32_t* wk, int64_t R, int64_t n,
                                                             float* const* out) {
  int64_t j = 0;
  if constexpr (NR == 4)
    for (; j + 48 <= n; j += 48) bf16_block_4x3(in, offsets, K, wk, R, j, out);
  for (; j < n; j += 16) {
    const int64_t m = std::min<int64_t>(16, n - j);
    bf16_block_16<NR>(in, offsets, K, wk, R, j, static_cast<__mmask16>((1u << m) - 1u), out);
  }
}

// row_block on bf16 rows: the sum over j of w[o][j] * p[j + k * tap_shift] pairs neighbouring
// columns in each VDPBF16PS lane (Note [native bf16 taps]); the last block's columns past n are
// masked off in both operands.
template <int NO>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void row_block_bf16(const uint16_t* const* w, const uint16_t* p,
                                                                           int64_t tap_shift, int64_t n,
                                                                           float (&out)[4][3]) {
  __m512 acc[NO][3];
  for (int oo = 0; oo < NO; ++oo)
    for (int k = 0; k < 3; ++k) acc[oo][k] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 32) {
    const int64_t m = std::min<int64_t>(32, n - j);
    const auto mask = static_cast<__mmask32>(m == 32 ? ~0u : (1u << m) - 1u);
    const auto p0 = (__m512bh)_mm512_maskz_loadu_epi16(mask, p + j),
               p1 = (__m512bh)_mm512_maskz_loadu_epi16(mask, p + j + tap_shift),
               p2 = (__m512bh)_mm512_maskz_loadu_epi16(mask, p + j + 2 * tap_shift);
    for (int oo = 0; oo < NO; ++oo) {
      const auto wv = (__m512bh)_mm512_maskz_loadu_epi16(mask, w[oo] + j);
      acc[oo][0] = _mm512_dpbf16_ps(acc[oo][0], wv, p0);
      acc[oo][1] = _mm512_dpbf16_ps(acc[oo][1], wv, p1);
      acc[oo][2] = _mm512_dpbf16_ps(acc[oo][2], wv, p2);
    }
  }
  for (int oo = 0; oo < NO; ++oo)
    for (int k = 0; k < 3; ++k) out[oo][k] = _mm512_reduce_add_ps(acc[oo][k]);
}

}  // namespace

void tap_forward_f32(const float* in, int64_t ldi, int64_t S, const float* wk, int64_t R, int64_t KH, int64_t row_shift,
                     int64_t tap_shift, int64_t n, float* out, int64_t ldo) {
  const int64_t taps = 3 * KH, K = S * taps;
  std::vector<int64_t> offsets(static_cast<size_t>(K));
  for (int64_t s = 0; s < S; ++s)
    for (int64_t tap = 0; tap < taps; ++tap)
      offsets[static_cast<size_t>(s * taps + tap)] = s * ldi + (tap / 3) * row_shift + (tap % 3) * tap_shift;
  // Panels of columns whose input rows stay in L2 while every block of four output rows reads them.
  constexpr int64_t kPanel = 480;
  for (int64_t j0 = 0; j0 < n; j0 += kPanel) {
    const int64_t nj = std::min(kPanel, n - j0);
    for (int64_t r0 = 0; r0 < R; r0 += 4) {
      const int64_t nr = std::min<int64_t>(4, R - r0);
      float* rows[4];
      for (int64_t rr = 0; rr < nr; ++rr) rows[rr] = out + (r0 + rr) * ldo + j0;
      const float* w = wk + r0;
      const float* x = in + j0;
      switch (nr) {
        case 4: forward_rows<4>(x, offsets.data(), K, w, R, nj, rows); break;
        case 3: forward_rows<3>(x, offsets.data(), K, w, R, nj, rows); break;
        case 2: forward_rows<2>(x, offsets.data(), K, w, R, nj, rows); break;
        default: forward_rows<1>(x, offsets.data(), K, w, R, nj, rows); break;
      }
    }
  }
}

void tap_forward_bf16(const uint16_t* in, int64_t ldi, int64_t SP, const uint32_t* wk, int64_t R, int64_t KH,
                      int64_t row_shift, int64_t tap_shift, int64_t n, float* out, int64_t ldo) {
  const int64_t taps = 3 * KH, K = SP * taps;
  std::vector<int64_t> offsets(static_cast<size_t>(K));
  for (int64_t s = 0; s < SP; ++s)
    for (int64_t tap = 0; tap < taps; ++tap)
      offsets[static_cast<size_t>(s * taps + tap)] = s * ldi + (tap / 3) * row_shift + (tap % 3) * tap_shift;
  constexpr int64_t kPanel = 480;  // as tap_forward_f32's panels
  for (int64_t j0 = 0; j0 < n; j0 += kPanel) {
    const int64_t nj = std::min(kPanel, n - j0);
    for (int64_t r0 = 0; r0 < R; r0 += 4) {
      const int64_t nr = std::min<int64_t>(4, R - r0);
      float* rows[4];
      for (int64_t rr = 0; rr < nr; ++rr) rows[rr] = out + (r0 + rr) * ldo + j0;
      const uint32_t* w = wk + r0;
      const uint16_t* x = in + 2 * j0;
      switch (nr) {
        case 4: bf16_rows<4>(x, offsets.data(), K, w, R, nj, rows); break;
        case 3: bf16_rows<3>(x, offsets.data(), K, w, R, nj, rows); break;
        case 2: bf16_rows<2>(x, offsets.data(), K, w, R, nj, rows); break;
        default: bf16_rows<1>(x, offsets.data(), K, w, R, nj, rows); break;
      }
    }
  }
}

void tap_weight_grads_bf16(const uint16_t* wide, int64_t ldw, const uint16_t* padded, int64_t ldp, int64_t O, int64_t C,
                           int64_t KH, int64_t row_shift, int64_t tap_shift, int64_t span, float* wt) {
  for (int64_t j0 = 0; j0 < span; j0 += kColumns) {
    const int64_t n = std::min(kColumns, span - j0);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t kh = 0; kh < KH; ++kh) {
        const uint16_t* p = padded + c * ldp + kh * row_shift + j0;
        for (int64_t o0 = 0; o0 < O; o0 += 4) {
          const int64_t no = std::min<int64_t>(4, O - o0);
          const uint16_t* w[4];
          for (int64_t oo = 0; oo < no; ++oo) w[oo] = wide + (o0 + oo) * ldw + j0;
          float sums[4][3];
          switch (no) {
            case 4: row_block_bf16<4>(w, p, tap_shift, n, sums); break;
            case 3: row_block_bf16<3>(w, p, tap_shift, n, sums); break;
            case 2: row_block_bf16<2>(w, p, tap_shift, n, sums); break;
            default: row_block_bf16<1>(w, p, tap_shift, n, sums); break;
          }
          for (int64_t oo = 0; oo < no; ++oo)
            for (int64_t kw = 0; kw < 3; ++kw) wt[((kh * 3 + kw) * O + o0 + oo) * C + c] += sums[oo][kw];
        }
      }
  }
}

bool bf16_tap_kernels_available() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512bf16") && std::getenv("HEADROOM_NO_AVX512") == nullptr;
  return ok;
}

bool tap_kernels_available() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

void tap_weight_grads_f32(const float* wide, int64_t ldw, const float* padded, int64_t ldp, int64_t O, int64_t C,
                          int64_t KH, int64_t row_shift, int64_t tap_shift, int64_t span, float* wt) {
  for (int64_t j0 = 0; j0 < span; j0 += kColumns) {
    const int64_t n = std::min(kColumns, span - j0);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t kh = 0; kh < KH; ++kh) {
        const float* p = padded + c * ldp + kh * row_shift + j0;
        for (int64_t o0 = 0; o0 < O; o0 += 4) {
          const int64_t no = std::min<int64_t>(4, O - o0);
          const float* w[4];
          for (int64_t oo = 0; oo < no; ++oo) w[oo] = wide + (o0 + oo) * ldw + j0;
          float sums[4][3];
          switch (no) {
            case 4: row_block<4>(w, p, tap_shift, n, sums); break;
            case 3: row_block<3>(w, p, tap_shift, n, sums); break;
            case 2: row_block<2>(w, p, tap_shift, n, sums); break;
            default: row_block<1>(w, p, tap_shift, n, sums); break;
          }
          for (int64_t oo = 0; oo < no; ++oo)
            for (int64_t kw = 0; kw < 3; ++kw) wt[((kh * 3 + kw) * O + o0 + oo) * C + c] += sums[oo][kw];
        }
      }
  }
}

#else

bool tap_kernels_available() { return false; }

bool bf16_tap_kernels_available() { return false; }

void tap_forward_bf16(const uint16_t*, int64_t, int64_t, const uint32_t*, int64_t, int64_t, int64_t, int64_t, int64_t,
                      float*, int64_t) {
  HR_CHECK(false, Error, "tap_forward_bf16: not built for this CPU (bf16_tap_kernels_available() is false)");
}

void tap_weight_grads_bf16(const uint16_t*, int64_t, const uint16_t*, int64_t, int64_t, int64_t, int64_t, int64_t,
                           int64_t, int64_t, float*) {
  HR_CHECK(false, Error, "tap_weight_grads_bf16: not built for this CPU (bf16_tap_kernels_available() is false)");
}

void tap_forward_f32(const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t, int64_t, int64_t, float*,
                     int64_t) {
  HR_CHECK(false, Error, "tap_forward_f32: not built for this CPU (tap_kernels_available() is false)");
}

void tap_weight_grads_f32(const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                          int64_t, float*) {
  HR_CHECK(false, Error, "tap_weight_grads_f32: not built for this CPU (tap_kernels_available() is false)");
}

#endif

}  // namespace headroom::cpu
