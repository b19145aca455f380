// Cross-entropy of a linear output layer over a large vocabulary, in chunks of rows, so that the
// [N, V] logits are never held at once.
//
//   Tensor loss = nn::chunked_cross_entropy(h, model.wte->weight, targets);   // h: [N, C]
//   // == cross_entropy(linear(h, weight, {}), targets), value and gradients
//
// A language model's last layer turns N = B*T hidden rows into N x V logits: 8192 x 50304 f32
// is 1.6 GiB, plus its gradient in backward -- often the largest activation of the model. Here
// the forward computes the logits of `chunk_rows` rows at a time (one gemm and the fused
// cross-entropy kernel), keeps only each row's loss and f32 log-sum-exp, and drops the chunk.
// Backward recomputes each chunk's logits, turns them into dlogits with the saved log-sum-exp,
// writes that chunk's rows of dh and accumulates dweight (+=, in the weight's dtype). Saved for
// backward: h, weight, the targets and [N] f32 statistics -- nothing of size V per row. The
// price is a second h @ W^T in backward (about a third more lm-head arithmetic).
//
// Under autocast (autograd/autocast.h) it follows linear and cross_entropy: f32 h and weight
// are cast to the scope's f16/bf16 (the weight through the cast cache, so a tied embedding is
// cast once per scope), the gemms and the chunk buffers are 16-bit -- by default
// twice the rows in the same bytes (default_chunk_rows) -- and the log-sum-exp, the sum of the row losses and the returned loss are f32. Gradients
// reach the f32 h and weight through the casts. f64 is never cast.
#pragma once

#include <cstdint>

#include "engine/tensor.h"

namespace headroom::nn {

// Rows per chunk when chunk_rows is 0: as many as fit kDefaultChunkBytes of logits of
// `element_size` bytes (at least one). 16-bit logits (autocast) thus get twice the rows of f32
// in the same bytes: half the chunks, so half the gemm launches and half the roundings of the
// 16-bit dweight, which is accumulated chunk by chunk.
inline constexpr int64_t kDefaultChunkBytes = int64_t{64} << 20;
int64_t default_chunk_rows(int64_t vocab_size, int64_t element_size = 4);

// Mean over the rows whose target is not ignore_index of -log softmax(h @ weight^T)[target].
// h: [N, C] float; weight: [V, C] of h's dtype and device; target: [N] integer class indices.
// The loss has h's dtype, or f32 under autocast for f32, f16 and bf16 h.
// chunk_rows: rows per chunk (0: default_chunk_rows(V)). All targets ignored gives NaN, as the
// plain cross_entropy does.
Tensor chunked_cross_entropy(const Tensor& h, const Tensor& weight, const Tensor& target, int64_t chunk_rows = 0,
                             int64_t ignore_index = -100);

}  // namespace headroom::nn
