// CausalSelfAttention: projections and head reshapes around scaled_dot_product_attention.
//
// The split into q, k, v and into heads is done with views (split, view, transpose); the
// attention function copies them contiguous when its form needs it, so nothing is copied here.
#include "nn/layers/attention.h"

#include "autograd/functions.h"

namespace headroom::nn {

CausalSelfAttention::CausalSelfAttention(int64_t c, int64_t h, double dropout, AttentionImpl impl_in, bool bias)
    : n_embd(c), n_head(h), impl(impl_in) {
  HR_CHECK(c > 0 && h > 0, ValueError, "CausalSelfAttention: n_embd and n_head must be positive, got n_embd=", c,
           ", n_head=", h);
  HR_CHECK(c % h == 0, ValueError, "CausalSelfAttention: n_embd ", c, " is not divisible by n_head ", h);
  c_attn = register_module("c_attn", std::make_shared<Linear>(c, 3 * c, bias));
  c_proj = register_module("c_proj", std::make_shared<Linear>(c, c, bias));
  resid_dropout = register_module("resid_dropout", std::make_shared<Dropout>(dropout));
}

Tensor CausalSelfAttention::forward(const Tensor& x) {
  HR_CHECK(x.dim() == 3 && x.size(2) == n_embd, ShapeError, name(), ": expected input [B, T, ", n_embd, "], got ",
           describe(x));
  const int64_t b = x.size(0), t = x.size(1), d = n_embd / n_head;
  Tensor qkv = c_attn->forward(x);  // [B, T, 3C]
  std::vector<Tensor> parts = split(qkv, n_embd, 2);
  auto heads = [&](const Tensor& p) { return p.reshape({b, t, n_head, d}).transpose(1, 2); };  // [B, H, T, D]
  Tensor y = scaled_dot_product_attention(heads(parts[0]), heads(parts[1]), heads(parts[2]), true, impl);
  y = y.transpose(1, 2).reshape({b, t, n_embd});  // heads side by side again
  return resid_dropout->forward(c_proj->forward(y));
}

std::string CausalSelfAttention::name() const {
  return str_cat("CausalSelfAttention(n_embd=", n_embd, ", n_head=", n_head, ", ", attention_impl_name(impl), ")");
}

}  // namespace headroom::nn
