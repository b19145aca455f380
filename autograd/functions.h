// The differentiable ops: each computes its result through the device's Backend and records its
// gradient (autograd/function.h). Implemented one family a file in autograd/functions/.
// Errors name the op and quote shapes and dtypes: "matmul: cannot multiply (4, 3) by (5, 2)".
#pragma once

#include <cstdint>
#include <vector>

#include "engine/backend.h"
#include "engine/tensor.h"

namespace headroom {

// ---- elementwise (functions/elementwise.cpp) ----
// Binary ops broadcast (numpy rules) and promote dtypes (promote_types); a double operand
// takes the tensor's dtype.
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, double exponent);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor relu(const Tensor& x);
// Note [differentiable in-place]: relu(x) written into x, differentiable. Its backward needs
// only the output (out > 0 where x > 0), so nothing more is saved and no second tensor is
// allocated: the bytes of relu's input are saved (nn::ReLU(true)). x's history is continued:
// x becomes the output of a "relu_" node whose input edge is x's old one. The version check
// holds: an op that saved x before (it needs the values relu_ overwrote) fails in backward,
// naming it. AutogradError for a leaf that requires grad (its gradient would have nowhere to
// go) and for a view (a view taken of the same storage would not follow the new history).
Tensor& relu_(Tensor& x);
// The same for tanh and sigmoid, whose backward also needs only the output: 1 - y^2, y (1 - y).
Tensor& tanh_(Tensor& x);
Tensor& sigmoid_(Tensor& x);
Tensor gelu(const Tensor& x);  // tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
// Composites of the ops above (their gradients follow from those):
Tensor silu(const Tensor& x);                                      // x sigmoid(x)
Tensor leaky_relu(const Tensor& x, double negative_slope = 0.01);  // x > 0 ? x : slope x
Tensor elu(const Tensor& x, double alpha = 1.0);                   // x > 0 ? x : alpha (exp(x) - 1)
Tensor square(const Tensor& x);
Tensor clamp(const Tensor& x, double lo, double hi);
// Comparisons: bool results, no gradient.
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor logical_not(const Tensor& x);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value);
Tensor cast(const Tensor& x, DType dtype);  // differentiable between float dtypes

Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& x);
Tensor operator+(const Tensor& a, double b);
Tensor operator-(const Tensor& a, double b);
Tensor operator*(const Tensor& a, double b);
Tensor operator/(const Tensor& a, double b);
Tensor operator+(double a, const Tensor& b);
Tensor operator-(double a, const Tensor& b);
Tensor operator*(double a, const Tensor& b);
Tensor operator/(double a, const Tensor& b);

// A 0-d tensor holding `value` in x's dtype and on x's device (a scalar operand).
Tensor scalar_like(const Tensor& x, double value);

// ---- reductions (functions/reduce.cpp) ----
// dims may be negative; an empty dims list reduces over all dims.
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor amax(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor amin(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);  // i64, no gradient
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim = false);
// Variance with Bessel's correction by default (correction = 1).
Tensor var(const Tensor& x, const std::vector<int64_t>& dims = {}, int64_t correction = 1, bool keepdim = false);
// The p-norm over dims (all when empty), as torch.linalg.vector_norm: (sum |x|^p)^(1/p);
// p = +inf: amax |x|, p = -inf: amin |x|. p > 0 or +-inf (ValueError otherwise); floating x
// (DTypeError otherwise); 16-bit x is summed in f32 and the result rounded back. A composite:
// the gradient is zero where the norm is zero (PyTorch's subgradient), not NaN.
Tensor norm(const Tensor& x, double p = 2.0, const std::vector<int64_t>& dims = {}, bool keepdim = false);

// ---- shape and views (functions/view.cpp) ----
Tensor reshape(const Tensor& x, const Shape& shape);  // one dim may be -1
Tensor transpose(const Tensor& x, int64_t dim0, int64_t dim1);
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims);
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step = 1);
Tensor expand(const Tensor& x, const Shape& shape);
Tensor contiguous(const Tensor& x);
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim = 0);
Tensor stack(const std::vector<Tensor>& tensors, int64_t dim = 0);
// Pieces of `size` along dim (the last may be smaller); views.
std::vector<Tensor> split(const Tensor& x, int64_t size, int64_t dim = 0);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim = 0);
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);

// ---- linear algebra (functions/linalg.cpp) ----
// 1-d and 2-d operands and batched (N-d, batch dims broadcast) as numpy.matmul.
Tensor matmul(const Tensor& a, const Tensor& b);
// y = x @ weight^T + bias, weight: [out, in]; bias may be undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);

// ---- convolution and pooling (functions/conv.cpp) ----
// x: [N, C, H, W]; weight: [O, C / groups, KH, KW]; bias: [O] or undefined.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride = 1, int64_t padding = 0,
              int64_t groups = 1, int64_t dilation = 1);
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p);
Tensor max_pool2d(const Tensor& x, int64_t kernel, int64_t stride = -1, int64_t padding = 0);
Tensor avg_pool2d(const Tensor& x, int64_t kernel, int64_t stride = -1, int64_t padding = 0,
                  bool count_include_pad = true);

// ---- normalisation, losses and friends (functions/nn_ops.cpp) ----
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);
// logits: [N, C]; target: [N] integer class indices. Mean over non-ignored samples
// (reduction "mean"), their sum ("sum") or per-sample losses ("none"). Targets equal to
// ignore_index add nothing.
Tensor cross_entropy(const Tensor& logits, const Tensor& target, const std::string& reduction = "mean",
                     int64_t ignore_index = -100);
Tensor mse_loss(const Tensor& input, const Tensor& target, const std::string& reduction = "mean");
// Normalises over the trailing dims given by normalized_shape.
Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight, const Tensor& bias,
                  double eps = 1e-5);
// x: [N, C, ...]. running_mean/var are updated in place in training (they may be undefined).
Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                  const Tensor& running_var, bool training, double momentum = 0.1, double eps = 1e-5);
// x: [N, C, ...] normalised per sample over groups of C / groups channels and all positions;
// weight, bias: [C] (input's dtype, or f32 with a 16-bit input) or undefined. One fused node
// that keeps x and [N, groups] f32 statistics for backward.
Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias, double eps = 1e-5);
// weight: [num, dim]; indices: integer tensor of any shape -> [..., dim].
Tensor embedding(const Tensor& weight, const Tensor& indices);
// Zeroes each element with probability p and scales the rest by 1/(1-p); identity when !training.
Tensor dropout(const Tensor& x, double p, bool training);

}  // namespace headroom
