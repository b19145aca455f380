// Host-side pieces both backends share: how a strided matrix maps onto a BLAS operand, the
// argument checks of the conv2d, pooling, group-norm, softmax, cross-entropy, index and fused
// attention contracts (engine/backend.h), and the problem sizes a kernel reads off arguments
// that passed them. Plain C++, no device code. The checks run once, in the op's entry point
// (engine/op_table.cpp, Note [op table]); a kernel takes only the sizes (conv_shape,
// pool_shape, group_norm_geometry, attention_geometry), so that both backends read their
// operands the same way and neither checks again.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "engine/backend.h"
#include "engine/error.h"
#include "engine/shape.h"
#include "engine/tensor.h"

namespace headroom::kernels {

// How a [rows, cols] matrix with element strides (srow, scol) is passed to a gemm: row-major
// storage with leading dim ld (trans false) or column-major, i.e. the transpose of a row-major
// [cols, rows] (trans true). ok is false when the matrix needs a contiguous copy first. The
// leading dims always satisfy BLAS's ld >= max(1, stored row length).
struct BlasLayout {
  bool ok = false;
  bool trans = false;
  int64_t ld = 0;
};

inline BlasLayout blas_layout(int64_t rows, int64_t cols, int64_t srow, int64_t scol) {
  const int64_t min_ld_row = std::max<int64_t>(1, cols);
  const int64_t min_ld_col = std::max<int64_t>(1, rows);
  // Row-major: element (i, j) at i * ld + j.
  if (cols <= 1 || scol == 1) {
    if (rows <= 1) return {true, false, min_ld_row};
    if (srow >= min_ld_row) return {true, false, srow};
  }
  // Column-major: element (i, j) at j * ld + i.
  if (rows <= 1 || srow == 1) {
    if (cols <= 1) return {true, true, min_ld_col};
    if (scol >= min_ld_col) return {true, true, scol};
  }
  return {};
}

// Softmax along one dim of a contiguous tensor: `outer` slices of `n` rows of `inner` columns.
struct SoftmaxGeometry {
  int64_t outer = 1, n = 1, inner = 1;
};

inline SoftmaxGeometry softmax_geometry(const Shape& shape, int64_t dim) {
  SoftmaxGeometry g;
  for (int64_t d = 0; d < static_cast<int64_t>(shape.size()); ++d) {
    if (d < dim) g.outer *= shape[static_cast<size_t>(d)];
    else if (d == dim) g.n = shape[static_cast<size_t>(d)];
    else g.inner *= shape[static_cast<size_t>(d)];
  }
  return g;
}

// a and b of one shape and dtype, both contiguous (softmax's input/output/gradients).
inline void check_same_layout(const char* op, const Tensor& a, const char* a_name, const Tensor& b,
                              const char* b_name) {
  HR_CHECK(a.shape() == b.shape(), ShapeError, op, ": ", a_name, " ", shape_str(a.shape()), " and ", b_name, " ",
           shape_str(b.shape()), " differ in shape");
  HR_CHECK(a.dtype() == b.dtype(), DTypeError, op, ": ", a_name, " is ", dtype_name(a.dtype()), " but ", b_name, " is ",
           dtype_name(b.dtype()));
  HR_CHECK(a.is_contiguous() && b.is_contiguous(), ValueError, op, ": expected contiguous tensors, got ", a_name, " ",
           describe(a), " with strides ", shape_str(a.strides()), " and ", b_name, " ", describe(b), " with strides ",
           shape_str(b.strides()));
}

// The cross-entropy operands' shapes and dtypes: logits a contiguous [N, C], target i64 [N], lse
// a contiguous [N] of statistics_dtype (f32; f64 for f64 logits). (Whether every target is < C is checked where the targets can be read:
// the CPU backend per call, the autograd op before a GPU call.)
inline void check_cross_entropy(const char* op, const Tensor& logits, const Tensor& target, const Tensor& lse) {
  HR_CHECK(logits.dim() == 2, ShapeError, op, ": logits must be [N, C], got ", describe(logits));
  const int64_t n = logits.size(0);
  HR_CHECK(target.dim() == 1 && target.size(0) == n, ShapeError, op, ": target must be ", shape_str({n}),
           " for logits ", shape_str(logits.shape()), ", got ", shape_str(target.shape()));
  HR_CHECK(target.dtype() == DType::i64, DTypeError, op, ": target must be i64, got ", describe(target));
  const DType stat = statistics_dtype(logits.dtype());
  HR_CHECK(lse.dtype() == stat && lse.dim() == 1 && lse.size(0) == n && lse.is_contiguous(), ValueError, op,
           ": lse must be a contiguous ", dtype_name(stat), " ", shape_str({n}), " for ", dtype_name(logits.dtype()),
           " logits, got ", describe(lse));
  HR_CHECK(logits.is_contiguous(), ValueError, op, ": logits must be contiguous, got strides ",
           shape_str(logits.strides()), " for ", describe(logits));
}

// Forward's further operand: losses a contiguous [N] of the logits' dtype; C > 0 when N > 0.
inline void check_cross_entropy_losses(const char* op, const Tensor& logits, const Tensor& losses) {
  const int64_t n = logits.size(0), c = logits.size(1);
  HR_CHECK(losses.dim() == 1 && losses.size(0) == n && losses.dtype() == logits.dtype() && losses.is_contiguous(),
           ValueError, op, ": losses must be a contiguous ", shape_str({n}), " of the logits' dtype ",
           dtype_name(logits.dtype()), ", got ", describe(losses));
  HR_CHECK(n == 0 || c > 0, ValueError, op, ": logits ", shape_str(logits.shape()), " have no classes");
}

// Backward's further operands: dlosses [N] of the logits' dtype (any stride), dlogits like logits.
inline void check_cross_entropy_grads(const char* op, const Tensor& logits, const Tensor& dlosses,
                                      const Tensor& dlogits) {
  const int64_t n = logits.size(0);
  HR_CHECK(dlosses.dim() == 1 && dlosses.size(0) == n && dlosses.dtype() == logits.dtype(), ValueError, op,
           ": dlosses must be ", shape_str({n}), " of the logits' dtype ", dtype_name(logits.dtype()), ", got ",
           describe(dlosses));
  check_same_layout(op, logits, "logits", dlogits, "dlogits");
}

// index_select(x, dim, index, out): out is x with dim's size replaced by the index count, of x's
// dtype. Returns the wrapped dim. (The index values are checked by each backend: where it can
// read them.)
inline int64_t check_index_select(const char* op, const Tensor& x, int64_t dim, const Tensor& index,
                                  const Tensor& out) {
  const int64_t d = wrap_dim(dim, x.dim(), op);
  Shape expected = x.shape();
  expected[static_cast<size_t>(d)] = index.numel();
  HR_CHECK(out.shape() == expected && out.dtype() == x.dtype(), ShapeError, op, ": output ", describe(out),
           " does not fit input ", describe(x), " indexed along dim ", d, " by ", index.numel(), " indices");
  return d;
}

// index_add(out, dim, index, src): src is out with dim's size replaced by the index count, of
// out's dtype, not bool. Returns the wrapped dim.
inline int64_t check_index_add(const char* op, const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  const int64_t d = wrap_dim(dim, out.dim(), op);
  Shape expected = out.shape();
  expected[static_cast<size_t>(d)] = index.numel();
  HR_CHECK(src.shape() == expected, ShapeError, op, ": source ", shape_str(src.shape()), " does not fit destination ",
           shape_str(out.shape()), " indexed along dim ", d, " by ", index.numel(), " indices (expected ",
           shape_str(expected), ")");
  HR_CHECK(src.dtype() == out.dtype(), DTypeError, op, ": source is ", dtype_name(src.dtype()), " but destination is ",
           dtype_name(out.dtype()));
  HR_CHECK(out.dtype() != DType::boolean, DTypeError, op, ": bool tensors cannot be accumulated, got ", describe(out));
  return d;
}

// conv2d's sizes: input [N, C, H, W], weight [O, C/G, KH, KW], output [N, O, OH, OW], G groups
// of Cg input and Og output channels.
struct ConvShape {
  int64_t N, C, H, W;  // input
  int64_t O, KH, KW;   // weight
  int64_t OH, OW;      // output
  int64_t G, Cg, Og;   // groups, channels per group in and out
};

// The sizes of conv2d operands that passed check_conv2d.
inline ConvShape conv_shape(const Tensor& x, const Tensor& w, const Tensor& out, const Conv2dParams& p) {
  ConvShape g{};
  g.N = x.size(0), g.C = x.size(1), g.H = x.size(2), g.W = x.size(3);
  g.O = w.size(0), g.KH = w.size(2), g.KW = w.size(3);
  g.OH = out.size(2), g.OW = out.size(3);
  g.G = p.groups;
  g.Cg = g.C / g.G, g.Og = g.O / g.G;
  return g;
}

// Checks conv2d's operands (4-d, contiguous, one dtype, channels that fit the groups, stride,
// padding and dilation in range, the output's size) for x, w, out -- or dx, w, dout and x, dw,
// dout in the backward passes, which share the forward's shapes.
inline ConvShape check_conv2d(const char* op, const Tensor& x, const Tensor& w, const Tensor& out,
                              const Conv2dParams& p) {
  HR_CHECK(x.dim() == 4 && w.dim() == 4 && out.dim() == 4, ShapeError, op, ": expected 4-d input ",
           shape_str(x.shape()), ", weight ", shape_str(w.shape()), " and output ", shape_str(out.shape()));
  HR_CHECK(x.is_contiguous() && w.is_contiguous() && out.is_contiguous(), ValueError, op,
           ": input, weight and output must be contiguous");
  HR_CHECK(x.dtype() == w.dtype() && x.dtype() == out.dtype(), DTypeError, op, ": dtypes differ: input ", describe(x),
           ", weight ", describe(w), ", output ", describe(out));
  HR_CHECK(p.groups >= 1 && x.size(1) % p.groups == 0 && w.size(0) % p.groups == 0 && w.size(1) * p.groups == x.size(1),
           ShapeError, op, ": input ", shape_str(x.shape()), " and weight ", shape_str(w.shape()),
           " do not fit groups=", p.groups);
  const ConvShape g = conv_shape(x, w, out, p);
  HR_CHECK(p.stride_h >= 1 && p.stride_w >= 1 && p.dilation_h >= 1 && p.dilation_w >= 1 && p.pad_h >= 0 && p.pad_w >= 0,
           ValueError, op, ": bad stride, padding or dilation");
  const int64_t span_h = g.H + 2 * p.pad_h - p.dilation_h * (g.KH - 1) - 1;
  const int64_t span_w = g.W + 2 * p.pad_w - p.dilation_w * (g.KW - 1) - 1;
  const int64_t oh = span_h < 0 ? 0 : span_h / p.stride_h + 1, ow = span_w < 0 ? 0 : span_w / p.stride_w + 1;
  HR_CHECK(out.size(0) == g.N && out.size(1) == g.O && g.OH == oh && g.OW == ow, ShapeError, op, ": output ",
           shape_str(out.shape()), " does not fit input ", shape_str(x.shape()), " and weight ", shape_str(w.shape()),
           " (expected (", g.N, ", ", g.O, ", ", oh, ", ", ow, "))");
  return g;
}

// pool2d's sizes: N*C planes of H x W pooled to OH x OW.
struct PoolShape {
  int64_t planes, H, W, OH, OW;
};

// The sizes of pooling operands that passed check_pool2d (x and out, or dx and dout).
inline PoolShape pool_shape(const Tensor& x, const Tensor& out) {
  return {x.size(0) * x.size(1), x.size(2), x.size(3), out.size(2), out.size(3)};
}

// Checks a pooling's input and output (4-d, contiguous), its parameters (kernel, stride >= 1,
// padding at most half the kernel) and the output's size -- or dx and dout in backward.
inline PoolShape check_pool2d(const char* op, const Tensor& x, const Tensor& out, const Pool2dParams& p) {
  HR_CHECK(x.dim() == 4 && out.dim() == 4, ShapeError, op, ": expected 4-d input and output, got ",
           shape_str(x.shape()), " and ", shape_str(out.shape()));
  HR_CHECK(x.is_contiguous() && out.is_contiguous(), ValueError, op, ": input and output must be contiguous");
  HR_CHECK(p.kernel_h >= 1 && p.kernel_w >= 1 && p.stride_h >= 1 && p.stride_w >= 1 && p.pad_h >= 0 && p.pad_w >= 0 &&
               2 * p.pad_h <= p.kernel_h && 2 * p.pad_w <= p.kernel_w,
           ValueError, op, ": bad kernel (", p.kernel_h, ", ", p.kernel_w, "), stride (", p.stride_h, ", ", p.stride_w,
           ") or padding (", p.pad_h, ", ", p.pad_w, ")");
  HR_CHECK(x.dtype() == out.dtype(), DTypeError, op, ": ", describe(x), " and ", describe(out), " differ in dtype");
  const PoolShape g = pool_shape(x, out);
  const int64_t span_h = g.H + 2 * p.pad_h - p.kernel_h, span_w = g.W + 2 * p.pad_w - p.kernel_w;
  const int64_t oh = span_h < 0 ? 0 : span_h / p.stride_h + 1, ow = span_w < 0 ? 0 : span_w / p.stride_w + 1;
  HR_CHECK(out.size(0) == x.size(0) && out.size(1) == x.size(1) && g.OH == oh && g.OW == ow, ShapeError, op,
           ": output ", shape_str(out.shape()), " does not fit input ", shape_str(x.shape()), " (expected (", x.size(0),
           ", ", x.size(1), ", ", oh, ", ", ow, "))");
  return g;
}

// The dtype max pooling keeps its winners in (engine/backend.h): the offset within a window
// fits u8 when the window has at most 256 cells, else i32.
inline DType pool_index_dtype(const Pool2dParams& p) { return p.kernel_h * p.kernel_w <= 256 ? DType::u8 : DType::i32; }

// Max pooling's indices: contiguous, of the pooled output's shape, u8 (windows of at most 256
// cells) or i32.
inline void check_pool_indices(const char* op, const Tensor& indices, const Tensor& out, const Pool2dParams& p) {
  const bool u8_fits = p.kernel_h * p.kernel_w <= 256;
  HR_CHECK(indices.shape() == out.shape() && indices.is_contiguous() &&
               (indices.dtype() == DType::i32 || (indices.dtype() == DType::u8 && u8_fits)),
           ValueError, op, ": indices must be contiguous ", u8_fits ? "u8 or i32" : "i32", " of shape ",
           shape_str(out.shape()), " (window offsets of a ", p.kernel_h, "x", p.kernel_w, " window), got ",
           describe(indices));
}

// group_norm's operands (engine/backend.h): x a contiguous [N, C, S] whose C splits into
// `groups`; y, dy, dx (when defined) like x; save_mean and save_rstd contiguous [N, G] of
// statistics_dtype (f32; f64 for f64 x);
// weight, bias, dweight, dbias (when defined) [C] of a float dtype, any stride.
struct GroupNormGeometry {
  int64_t n = 0, c = 0, s = 0, g = 0, cg = 0;  // cg: channels per group
};

// The sizes of group_norm operands that passed the checks below.
inline GroupNormGeometry group_norm_geometry(const Tensor& x, int64_t groups) {
  return {x.size(0), x.size(1), x.size(2), groups, x.size(1) / groups};
}

namespace detail {
inline void check_like_x(const char* op, const Tensor& t, const Tensor& x, const char* what) {
  if (!t.defined()) return;
  HR_CHECK(t.shape() == x.shape() && t.dtype() == x.dtype() && t.is_contiguous(), ValueError, op, ": ", what,
           " must be contiguous and match x ", describe(x), ", got ", describe(t), " with strides ",
           shape_str(t.strides()));
}
inline void check_channel_vector(const char* op, const Tensor& t, int64_t c, const char* what) {
  if (!t.defined()) return;
  HR_CHECK(t.dim() == 1 && t.size(0) == c, ShapeError, op, ": ", what, " must have shape ", shape_str({c}), ", got ",
           describe(t));
  HR_CHECK(is_floating(t.dtype()), DTypeError, op, ": ", what, " must be a floating dtype (f32, f64, f16, bf16), got ",
           describe(t));
}
inline GroupNormGeometry check_group_norm_common(const char* op, const Tensor& x, int64_t groups,
                                                 const Tensor& save_mean, const Tensor& save_rstd) {
  HR_CHECK(x.defined() && x.dim() == 3 && x.is_contiguous(), ValueError, op, ": x must be a contiguous [N, C, S], got ",
           x.defined() ? describe(x) : std::string("undefined"));
  const int64_t c = x.size(1);
  HR_CHECK(groups > 0 && c % groups == 0, ValueError, op, ": ", c, " channels of x ", describe(x),
           " cannot be split into ", groups, " groups");
  const GroupNormGeometry g{x.size(0), c, x.size(2), groups, c / groups};
  const Shape want{g.n, g.g};
  const DType stat = statistics_dtype(x.dtype());
  for (const auto& [t, what] : {std::pair{&save_mean, "save_mean"}, std::pair{&save_rstd, "save_rstd"}})
    HR_CHECK(t->defined() && t->dtype() == stat && t->shape() == want && t->is_contiguous(), ValueError, op, ": ", what,
             " must be a contiguous ", dtype_name(stat), " ", shape_str(want), " for ", dtype_name(x.dtype()),
             " x, got ", t->defined() ? describe(*t) : std::string("undefined"));
  return g;
}
}  // namespace detail

inline GroupNormGeometry check_group_norm_forward(const char* op, const Tensor& x, const Tensor& weight,
                                                  const Tensor& bias, int64_t groups, const Tensor& y,
                                                  const Tensor& save_mean, const Tensor& save_rstd) {
  const GroupNormGeometry g = detail::check_group_norm_common(op, x, groups, save_mean, save_rstd);
  HR_CHECK(y.defined(), ValueError, op, ": y must be defined");
  detail::check_like_x(op, y, x, "y");
  detail::check_channel_vector(op, weight, g.c, "weight");
  detail::check_channel_vector(op, bias, g.c, "bias");
  return g;
}

inline GroupNormGeometry check_group_norm_backward(const char* op, const Tensor& dy, const Tensor& x,
                                                   const Tensor& weight, const Tensor& save_mean,
                                                   const Tensor& save_rstd, int64_t groups, const Tensor& dx,
                                                   const Tensor& dweight, const Tensor& dbias) {
  const GroupNormGeometry g = detail::check_group_norm_common(op, x, groups, save_mean, save_rstd);
  HR_CHECK(dy.defined(), ValueError, op, ": dy must be defined");
  detail::check_like_x(op, dy, x, "dy");
  detail::check_like_x(op, dx, x, "dx");
  detail::check_channel_vector(op, weight, g.c, "weight");
  detail::check_channel_vector(op, dweight, g.c, "dweight");
  detail::check_channel_vector(op, dbias, g.c, "dbias");
  return g;
}

// Fused attention's problem size: B*H independent heads of T positions and head dim D.
struct AttnGeometry {
  int64_t bh = 0, t = 0, d = 0;
  Device device = Device::cpu();  // q's: where a kernel's scratch goes
};

// The size of attention operands that passed check_attention.
inline AttnGeometry attention_geometry(const Tensor& q) {
  return {q.size(0) * q.size(1), q.size(2), q.size(3), q.device()};
}

// Checks the attention contract: q [B, H, T, D] and every tensor in `others` of q's shape and
// dtype, all contiguous; lse a contiguous [B, H, T] of statistics_dtype (f32; f64 for f64 q).
inline AttnGeometry check_attention(const char* op, const Tensor& q,
                                    std::initializer_list<std::pair<Tensor, const char*>> others, const Tensor& lse) {
  HR_CHECK(q.dim() == 4, ShapeError, op, ": q must be [B, H, T, D], got ", describe(q));
  auto check_4d = [&](const Tensor& t, const char* name) {
    HR_CHECK(t.defined(), ValueError, op, ": ", name, " is undefined");
    HR_CHECK(t.shape() == q.shape(), ShapeError, op, ": ", name, " has shape ", shape_str(t.shape()), " but q has ",
             shape_str(q.shape()), " (all of q, k, v, out must be [B, H, T, D])");
    HR_CHECK(t.dtype() == q.dtype(), DTypeError, op, ": ", name, " is ", dtype_name(t.dtype()), " but q is ",
             dtype_name(q.dtype()));
    HR_CHECK(t.is_contiguous(), ValueError, op, ": ", name, " must be contiguous, got ", describe(t), " with strides ",
             shape_str(t.strides()));
  };
  check_4d(q, "q");
  for (const auto& [t, name] : others) check_4d(t, name);
  const Shape want{q.size(0), q.size(1), q.size(2)};
  const DType stat = statistics_dtype(q.dtype());
  HR_CHECK(lse.defined() && lse.dtype() == stat && lse.shape() == want && lse.is_contiguous(), ValueError, op,
           ": lse must be a contiguous ", dtype_name(stat), " ", shape_str(want), " for ", dtype_name(q.dtype()),
           " q, got ", lse.defined() ? describe(lse) : std::string("undefined"));
  return {q.size(0) * q.size(1), q.size(2), q.size(3), q.device()};
}

}  // namespace headroom::kernels
