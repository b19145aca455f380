// matmul (numpy.matmul semantics) and linear, with their gradients.
//
// Everything is reduced to the backend's one batched product [B, M, K] @ [B, K, N] over views:
// 1-d operands become [1, K] / [K, 1] views (the added dim is squeezed away after), mixed float
// dtypes are cast to the promoted one (the cast records its own gradient), and broadcast
// batch dims become zero batch strides. Batch dims that cannot be merged into one stride are
// looped over here, a backend call per block. Gradients are products with transposed views
// (the backend takes column-major operands as they are, so nothing is copied) and sum_to for
// broadcast batch dims. A 2-d right operand broadcast over a batch whose rows stack into one
// matrix is folded into M first, so forward and both gradients are single gemms.
//
// Under autocast (autograd/autocast.h) both run in the scope's low dtype: the operands are cast
// first (parameters through the cast cache) and the op re-enters with them.
//
// linear(x, W, b) = x @ W^T + b runs as one gemm on x seen as [rows, in] with W^T a view and
// the bias pre-written into the output (beta = 1).
#include <numeric>

#include "autograd/autocast.h"
#include "autograd/checkpoint.h"
#include "autograd/functions/internal.h"

namespace headroom {

using namespace detail;

namespace {

Shape batch_of(const Tensor& t) { return Shape(t.shape().begin(), t.shape().end() - 2); }

Tensor raw_reshape(const Tensor& x, const Shape& shape) {
  NoGradGuard no_grad;
  return reshape(x, shape);
}

// The product of all dims but the last: the rows of x seen as a matrix.
int64_t leading_numel(const Tensor& x) {
  int64_t n = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) n *= x.size(d);
  return n;
}

// True when all dims but the last of x merge into one stride, so x is a [rows, cols] view.
bool rows_foldable(const Tensor& x) {
  int64_t prev = -1;  // last non-1 dim seen
  for (int64_t d = 0; d + 1 < x.dim(); ++d) {
    if (x.size(d) == 1) continue;
    if (prev >= 0 && x.stride(prev) != x.stride(d) * x.size(d)) return false;
    prev = d;
  }
  return true;
}

// out = a @ b for a, b of rank >= 2, one dtype and device, batch dims broadcast; no history.
Tensor matmul_raw(const Tensor& a, const Tensor& b) {
  const int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  Shape batch = broadcast_shapes(batch_of(a), batch_of(b), "matmul");
  Shape out_shape = batch;
  out_shape.push_back(M);
  out_shape.push_back(N);
  Tensor out = Tensor::empty(out_shape, a.options());
  if (out.numel() == 0) return out;
  // Batch strides of each operand broadcast to `batch`, size-1 dims dropped.
  Shape sizes, sa, sb;
  for (size_t d = 0; d < batch.size(); ++d) {
    if (batch[d] == 1) continue;
    auto stride_in = [&](const Tensor& t) -> int64_t {
      const int64_t td = static_cast<int64_t>(d) - static_cast<int64_t>(batch.size()) + (t.dim() - 2);
      return td < 0 || t.size(td) == 1 ? 0 : t.stride(td);
    };
    sizes.push_back(batch[d]);
    sa.push_back(stride_in(a));
    sb.push_back(stride_in(b));
  }
  // The longest suffix of batch dims that merges into one stride for both operands.
  int64_t j = static_cast<int64_t>(sizes.size());
  while (j > 0) {
    const size_t d = static_cast<size_t>(j - 1);
    if (d + 1 < sizes.size() && (sa[d] != sa[d + 1] * sizes[d + 1] || sb[d] != sb[d + 1] * sizes[d + 1])) break;
    --j;
  }
  const size_t inner = static_cast<size_t>(j);
  int64_t Bi = 1;
  for (size_t d = inner; d < sizes.size(); ++d) Bi *= sizes[d];
  const int64_t sai = sizes.empty() ? 0 : sa.back(), sbi = sizes.empty() ? 0 : sb.back();
  int64_t outer = 1;
  for (size_t d = 0; d < inner; ++d) outer *= sizes[d];
  Backend& be = backend_for(a.device());
  for (int64_t o = 0; o < outer; ++o) {
    int64_t oa = a.offset(), ob = b.offset(), rem = o;
    for (size_t d = inner; d-- > 0;) {
      const int64_t idx = rem % sizes[d];
      rem /= sizes[d];
      oa += idx * sa[d];
      ob += idx * sb[d];
    }
    be.matmul(a.as_strided({Bi, M, K}, {sai, a.stride(-2), a.stride(-1)}, oa),
              b.as_strided({Bi, K, N}, {sbi, b.stride(-2), b.stride(-1)}, ob),
              out.as_strided({Bi, M, N}, {M * N, N, 1}, out.offset() + o * Bi * M * N), 0.0);
  }
  return out;
}

// matmul of operands of rank >= 2 and one dtype, already checked.
Tensor matmul_nd(const Tensor& a, const Tensor& b) {
  if (b.dim() == 2 && a.dim() > 2 && rows_foldable(a)) {
    // [..., M, K] @ [K, N]: one [rows, K] @ [K, N] product, a view in and a view out.
    Shape out_shape = a.shape();
    out_shape.back() = b.size(1);
    return reshape(matmul_nd(reshape(a, {leading_numel(a), a.size(-1)}), b), out_shape);
  }
  Tensor out = matmul_raw(a, b);
  if (needs_grad({a, b})) {
    const bool ga = a.requires_grad(), gb = b.requires_grad();
    SavedTensor sa(gb ? a : Tensor(), "matmul"), sb(ga ? b : Tensor(), "matmul");
    Shape sha = a.shape(), shb = b.shape();
    record("matmul", out, {a, b}, [sa, sb, sha, shb, ga, gb](const Tensor& g) -> std::vector<Tensor> {
      Tensor da, db;
      if (ga) da = sum_to(matmul(g, transpose(sb.unpack(), -1, -2)), sha);
      if (gb) db = sum_to(matmul(transpose(sa.unpack(), -1, -2), g), shb);
      return {da, db};
    });
  }
  return out;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  HR_CHECK(a.defined() && b.defined(), ValueError, "matmul: an operand is undefined");
  check_same_device("matmul", {a, b});
  check_floating("matmul", a, "first operand");
  check_floating("matmul", b, "second operand");
  HR_CHECK(a.dim() >= 1 && b.dim() >= 1, ShapeError, "matmul: operands need at least 1 dim, got ", shape_str(a.shape()),
           " and ", shape_str(b.shape()));
  const int64_t ka = a.size(-1), kb = b.dim() == 1 ? b.size(0) : b.size(-2);
  HR_CHECK(ka == kb, ShapeError, "matmul: cannot multiply ", shape_str(a.shape()), " by ", shape_str(b.shape()),
           " (inner dims ", ka, " and ", kb, " differ)");
  if (a.dim() > 2 || b.dim() > 2) {
    Shape ba = a.dim() > 2 ? batch_of(a) : Shape{}, bb = b.dim() > 2 ? batch_of(b) : Shape{};
    const size_t n = std::max(ba.size(), bb.size());
    for (size_t i = 0; i < n; ++i) {
      const int64_t x = i < ba.size() ? ba[ba.size() - 1 - i] : 1, y = i < bb.size() ? bb[bb.size() - 1 - i] : 1;
      HR_CHECK(x == y || x == 1 || y == 1, ShapeError, "matmul: cannot broadcast the batch dims of ",
               shape_str(a.shape()), " and ", shape_str(b.shape()));
    }
  }
  if (DType low; autocast_target(AutocastOp::matmul, {&a, &b}, &low))
    return matmul(autocast_cast(a, low), autocast_cast(b, low));
  const DType dtype = promote_types(a.dtype(), b.dtype());
  if (a.dtype() != dtype || b.dtype() != dtype) return matmul(cast(a, dtype), cast(b, dtype));
  if (a.dim() == 1 && b.dim() == 1) return reshape(matmul_nd(a.unsqueeze(0), b.unsqueeze(1)), {});
  if (a.dim() == 1) return matmul_nd(a.unsqueeze(0), b).squeeze(-2);
  if (b.dim() == 1) return matmul_nd(a, b.unsqueeze(1)).squeeze(-1);
  return matmul_nd(a, b);
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  HR_CHECK(x.defined() && weight.defined(), ValueError, "linear: input and weight must be defined");
  check_same_device("linear", {x, weight, bias});
  check_floating("linear", x, "input");
  check_floating("linear", weight, "weight");
  if (bias.defined()) check_floating("linear", bias, "bias");
  HR_CHECK(weight.dim() == 2, ShapeError, "linear: weight must be 2-d [out, in], got ", shape_str(weight.shape()));
  HR_CHECK(x.dim() >= 1, ShapeError, "linear: input must have at least 1 dim, got ", shape_str(x.shape()));
  const int64_t in = weight.size(1), out_features = weight.size(0);
  HR_CHECK(x.size(-1) == in, ShapeError, "linear: input ", shape_str(x.shape()), " has ", x.size(-1),
           " features but weight ", shape_str(weight.shape()), " expects ", in);
  HR_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == out_features), ShapeError, "linear: bias ",
           shape_str(bias.defined() ? bias.shape() : Shape{}), " does not match weight ", shape_str(weight.shape()),
           " (expected ", shape_str({out_features}), ")");
  if (DType low; autocast_target(AutocastOp::linear, {&x, &weight, &bias}, &low))
    return linear(autocast_cast(x, low), autocast_cast(weight, low), autocast_cast(bias, low));
  DType dtype = promote_types(x.dtype(), weight.dtype());
  if (bias.defined()) dtype = promote_types(dtype, bias.dtype());
  if (x.dtype() != dtype || weight.dtype() != dtype || (bias.defined() && bias.dtype() != dtype))
    return linear(cast(x, dtype), cast(weight, dtype), bias.defined() ? cast(bias, dtype) : bias);

  const int64_t rows = leading_numel(x);
  Tensor x2 = raw_reshape(x, {rows, in});
  const bool grad = needs_grad({x, weight, bias});
  const bool gx = grad && x.requires_grad(), gw = grad && weight.requires_grad();
  const bool gb = grad && bias.defined() && bias.requires_grad();
  // Saved before the output exists (they do not need it): a selective checkpoint then knows
  // whether anything saved after this op needs its output (Note [selective checkpointing]).
  SavedTensor sx(gw ? x2 : Tensor(), "linear"), sw(gx ? weight : Tensor(), "linear");
  Tensor out2;
  // A selective checkpoint's re-run takes the output its forward kept.
  const bool replayed = detail::replay_outputs("linear", {&out2});
  if (!replayed) out2 = Tensor::empty({rows, out_features}, x.options());
  if (!replayed && out2.numel() > 0) {
    Backend& be = backend_for(x.device());
    double beta = 0.0;
    if (bias.defined()) {
      be.copy(out2, bias.as_strided({rows, out_features}, {0, bias.stride(0)}, bias.offset()));
      beta = 1.0;
    }
    be.matmul(x2.as_strided({1, rows, in}, {0, x2.stride(0), x2.stride(1)}, x2.offset()),
              weight.as_strided({1, in, out_features}, {0, weight.stride(1), weight.stride(0)}, weight.offset()),
              out2.as_strided({1, rows, out_features}, {0, out_features, 1}, 0), beta);
  }
  if (!replayed) detail::offer_outputs("linear", {&out2});
  Shape out_shape = x.shape();
  out_shape.back() = out_features;
  Tensor out = out2.as_strided(out_shape, contiguous_strides(out_shape), 0);
  if (grad) {
    Shape x_shape = x.shape();
    record("linear", out, {x, weight, bias},
           [sx, sw, x_shape, rows, out_features, gx, gw, gb](const Tensor& g) -> std::vector<Tensor> {
             Tensor g2 = reshape(g, {rows, out_features});
             Tensor dx, dw, db;
             if (gx) dx = reshape(matmul(g2, sw.unpack()), x_shape);
             if (gw) dw = matmul(g2.t(), sx.unpack());
             if (gb) db = sum(g2, {0});
             return {dx, dw, db};
           });
  }
  return out;
}

}  // namespace headroom
