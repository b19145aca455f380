// CausalSelfAttention: GPT-2's multi-head self-attention block.
//
// x [B, T, C] -> one Linear to q, k, v ([B, T, 3C], c_attn), split into n_head heads of
// D = C / n_head ([B, H, T, D]), causal scaled dot-product attention, heads merged back to
// [B, T, C], output Linear (c_proj), dropout. `impl` picks the attention form
// (autograd/functions/attention.h): naive keeps the [B, H, T, T] probabilities for backward,
// fused keeps only [B, H, T] statistics; value and gradients are the same. It is a public member,
// so a benchmark can switch it on a built model. Dropout is applied to the block's output (the
// residual branch), not to the attention probabilities, which the fused form never holds.
// Parameter names follow nanoGPT ("c_attn.weight", "c_proj.bias").
#pragma once

#include <memory>

#include "autograd/functions/attention.h"
#include "nn/layers/activation.h"
#include "nn/layers/linear.h"
#include "nn/module.h"

namespace headroom::nn {

class CausalSelfAttention : public Module {
 public:
  CausalSelfAttention(int64_t n_embd, int64_t n_head, double dropout = 0.0, AttentionImpl impl = AttentionImpl::fused,
                      bool bias = true);
  Tensor forward(const Tensor& x) override;  // [B, T, C] -> [B, T, C]
  std::string name() const override;

  int64_t n_embd, n_head;
  AttentionImpl impl;
  std::shared_ptr<Linear> c_attn;  // C -> 3C: q, k, v side by side
  std::shared_ptr<Linear> c_proj;  // C -> C
  std::shared_ptr<Dropout> resid_dropout;
};

}  // namespace headroom::nn
