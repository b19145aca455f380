// conv2d, max_pool2d and avg_pool2d with their gradients.
//
// The checks live here, where the user's shapes are known, so every message quotes them; the
// backend then gets contiguous NCHW tensors of one dtype (inputs are made contiguous and cast
// to the promoted float dtype first; the cast records its own gradient). Backward closures
// keep only what they need: conv2d saves the input only when the weight needs a gradient and
// the weight only when the input does; max pooling saves the winners' indices, not the input;
// average pooling saves nothing but shapes. The bias gradient is the sum of dout over N, H, W.
// 3-d inputs [C, H, W] are accepted as one image. Under autocast conv2d runs in the scope's low
// dtype (autograd/autocast.h); pooling follows its input.
#include "autograd/autocast.h"
#include "autograd/checkpoint.h"
#include "autograd/functions/internal.h"
#include "kernels/contract_checks.h"

namespace headroom {

using namespace detail;

namespace {

// Output size of a sliding window along one dim (floor mode); 0 when no window fits.
int64_t out_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  const int64_t span = in + 2 * pad - dilation * (kernel - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

std::string pair_str(int64_t a, int64_t b) { return str_cat("(", a, ", ", b, ")"); }

// Runs a 4-d op on a 3-d input as a batch of one.
template <typename F>
Tensor as_batch_of_one(const Tensor& x, F&& f) {
  return f(x.unsqueeze(0)).squeeze(0);
}

}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride, int64_t padding,
              int64_t groups, int64_t dilation) {
  Conv2dParams p;
  p.stride_h = p.stride_w = stride;
  p.pad_h = p.pad_w = padding;
  p.dilation_h = p.dilation_w = dilation;
  p.groups = groups;
  return conv2d(x, weight, bias, p);
}

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p) {
  HR_CHECK(x.defined() && weight.defined(), ValueError, "conv2d: input and weight must be defined");
  check_same_device("conv2d", {x, weight, bias});
  check_floating("conv2d", x, "input");
  check_floating("conv2d", weight, "weight");
  if (bias.defined()) check_floating("conv2d", bias, "bias");
  if (DType low; autocast_target(AutocastOp::conv2d, {&x, &weight, &bias}, &low))
    return conv2d(autocast_cast(x, low), autocast_cast(weight, low), autocast_cast(bias, low), p);
  if (x.dim() == 3) return as_batch_of_one(x, [&](const Tensor& x4) { return conv2d(x4, weight, bias, p); });
  HR_CHECK(x.dim() == 4, ShapeError, "conv2d: expected a 4-d input [N, C, H, W], got ", shape_str(x.shape()));
  HR_CHECK(weight.dim() == 4, ShapeError, "conv2d: expected a 4-d weight [O, C / groups, KH, KW], got ",
           shape_str(weight.shape()));
  HR_CHECK(p.stride_h >= 1 && p.stride_w >= 1 && p.dilation_h >= 1 && p.dilation_w >= 1 && p.pad_h >= 0 && p.pad_w >= 0,
           ValueError, "conv2d: stride ", pair_str(p.stride_h, p.stride_w), " and dilation ",
           pair_str(p.dilation_h, p.dilation_w), " must be positive and padding ", pair_str(p.pad_h, p.pad_w),
           " non-negative");
  HR_CHECK(p.groups >= 1, ValueError, "conv2d: groups must be positive, got ", p.groups);
  const int64_t C = x.size(1), O = weight.size(0), KH = weight.size(2), KW = weight.size(3);
  HR_CHECK(C % p.groups == 0, ShapeError, "conv2d: input ", shape_str(x.shape()), " has ", C,
           " channels, which groups=", p.groups, " does not divide");
  HR_CHECK(O % p.groups == 0, ShapeError, "conv2d: weight ", shape_str(weight.shape()), " has ", O,
           " output channels, which groups=", p.groups, " does not divide");
  HR_CHECK(weight.size(1) * p.groups == C, ShapeError, "conv2d: weight ", shape_str(weight.shape()),
           " with groups=", p.groups, " expects ", weight.size(1) * p.groups, " input channels, but input ",
           shape_str(x.shape()), " has ", C);
  HR_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == O), ShapeError, "conv2d: bias ",
           shape_str(bias.defined() ? bias.shape() : Shape{}), " does not match weight ", shape_str(weight.shape()),
           " (expected ", shape_str({O}), ")");
  const int64_t OH = out_size(x.size(2), KH, p.stride_h, p.pad_h, p.dilation_h);
  const int64_t OW = out_size(x.size(3), KW, p.stride_w, p.pad_w, p.dilation_w);
  HR_CHECK(KH >= 1 && KW >= 1 && OH >= 1 && OW >= 1, ShapeError, "conv2d: input ", shape_str(x.shape()),
           " with padding ", pair_str(p.pad_h, p.pad_w), " is too small for weight ", shape_str(weight.shape()),
           " at dilation ", pair_str(p.dilation_h, p.dilation_w), ": the output would be ", pair_str(OH, OW));
  DType dtype = promote_types(x.dtype(), weight.dtype());
  if (bias.defined()) dtype = promote_types(dtype, bias.dtype());
  if (x.dtype() != dtype || weight.dtype() != dtype || (bias.defined() && bias.dtype() != dtype))
    return conv2d(cast(x, dtype), cast(weight, dtype), bias.defined() ? cast(bias, dtype) : bias, p);

  Tensor xc = contiguous_raw(x), wc = contiguous_raw(weight);
  Tensor bc = bias.defined() ? contiguous_raw(bias) : bias;
  const bool grad = needs_grad({x, weight, bias});
  const bool gx = grad && x.requires_grad(), gw = grad && weight.requires_grad();
  const bool gb = grad && bias.defined() && bias.requires_grad();
  // Saved before the output exists, as linear does (Note [selective checkpointing]).
  SavedTensor sx(gw ? xc : Tensor(), "conv2d"), sw(gx ? wc : Tensor(), "conv2d");
  Tensor out;
  // A selective checkpoint's re-run takes the output its forward kept.
  if (!detail::replay_outputs("conv2d", {&out})) {
    out = Tensor::empty({x.size(0), O, OH, OW}, x.options());
    backend_for(x.device()).conv2d_forward(xc, wc, bc, out, p);
    detail::offer_outputs("conv2d", {&out});
  }
  if (grad) {
    Shape x_shape = x.shape(), w_shape = weight.shape();
    record("conv2d", out, {x, weight, bias},
           [sx, sw, x_shape, w_shape, p, gx, gw, gb](const Tensor& g) -> std::vector<Tensor> {
             Tensor gc = contiguous_raw(g);
             Backend& be = backend_for(gc.device());
             Tensor dx, dw, db;
             if (gx) {
               dx = Tensor::empty(x_shape, gc.options());
               be.conv2d_backward_input(gc, sw.unpack(), dx, p);
             }
             if (gw) {
               dw = Tensor::empty(w_shape, gc.options());
               be.conv2d_backward_weight(gc, sx.unpack(), dw, p);
             }
             // Two reductions over contiguous blocks (H*W, then N) take the reduce kernel's fast paths.
             if (gb) db = sum(sum(gc, {2, 3}), {0});
             return {dx, dw, db};
           });
  }
  return out;
}

namespace {

Pool2dParams pool_params(const char* op, const Tensor& x, int64_t kernel, int64_t stride, int64_t padding) {
  if (stride == -1) stride = kernel;
  HR_CHECK(kernel >= 1 && stride >= 1, ValueError, op, ": kernel ", kernel, " and stride ", stride,
           " must be positive");
  HR_CHECK(padding >= 0 && 2 * padding <= kernel, ValueError, op, ": padding ", padding,
           " must be between 0 and half the kernel ", kernel);
  HR_CHECK(x.dim() == 4, ShapeError, op, ": expected a 4-d input [N, C, H, W], got ", shape_str(x.shape()));
  Pool2dParams p;
  p.kernel_h = p.kernel_w = kernel;
  p.stride_h = p.stride_w = stride;
  p.pad_h = p.pad_w = padding;
  const int64_t OH = out_size(x.size(2), kernel, stride, padding, 1),
                OW = out_size(x.size(3), kernel, stride, padding, 1);
  HR_CHECK(OH >= 1 && OW >= 1, ShapeError, op, ": input ", shape_str(x.shape()), " with padding ", padding,
           " is too small for kernel ", kernel, ": the output would be ", pair_str(OH, OW));
  return p;
}

Shape pool_out_shape(const Tensor& x, const Pool2dParams& p) {
  return {x.size(0), x.size(1), out_size(x.size(2), p.kernel_h, p.stride_h, p.pad_h, 1),
          out_size(x.size(3), p.kernel_w, p.stride_w, p.pad_w, 1)};
}

}  // namespace

Tensor max_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding) {
  HR_CHECK(x.defined(), ValueError, "max_pool2d: input must be defined");
  check_floating("max_pool2d", x);
  if (x.dim() == 3)
    return as_batch_of_one(x, [&](const Tensor& x4) { return max_pool2d(x4, kernel, stride, padding); });
  const Pool2dParams p = pool_params("max_pool2d", x, kernel, stride, padding);
  Tensor xc = contiguous_raw(x);
  Shape out_shape = pool_out_shape(x, p);
  Tensor out = Tensor::empty(out_shape, x.options());
  // The winners' offsets within their windows: 1 byte each for windows of up to 256 cells.
  Tensor indices = Tensor::empty(out_shape, x.options().dtype(kernels::pool_index_dtype(p)));
  backend_for(x.device()).max_pool2d_forward(xc, out, indices, p);
  if (needs_grad({x})) {
    SavedTensor si(indices, "max_pool2d");
    Shape x_shape = x.shape();
    record("max_pool2d", out, {x}, [si, x_shape, p](const Tensor& g) -> std::vector<Tensor> {
      Tensor dx = Tensor::empty(x_shape, g.options());
      backend_for(g.device()).max_pool2d_backward(contiguous_raw(g), si.unpack(), dx, p);
      return {dx};
    });
  }
  return out;
}

Tensor avg_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding, bool count_include_pad) {
  HR_CHECK(x.defined(), ValueError, "avg_pool2d: input must be defined");
  check_floating("avg_pool2d", x);
  if (x.dim() == 3)
    return as_batch_of_one(
        x, [&](const Tensor& x4) { return avg_pool2d(x4, kernel, stride, padding, count_include_pad); });
  Pool2dParams p = pool_params("avg_pool2d", x, kernel, stride, padding);
  p.count_include_pad = count_include_pad;
  Tensor out = Tensor::empty(pool_out_shape(x, p), x.options());
  backend_for(x.device()).avg_pool2d_forward(contiguous_raw(x), out, p);
  if (needs_grad({x})) {
    Shape x_shape = x.shape();
    record("avg_pool2d", out, {x}, [x_shape, p](const Tensor& g) -> std::vector<Tensor> {
      Tensor dx = Tensor::empty(x_shape, g.options());
      backend_for(g.device()).avg_pool2d_backward(contiguous_raw(g), dx, p);
      return {dx};
    });
  }
  return out;
}

}  // namespace headroom
