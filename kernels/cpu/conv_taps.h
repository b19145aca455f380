// Direct kernels for the padded-plane convolution (Note [padded-plane convolution], conv.cpp) in
// f32 with AVX2 and FMA, for kernels three taps wide (3 x 3, the common case). See
// Note [direct tap kernels] in conv_taps.cpp.
#pragma once

#include <cstdint>

namespace headroom::cpu {

// Whether this CPU runs them (AVX2 and FMA); where it does not, conv.cpp keeps its gemms.
bool tap_kernels_available();

// The weight gradient of a 3-tap-wide kernel, added into wt:
//   wt[(tap * O + o) * C + c] += sum over j < span of wide[o * ldw + j] * padded[c * ldp + shift + j]
// for tap = kh * 3 + kw and shift = kh * row_shift + kw * tap_shift, kh < KH.
void tap_weight_grads_f32(const float* wide, int64_t ldw, const float* padded, int64_t ldp, int64_t O, int64_t C,
                          int64_t KH, int64_t row_shift, int64_t tap_shift, int64_t span, float* wt);

// A 3-tap-wide kernel applied to rows of input, written (not added) into out:
//   out[r * ldo + j] = sum over s < S and tap < 3 * KH of wk[(s * 3 * KH + tap) * R + r] * in[s * ldi + shift + j]
// for j < n, with shift = (tap / 3) * row_shift + (tap % 3) * tap_shift. The forward
// convolution is this with s the input channels and r the output channels; backward input is it
// with the roles swapped and the taps reversed (conv.cpp).
void tap_forward_f32(const float* in, int64_t ldi, int64_t S, const float* wk, int64_t R, int64_t KH, int64_t row_shift,
                     int64_t tap_shift, int64_t n, float* out, int64_t ldo);

// Note [native bf16 taps] (conv_taps.cpp): tap_forward_f32's sum with bf16 operands in channel
// pairs -- in[(s * ldi + i) * 2 + e] is input row 2s + e at column i, wk[(s * taps + tap) * R + r]
// holds the weights of rows 2s (low half) and 2s + 1 (high half) -- on AVX-512 BF16; false
// where the CPU lacks it (or HEADROOM_NO_AVX512 is set), and then tap_forward_bf16 throws.
bool bf16_tap_kernels_available();

void tap_forward_bf16(const uint16_t* in, int64_t ldi, int64_t SP, const uint32_t* wk, int64_t R, int64_t KH,
                      int64_t row_shift, int64_t tap_shift, int64_t n, float* out, int64_t ldo);

// tap_weight_grads_f32 on bf16 rows (natural layout, not pairs), adding into the f32 wt.
void tap_weight_grads_bf16(const uint16_t* wide, int64_t ldw, const uint16_t* padded, int64_t ldp, int64_t O, int64_t C,
                           int64_t KH, int64_t row_shift, int64_t tap_shift, int64_t span, float* wt);

}  // namespace headroom::cpu
