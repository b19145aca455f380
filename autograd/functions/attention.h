// Scaled dot-product attention in two forms, one API: the textbook composite that materialises
// the [T, T] scores, and the fused kernel (Backend::attention_forward) that never does.
//
//   Tensor y = scaled_dot_product_attention(q, k, v, /*causal=*/true, AttentionImpl::fused);
//
// q, k, v: [B, H, T, D], one float dtype, one device. out = softmax(scale q k^T + mask) v with
// scale = 1/sqrt(D) by default; causal: query t sees keys 0..t. Both forms have the same value
// and gradients (to rounding); they differ in memory: naive keeps B*H*T*T scores and
// probabilities alive for backward (quadratic in T), fused keeps q, k, v, out and a [B, H, T]
// f32 log-sum-exp (linear in T) and recomputes the probabilities in backward.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "engine/tensor.h"

namespace headroom {

enum class AttentionImpl : uint8_t { naive, fused };
const char* attention_impl_name(AttentionImpl impl);  // "naive", "fused"
// "naive" or "fused"; anything else throws ValueError listing both.
AttentionImpl parse_attention_impl(const std::string& name);

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal = true,
                                    AttentionImpl impl = AttentionImpl::fused,
                                    std::optional<double> scale = std::nullopt);

}  // namespace headroom
