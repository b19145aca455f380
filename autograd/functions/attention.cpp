// scaled_dot_product_attention: the textbook composite and the fused op behind one function.
//
// The naive form is made of ops that already have gradients (matmul, a scalar multiply,
// masked_fill with -inf, softmax, matmul), so its backward is theirs and it keeps what they save:
// the [B, H, T, T] probabilities among them. It is the reference the fused form is tested
// against and the baseline the benchmark measures.
//
// The fused form checks its operands, makes them contiguous (the backend's contract), calls
// attention_forward once and saves q, k, v, out and the [B, H, T] f32 log-sum-exp: everything
// linear in T. Its backward recomputes the probabilities block by block inside
// attention_backward and returns dq, dk, dv written by the kernel. out is saved through a
// detached alias (SavedTensor), so the graph does not keep itself alive.
#include "autograd/checkpoint.h"
#include "autograd/functions/attention.h"

#include <cmath>
#include <limits>

#include "autograd/functions/internal.h"

namespace headroom {

using namespace detail;

const char* attention_impl_name(AttentionImpl impl) {
  switch (impl) {
    case AttentionImpl::naive: return "naive";
    case AttentionImpl::fused: return "fused";
  }
  return "?";
}

AttentionImpl parse_attention_impl(const std::string& name) {
  if (name == "naive") return AttentionImpl::naive;
  if (name == "fused") return AttentionImpl::fused;
  throw ValueError(str_cat("attention: unknown implementation \"", name, "\" (expected \"naive\" or \"fused\")"));
}

namespace {

void check_operands(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) {
  for (const auto& [t, name] : {std::pair{q, "q"}, std::pair{k, "k"}, std::pair{v, "v"}}) {
    HR_CHECK(t.defined(), ValueError, op, ": ", name, " is undefined");
    HR_CHECK(t.dim() == 4, ShapeError, op, ": ", name, " must be [B, H, T, D], got ", describe(t));
    check_floating(op, t, name);
  }
  HR_CHECK(k.shape() == q.shape() && v.shape() == q.shape(), ShapeError, op,
           ": q, k and v must have one shape [B, H, T, D], got q ", shape_str(q.shape()), ", k ", shape_str(k.shape()),
           ", v ", shape_str(v.shape()));
  HR_CHECK(k.dtype() == q.dtype() && v.dtype() == q.dtype(), DTypeError, op, ": q, k and v must have one dtype, got q ",
           dtype_name(q.dtype()), ", k ", dtype_name(k.dtype()), ", v ", dtype_name(v.dtype()));
  check_same_device(op, {q, k, v});
}

Tensor naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale) {
  const int64_t t = q.size(2);
  Tensor scores = matmul(q, k.transpose(-2, -1)) * scale;  // [B, H, T, T]
  if (causal) {
    const TensorOptions idx = TensorOptions().dtype(DType::i64).device(q.device());
    Tensor pos = Tensor::arange(static_cast<double>(t), idx);
    Tensor future = gt(pos.reshape({1, t}), pos.reshape({t, 1}));  // [T, T]: key after query
    scores = masked_fill(scores, future, -std::numeric_limits<double>::infinity());
  }
  return matmul(softmax(scores, -1), v);
}

Tensor fused_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale) {
  const char* op = "scaled_dot_product_attention (fused)";
  Tensor qc = contiguous_raw(q), kc = contiguous_raw(k), vc = contiguous_raw(v);
  Tensor out, lse;
  // A selective checkpoint's re-run takes what its forward kept (Note [selective checkpointing]).
  if (!detail::replay_outputs(op, {&out, &lse})) {
    out = empty_like(qc);
    lse = Tensor::empty({q.size(0), q.size(1), q.size(2)}, qc.options().dtype(statistics_dtype(qc.dtype())));
    if (lse.numel() > 0) backend_for(q.device()).attention_forward(qc, kc, vc, out, lse, scale, causal);
    detail::offer_outputs(op, {&out, &lse});
  }
  if (needs_grad({q, k, v})) {
    SavedTensor sq(qc, op), sk(kc, op), sv(vc, op), so(out, op), slse(lse, op);
    record(op, out, {q, k, v}, [sq, sk, sv, so, slse, scale, causal](const Tensor& g) -> std::vector<Tensor> {
      const Tensor& qs = sq.unpack();
      Tensor dout = contiguous_raw(cast_raw(g, qs.dtype()));
      Tensor dq = empty_like(qs), dk = empty_like(qs), dv = empty_like(qs);
      if (qs.numel() > 0)
        backend_for(qs.device())
            .attention_backward(qs, sk.unpack(), sv.unpack(), so.unpack(), dout, slse.unpack(), dq, dk, dv, scale,
                                causal);
      return {dq, dk, dv};
    });
  }
  return out;
}

}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, AttentionImpl impl,
                                    std::optional<double> scale) {
  const char* op = "scaled_dot_product_attention";
  check_operands(op, q, k, v);
  const double s = scale ? *scale : 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(q.size(3), 1)));
  HR_CHECK(std::isfinite(s), ValueError, op, ": scale must be finite, got ", s);
  switch (impl) {
    case AttentionImpl::naive: return naive_attention(q, k, v, causal, s);
    case AttentionImpl::fused: return fused_attention(q, k, v, causal, s);
  }
  throw ValueError(str_cat(op, ": invalid implementation ", static_cast<int>(impl)));
}

}  // namespace headroom
