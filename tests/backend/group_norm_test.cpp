// group_norm (the fused op: Backend::group_norm_forward/backward) on every device and float
// dtype, forward and the gradients of x, weight and bias, against the composite GroupNorm used
// to be -- reshape to [N, G, rest], mean and variance over rest, reshape back, per-channel affine
// -- evaluated in f64 on the cpu. Shapes: C / G channels per group at every size of kSizes
// (through the plane size S), groups = 1 (the whole sample), groups = C (instance norm), odd C
// and S, a 2-d input (S = 1), a 4-d conv-like input and a long group; affine off, on, and weight
// only. A 16-bit input also runs with f32 weight and bias (autocast's f32_params policy).
//
// Tolerances: as batch_norm's (nn_ops_test.cpp). dx subtracts the group means of dy w and of
// dy w xhat from dy w: acc_tol(group size) x 4; dweight and dbias sum over N * S, so the larger
// of the two lengths sets the factor. The statistics are f64 for f64 data (Note [statistics
// dtype]), so f64 is held to f64's tolerance.
#include <algorithm>
#include <cmath>

#include "device_test.h"

namespace headroom::testing {
namespace {

using V = std::vector<Tensor>;

Tensor group_norm_ref(const Tensor& x, int64_t groups, const Tensor& w, const Tensor& b, double eps) {
  const int64_t n = x.size(0), c = x.size(1);
  Tensor xg = x.reshape({n, groups, x.numel() / (n * groups)});
  Tensor xc = xg - mean(xg, {2}, true);
  Tensor y = (xc / sqrt(mean(xc * xc, {2}, true) + eps)).reshape(x.shape());
  Shape bshape(static_cast<size_t>(x.dim()), 1);
  bshape[1] = c;
  if (w.defined()) y = y * w.reshape(bshape);
  if (b.defined()) y = y + b.reshape(bshape);
  return y;
}

class GroupNormOp : public DeviceTest {};

TEST_P(GroupNormOp, EveryGroupSizeAffineAndShape) {
  struct Case {
    Shape x;
    int64_t groups;
  };
  std::vector<Case> cases;
  for (int64_t s : kSizes) cases.push_back({{3, 6, s}, 3});  // groups of 2 channels
  cases.push_back({{3, 4, 5, 7}, 1});                        // the whole sample
  cases.push_back({{3, 4, 5, 7}, 4});                        // instance norm
  cases.push_back({{2, 5, 9}, 5});                           // odd C, groups = C
  cases.push_back({{5, 9, 3}, 3});                           // odd everything
  cases.push_back({{8, 6}, 2});                              // 2-d: S = 1
  cases.push_back({{16, 32, 8, 8}, 8});                      // conv-like
  cases.push_back({{2, 2, int64_t{1} << 16}, 1});            // a long group
  const double eps = 1e-5;
  for (const Case& c : cases)
    for (int affine = 0; affine < 3; ++affine) {  // none, weight and bias, weight only
      const int64_t n = c.x[0], ch = c.x[1];
      const int64_t group_size = shape_numel(c.x) / (n * c.groups);
      const int64_t per_channel = shape_numel(c.x) / ch;
      const Tol tol = acc_tol(std::max(group_size, per_channel))
                          .times(4)
                          .scale_at_least(std::sqrt(static_cast<double>(per_channel)));
      std::vector<Tensor> inputs = {randn(c.x, 2, 0.5)};
      if (affine >= 1) inputs.push_back(randn({ch}, 1, 1));
      if (affine == 1) inputs.push_back(randn({ch}));
      auto weight = [affine](const V& v) { return affine >= 1 ? v[1] : Tensor(); };
      auto bias = [affine](const V& v) { return affine == 1 ? v[2] : Tensor(); };
      const int64_t g = c.groups;
      check_op(
          str_cat("group_norm ", shape_str(c.x), " groups ", g,
                  affine == 0   ? " no affine"
                  : affine == 1 ? " affine"
                                : " weight only"),
          [g, eps, weight, bias](const V& v) { return group_norm(v[0], g, weight(v), bias(v), eps); }, inputs, tol, tol,
          true, [g, eps, weight, bias](const V& v) { return group_norm_ref(v[0], g, weight(v), bias(v), eps); });
    }
}

TEST_P(GroupNormOp, NonContiguousInput) {
  // [N, C, H, W] permuted from [N, H, W, C]: the op makes it contiguous, the gradient comes back
  // in the input's layout.
  const Tol tol = acc_tol(2 * 35).times(4).scale_at_least(std::sqrt(3.0 * 35));
  check_op(
      "group_norm of a permuted input",
      [](const V& v) {
        return group_norm(v[0].permute({0, 3, 1, 2}), 2, v[1], v[2]);
      },
      {randn({3, 5, 7, 4}, 2, 0.5), randn({4}, 1, 1), randn({4})}, tol, tol, true,
      [](const V& v) {
        return group_norm_ref(v[0].permute({0, 3, 1, 2}), 2, v[1], v[2], 1e-5);
      });
}

TEST_P(GroupNormOp, HalfInputWithF32Parameters) {
  if (!half()) GTEST_SKIP() << "f32 parameters with a 16-bit input only";
  const Shape xs = {4, 6, 5, 5};
  const int64_t groups = 3, per_channel = 4 * 25, group_size = 2 * 25;
  Tensor x = randn(xs, 2, 0.5), w = randn({6}, 1, 1), b = randn({6});
  Tensor xd = dev_in(x, true);
  Tensor wd = w.to(DType::f32).to(device()).detach().set_requires_grad(true);
  Tensor bd = b.to(DType::f32).to(device()).detach().set_requires_grad(true);
  Tensor y = group_norm(xd, groups, wd, bd);
  EXPECT_EQ(y.dtype(), dtype()) << "the output keeps the input's dtype";
  Tensor xr = ref_in(x, true), wr = w.detach().set_requires_grad(true), br = b.detach().set_requires_grad(true);
  Tensor yr = group_norm_ref(xr, groups, wr, br, 1e-5);
  const Tol tol = acc_tol(std::max(group_size, per_channel)).times(4).scale_at_least(std::sqrt(100.0));
  EXPECT_TRUE(close(y, yr, tol));
  Tensor dy = randn(xs);
  (y * dev_in(dy)).sum().backward();
  (yr * ref_in(dy)).sum().backward();
  EXPECT_EQ(wd.grad().dtype(), DType::f32);
  EXPECT_EQ(bd.grad().dtype(), DType::f32);
  EXPECT_TRUE(close(xd.grad(), xr.grad(), tol));
  EXPECT_TRUE(close(wd.grad(), wr.grad(), tol));
  EXPECT_TRUE(close(bd.grad(), br.grad(), tol));
}

TEST_P(GroupNormOp, ErrorsNameShapesAndDtypes) {
  Tensor x = Tensor::zeros({2, 6, 3}, opts());
  EXPECT_THROW_WITH(group_norm(x, 4, Tensor(), Tensor()), ValueError,
                    "6 channels of input (2, 6, 3) cannot be split into 4 groups");
  EXPECT_THROW_WITH(group_norm(x, 3, Tensor::ones({5}, opts()), Tensor()), ShapeError,
                    "weight has shape (5,), expected (6,)");
  const DType other = dtype() == DType::f64 ? DType::f32 : DType::f64;
  EXPECT_THROW_WITH(group_norm(x, 3, Tensor(), Tensor::ones({6}, opts().dtype(other))), DTypeError,
                    str_cat("bias is ", dtype_name(other), " but the input is ", dtype_name(dtype())));
  EXPECT_THROW_WITH(group_norm(Tensor::zeros({6}, opts()), 3, Tensor(), Tensor()), ShapeError, "[N, C, *]");
  EXPECT_THROW_WITH(group_norm(x, 3, Tensor(), Tensor(), -1.0), ValueError, "eps must be non-negative");
}

HR_DEVICE_DTYPE_SUITE(GroupNormOp);

}  // namespace
}  // namespace headroom::testing
