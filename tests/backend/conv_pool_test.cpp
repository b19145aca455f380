// conv2d, max_pool2d and avg_pool2d on every device, forward and both gradients.
//
// Sizes: input channels, output channels and the spatial height each take every size in
// kSizes; then stride, padding, dilation, groups (grouped and depthwise), no bias, a
// rectangular kernel with per-axis parameters, and a large layer (2 x 32 x 48 x 48, 3 x 3,
// 32 filters). Pools: channels and spatial size at every size, overlapping and padded windows,
// count_include_pad both ways, and a 1M-element input.
//
// Tolerance: an output sums C/groups * KH * KW products; dx sums O/groups * KH * KW and dw
// N * OH * OW, so acc_tol of the longest (device_test.h), its absolute part x 4 for cuDNN's
// transform algorithms. Max pooling picks an element (exact;
// ties go to the first in the window on both sides, which see the same rounded values).
#include "device_test.h"

namespace headroom::testing {
namespace {

using V = std::vector<Tensor>;

class Conv : public DeviceTest {
 protected:
  void conv(const std::string& name, const Shape& xs, const Shape& ws, const Conv2dParams& p, bool bias = true) {
    const int64_t n = xs[0], c = xs[1], o = ws[0], kh = ws[2], kw = ws[3];
    const int64_t oh = (xs[2] + 2 * p.pad_h - p.dilation_h * (kh - 1) - 1) / p.stride_h + 1;
    const int64_t ow = (xs[3] + 2 * p.pad_w - p.dilation_w * (kw - 1) - 1) / p.stride_w + 1;
    const int64_t longest = std::max({c / p.groups * kh * kw, o / p.groups * kh * kw, n * oh * ow});
    // x 4 on the absolute part: cuDNN may pick transform algorithms (Winograd, FFT) whose f32
    // rounding exceeds a direct sum's by a small factor.
    const Tol a = acc_tol(longest);
    const Tol tol{4 * a.abs, a.rel};
    std::vector<Tensor> inputs = {randn(xs), randn(ws, 0.3)};
    if (bias) inputs.push_back(randn({o}));
    check_op(
        name, [p, bias](const V& v) { return conv2d(v[0], v[1], bias ? v[2] : Tensor(), p); }, inputs, tol, tol);
  }
  static Conv2dParams params(int64_t stride, int64_t pad, int64_t dilation = 1, int64_t groups = 1) {
    Conv2dParams p;
    p.stride_h = p.stride_w = stride;
    p.pad_h = p.pad_w = pad;
    p.dilation_h = p.dilation_w = dilation;
    p.groups = groups;
    return p;
  }
};

TEST_P(Conv, ChannelsAndSpatialAtEverySize) {
  for (int64_t s : kSizes) {
    conv(str_cat("C=", s), {2, s, 6, 6}, {8, s, 3, 3}, params(1, 1));
    conv(str_cat("O=", s), {2, 4, 5, 5}, {s, 4, 3, 3}, params(2, 0));
  }

  for (int64_t s : kSizes) conv(str_cat("H=", s), {1, 2, s, 9}, {3, 2, 3, 3}, params(1, 1));
  conv("H=W=128 stride 2", {1, 3, 128, 128}, {4, 3, 3, 3}, params(2, 1));
}

TEST_P(Conv, StridePaddingDilationGroupsAndLarge) {
  conv("stride 2 pad 2 dilation 2", {2, 5, 17, 13}, {7, 5, 3, 3}, params(2, 2, 2));
  conv("groups 2", {2, 8, 9, 9}, {6, 4, 3, 3}, params(1, 1, 1, 2));
  conv("depthwise", {2, 16, 10, 10}, {32, 1, 3, 3}, params(1, 1, 1, 16));
  // One filter a channel: the CPU's direct depthwise kernels (Note [depthwise convolution]).
  conv("depthwise, one filter a channel", {3, 12, 11, 9}, {12, 1, 3, 3}, params(1, 1, 1, 12));
  conv("depthwise, stride 2, dilation 2, no bias", {2, 8, 15, 16}, {8, 1, 3, 3}, params(2, 2, 2, 8), false);
  conv("depthwise 5 x 5, large", {4, 32, 28, 28}, {32, 1, 5, 5}, params(1, 2, 1, 32));
  conv("groups 4, stride 3, dilation 2, no bias", {3, 8, 20, 20}, {12, 2, 3, 3}, params(3, 2, 2, 4), false);
  conv("1 x 1", {4, 64, 7, 7}, {32, 64, 1, 1}, params(1, 0));
  conv("kernel as large as the input", {2, 3, 5, 5}, {4, 3, 5, 5}, params(1, 0), false);
  Conv2dParams p;
  p.stride_h = 1;
  p.stride_w = 2;
  p.pad_h = 2;
  p.pad_w = 1;
  p.dilation_h = 2;
  p.dilation_w = 1;
  conv("rectangular 3 x 5, per-axis parameters", {2, 6, 11, 14}, {5, 6, 3, 5}, p);
  conv("large: 2 x 32 x 48 x 48, 32 filters", {2, 32, 48, 48}, {32, 32, 3, 3}, params(1, 1));
  // Stride 1 on planes of 16 x 16 and more: the CPU's padded-plane form (Note [padded-plane
  // convolution]), with dilation, no padding, a rectangular kernel with its own padding per axis,
  // and a batch of 9 that the scratch budget splits into chunks of 7 and 2.
  conv("stride 1, dilation 2, 16 x 20", {2, 6, 16, 20}, {5, 6, 3, 3}, params(1, 1, 2));
  conv("stride 1, no padding, no bias", {3, 4, 17, 16}, {7, 4, 3, 3}, params(1, 0), false);
  Conv2dParams r;
  r.pad_h = 1;
  r.pad_w = 2;
  conv("stride 1, 3 x 5 kernel, padding 1 and 2", {2, 3, 18, 17}, {4, 3, 3, 5}, r);
  conv("stride 1, 9 images of 64 channels, 32 x 32", {9, 64, 32, 32}, {64, 64, 3, 3}, params(1, 1));
}

class Pool : public DeviceTest {
 protected:
  void max_pool(const std::string& name, const Shape& xs, int64_t k, int64_t stride, int64_t pad) {
    check_op(str_cat("max_pool2d ", name), [k, stride, pad](const V& v) { return max_pool2d(v[0], k, stride, pad); },
             {randn(xs)});
  }
  void avg_pool(const std::string& name, const Shape& xs, int64_t k, int64_t stride, int64_t pad) {
    for (bool include : {true, false})
      check_op(
          str_cat("avg_pool2d ", name, include ? " counting padding" : " not counting padding"),
          [k, stride, pad, include](const V& v) { return avg_pool2d(v[0], k, stride, pad, include); }, {randn(xs)},
          acc_tol(k * k), acc_tol(k * k));
  }
  void both(const std::string& name, const Shape& xs, int64_t k, int64_t stride, int64_t pad) {
    max_pool(name, xs, k, stride, pad);
    avg_pool(name, xs, k, stride, pad);
  }
};

TEST_P(Pool, ChannelsAndSpatialAtEverySize) {
  for (int64_t s : kSizes) {
    both(str_cat("C=", s, " 2x2"), {2, s, 8, 8}, 2, 2, 0);
    both(str_cat("H=W=", s, " 3x3 stride 2 pad 1"), {1, 3, s, s}, 3, 2, 1);
  }
}

TEST_P(Pool, OverlappingWindowsPaddingAndLarge) {
  both("3x3 stride 1 pad 1", {2, 5, 13, 11}, 3, 1, 1);
  both("4x4 stride 3 pad 2", {2, 3, 17, 19}, 4, 3, 2);
  both("whole plane", {3, 4, 6, 6}, 6, 6, 0);
  // Odd sizes leave the last row and column out of every window: their gradient is 0.
  both("2x2 on 9x7", {2, 2, 9, 7}, 2, 2, 0);

  both("4 x 16 x 128 x 128, 2x2", {4, 16, 128, 128}, 2, 2, 0);
}

HR_DEVICE_DTYPE_SUITE(Conv);
HR_DEVICE_DTYPE_SUITE(Pool);

}  // namespace
}  // namespace headroom::testing
