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
#pragma once

#include <cstdint>

#include "engine/tensor.h"

namespace headroom::nn {

// Rows per chunk when chunk_rows is 0: as many as fit kDefaultChunkBytes of f32 logits (at
// least one).
inline constexpr int64_t kDefaultChunkBytes = int64_t{64} << 20;
int64_t default_chunk_rows(int64_t vocab_size);

// Mean over the rows whose target is not ignore_index of -log softmax(h @ weight^T)[target].
// h: [N, C] float; weight: [V, C] of h's dtype and device; target: [N] integer class indices.
// chunk_rows: rows per chunk (0: default_chunk_rows(V)). All targets ignored gives NaN, as the
// plain cross_entropy does.
Tensor chunked_cross_entropy(const Tensor& h, const Tensor& weight, const Tensor& target, int64_t chunk_rows = 0,
                             int64_t ignore_index = -100);

}  // namespace headroom::nn
