// Tensor-parallel layers and their communication (Notes in nn/parallel/tensor_parallel.h).
#include "nn/parallel/tensor_parallel.h"

#include <cmath>

#include "autograd/function.h"
#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "engine/memory.h"

namespace headroom::nn {

// ---- Note [conjugate communication] ----

Tensor copy_to_tensor_parallel(const Tensor& x, dist::ProcessGroup& group) {
  if (!needs_grad({x})) return x;
  Tensor out;
  {
    NoGradGuard no_grad;
    out = x.view(x.shape());  // the same values: an alias the node hangs off
  }
  dist::ProcessGroup* g = &group;
  record("copy_to_tensor_parallel", out, {x}, [g](const Tensor& grad) -> std::vector<Tensor> {
    Tensor sum = grad.contiguous().clone();
    g->all_reduce(sum, dist::ReduceOp::sum)->wait();
    return {sum};
  });
  return out;
}

Tensor reduce_from_tensor_parallel(const Tensor& x, dist::ProcessGroup& group) {
  Tensor out;
  {
    NoGradGuard no_grad;
    out = x.contiguous().clone();
  }
  group.all_reduce(out, dist::ReduceOp::sum)->wait();
  if (needs_grad({x}))
    record("reduce_from_tensor_parallel", out, {x}, [](const Tensor& grad) -> std::vector<Tensor> { return {grad}; });
  return out;
}

// ---- layers ----

namespace {
int64_t shard_of(int64_t n, const dist::ProcessGroup& g, const char* what) {
  HR_CHECK(n % g.size() == 0, ShapeError, what, ": ", n, " does not divide among the group's ", g.size(), " ranks");
  return n / g.size();
}

Tensor new_parameter(const Shape& shape, Device device, double bound) {
  CategoryScope params(MemoryCategory::parameter);
  return ((Tensor::rand(shape) * (2 * bound)) - bound).to(device);
}
}  // namespace

ColumnParallelLinear::ColumnParallelLinear(int64_t in, int64_t out, dist::ProcessGroup& group, bool with_bias)
    : in_features(in), out_features(out), group_(group) {
  const int64_t local = shard_of(out, group, "ColumnParallelLinear: out_features");
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  weight = new_parameter({local, in}, Device::cpu(), bound);
  register_parameter("weight", &weight);
  if (with_bias) {
    bias = new_parameter({local}, Device::cpu(), bound);
    register_parameter("bias", &bias);
  }
}

std::shared_ptr<ColumnParallelLinear> ColumnParallelLinear::from(const Linear& full, dist::ProcessGroup& group,
                                                                 Device device) {
  auto l = std::make_shared<ColumnParallelLinear>(full.in_features, full.out_features, group, full.bias.defined());
  const int64_t local = l->weight.size(0), r = group.rank();
  NoGradGuard no_grad;
  l->weight.copy_(full.weight.slice(0, r * local, (r + 1) * local));
  if (full.bias.defined()) l->bias.copy_(full.bias.slice(0, r * local, (r + 1) * local));
  l->to(device);
  return l;
}

Tensor ColumnParallelLinear::forward(const Tensor& x) {
  return linear(copy_to_tensor_parallel(x, group_), weight, bias);
}

std::string ColumnParallelLinear::name() const {
  return str_cat("ColumnParallelLinear(", in_features, ", ", out_features, ", rank ", group_.rank(), " of ",
                 group_.size(), ")");
}

RowParallelLinear::RowParallelLinear(int64_t in, int64_t out, dist::ProcessGroup& group, bool with_bias)
    : in_features(in), out_features(out), group_(group) {
  const int64_t local = shard_of(in, group, "RowParallelLinear: in_features");
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  weight = new_parameter({out, local}, Device::cpu(), bound);
  register_parameter("weight", &weight);
  if (with_bias) {
    bias = new_parameter({out}, Device::cpu(), bound);
    register_parameter("bias", &bias);
  }
}

std::shared_ptr<RowParallelLinear> RowParallelLinear::from(const Linear& full, dist::ProcessGroup& group,
                                                           Device device) {
  auto l = std::make_shared<RowParallelLinear>(full.in_features, full.out_features, group, full.bias.defined());
  const int64_t local = l->weight.size(1), r = group.rank();
  NoGradGuard no_grad;
  l->weight.copy_(full.weight.slice(1, r * local, (r + 1) * local));
  if (full.bias.defined()) l->bias.copy_(full.bias);
  l->to(device);
  return l;
}

Tensor RowParallelLinear::forward(const Tensor& x) {
  Tensor partial = linear(x, weight, Tensor());
  Tensor y = reduce_from_tensor_parallel(partial, group_);
  return bias.defined() ? y + bias : y;
}

std::string RowParallelLinear::name() const {
  return str_cat("RowParallelLinear(", in_features, ", ", out_features, ", rank ", group_.rank(), " of ", group_.size(),
                 ")");
}

std::shared_ptr<TensorParallelMLP> TensorParallelMLP::from(const Linear& fc, const Linear& proj,
                                                           dist::ProcessGroup& group, Device device) {
  auto m = std::make_shared<TensorParallelMLP>();
  m->fc = m->register_module("fc", ColumnParallelLinear::from(fc, group, device));
  m->proj = m->register_module("proj", RowParallelLinear::from(proj, group, device));
  return m;
}

Tensor TensorParallelMLP::forward(const Tensor& x) { return proj->forward(gelu(fc->forward(x))); }

std::shared_ptr<TensorParallelAttention> TensorParallelAttention::from(const CausalSelfAttention& full,
                                                                       dist::ProcessGroup& group, Device device) {
  const int64_t c = full.n_embd, t = group.size(), r = group.rank();
  HR_CHECK(full.n_head % t == 0, ShapeError, "TensorParallelAttention: ", full.n_head,
           " heads do not divide among the group's ", t, " ranks");
  HR_CHECK(full.resid_dropout->p == 0.0, ValueError, "TensorParallelAttention: dropout must be 0 (each rank would ",
           "draw its own mask), got ", full.resid_dropout->p);
  auto a = std::make_shared<TensorParallelAttention>();
  a->n_embd = c;
  a->local_heads = full.n_head / t;
  a->impl = full.impl;
  // c_attn's rows are q | k | v, each C: this rank's heads are rows [r*C/T, (r+1)*C/T) of each.
  const int64_t local = c / t;
  auto qkv = std::make_shared<ColumnParallelLinear>(c, 3 * c, group, full.c_attn->bias.defined());
  {
    NoGradGuard no_grad;
    std::vector<Tensor> w, b;
    for (int64_t part = 0; part < 3; ++part) {
      w.push_back(full.c_attn->weight.slice(0, part * c + r * local, part * c + (r + 1) * local));
      if (full.c_attn->bias.defined())
        b.push_back(full.c_attn->bias.slice(0, part * c + r * local, part * c + (r + 1) * local));
    }
    qkv->weight.copy_(cat(w, 0));
    if (!b.empty()) qkv->bias.copy_(cat(b, 0));
  }
  qkv->to(device);
  a->c_attn = a->register_module("c_attn", qkv);
  a->c_proj = a->register_module("c_proj", RowParallelLinear::from(*full.c_proj, group, device));
  return a;
}

Tensor TensorParallelAttention::forward(const Tensor& x) {
  HR_CHECK(x.dim() == 3 && x.size(2) == n_embd, ShapeError, name(), ": expected input [B, T, ", n_embd, "], got ",
           describe(x));
  const int64_t b = x.size(0), t = x.size(1), local = c_attn->weight.size(0) / 3, d = local / local_heads;
  Tensor qkv = c_attn->forward(x);  // [B, T, 3C/T]
  std::vector<Tensor> parts = split(qkv, local, 2);
  auto heads = [&](const Tensor& p) { return p.reshape({b, t, local_heads, d}).transpose(1, 2); };
  Tensor y = scaled_dot_product_attention(heads(parts[0]), heads(parts[1]), heads(parts[2]), true, impl);
  y = y.transpose(1, 2).reshape({b, t, local});
  return c_proj->forward(y);
}

std::shared_ptr<TensorParallelBlock> TensorParallelBlock::from(const Block& full, dist::ProcessGroup& group,
                                                               Device device) {
  auto blk = std::make_shared<TensorParallelBlock>();
  auto copy_norm = [&](const LayerNorm& ln) {
    auto n = std::make_shared<LayerNorm>(ln.normalized_shape);
    n->load_state_dict(ln.state_dict());
    n->to(device);
    return n;
  };
  blk->ln_1 = blk->register_module("ln_1", copy_norm(*full.ln_1));
  blk->attn = blk->register_module("attn", TensorParallelAttention::from(*full.attn, group, device));
  blk->ln_2 = blk->register_module("ln_2", copy_norm(*full.ln_2));
  HR_CHECK(full.mlp->dropout->p == 0.0, ValueError, "TensorParallelBlock: the MLP's dropout must be 0, got ",
           full.mlp->dropout->p);
  blk->mlp = blk->register_module("mlp", TensorParallelMLP::from(*full.mlp->c_fc, *full.mlp->c_proj, group, device));
  return blk;
}

Tensor TensorParallelBlock::forward(const Tensor& x) {
  Tensor y = x + attn->forward(ln_1->forward(x));
  return y + mlp->forward(ln_2->forward(y));
}

}  // namespace headroom::nn
