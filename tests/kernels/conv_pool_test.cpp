// The CPU conv2d and pooling kernels against naive loops written here in double: every output
// (or gradient) element summed or scattered directly from the definition, at awkward sizes, with
// stride, padding, dilation, groups and depthwise convolution, in every float dtype.
#include <cmath>
#include <cstdlib>

#include "test_util.h"

namespace headroom {
namespace {

using testing::all_close;

Backend& cpu() { return backend_for(Device::cpu()); }

struct ConvCase {
  int64_t N, C, H, W, O, KH, KW;
  Conv2dParams p;
  const char* name;
};

Conv2dParams params(int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups) {
  Conv2dParams p;
  p.stride_h = sh, p.stride_w = sw, p.pad_h = ph, p.pad_w = pw, p.dilation_h = dh, p.dilation_w = dw;
  p.groups = groups;
  return p;
}

int64_t conv_out(int64_t in, int64_t k, int64_t s, int64_t pad, int64_t d) {
  return (in + 2 * pad - d * (k - 1) - 1) / s + 1;
}

// Visits every (n, o, oh, ow, c, kh, kw) term of the convolution whose input pixel is real,
// with the flat indices of x, w and out.
template <typename F>
void for_each_term(const ConvCase& k, F&& f) {
  const auto& p = k.p;
  const int64_t OH = conv_out(k.H, k.KH, p.stride_h, p.pad_h, p.dilation_h);
  const int64_t OW = conv_out(k.W, k.KW, p.stride_w, p.pad_w, p.dilation_w);
  const int64_t Cg = k.C / p.groups, Og = k.O / p.groups;
  for (int64_t n = 0; n < k.N; ++n)
    for (int64_t o = 0; o < k.O; ++o)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow)
          for (int64_t cg = 0; cg < Cg; ++cg)
            for (int64_t kh = 0; kh < k.KH; ++kh)
              for (int64_t kw = 0; kw < k.KW; ++kw) {
                const int64_t ih = oh * p.stride_h - p.pad_h + kh * p.dilation_h;
                const int64_t iw = ow * p.stride_w - p.pad_w + kw * p.dilation_w;
                if (ih < 0 || ih >= k.H || iw < 0 || iw >= k.W) continue;
                const int64_t c = (o / Og) * Cg + cg;
                f(static_cast<size_t>(((n * k.C + c) * k.H + ih) * k.W + iw),
                  static_cast<size_t>(((o * Cg + cg) * k.KH + kh) * k.KW + kw),
                  static_cast<size_t>(((n * k.O + o) * OH + oh) * OW + ow));
              }
}

Shape out_shape(const ConvCase& k) {
  return {k.N, k.O, conv_out(k.H, k.KH, k.p.stride_h, k.p.pad_h, k.p.dilation_h),
          conv_out(k.W, k.KW, k.p.stride_w, k.p.pad_w, k.p.dilation_w)};
}

const ConvCase kCases[] = {
    {2, 3, 7, 7, 4, 3, 3, params(1, 1, 1, 1, 1, 1, 1), "3x3 pad 1"},
    {3, 2, 9, 8, 5, 3, 3, params(2, 2, 1, 1, 1, 1, 1), "stride 2 pad 1"},
    {2, 3, 10, 11, 2, 3, 3, params(1, 1, 2, 2, 2, 2, 1), "dilation 2 pad 2"},
    {2, 4, 8, 7, 6, 3, 2, params(2, 1, 1, 0, 1, 2, 2), "groups 2, asymmetric"},
    {2, 5, 6, 6, 5, 3, 3, params(1, 1, 1, 1, 1, 1, 5), "depthwise"},
    {1, 6, 5, 5, 10, 3, 3, params(1, 1, 1, 1, 1, 1, 2), "groups 2, 5 filters a group"},
    {2, 3, 3, 4, 2, 5, 5, params(1, 1, 2, 2, 1, 1, 1), "kernel wider than input"},
    {3, 7, 5, 6, 3, 1, 1, params(1, 1, 0, 0, 1, 1, 1), "1x1"},
    {1, 1, 1, 1, 1, 1, 1, params(1, 1, 0, 0, 1, 1, 1), "1x1x1x1"},
    {129, 2, 4, 4, 3, 3, 3, params(3, 3, 1, 1, 1, 1, 1), "many images, stride 3"},
    // Stride 1 on planes of 16 x 16 and more: the padded-plane form (Note [padded-plane convolution]).
    {2, 3, 16, 17, 4, 3, 3, params(1, 1, 1, 1, 1, 1, 1), "padded plane, 3x3 pad 1"},
    {2, 2, 18, 16, 3, 3, 5, params(1, 1, 2, 1, 2, 1, 1), "padded plane, 3x5, dilation 2 by 1, pad 2 by 1"},
    {3, 2, 16, 16, 2, 3, 3, params(1, 1, 0, 0, 1, 1, 1), "padded plane, no padding"},
    // 3-wide kernels in f32 take the direct tap kernels (Note [direct tap kernels]): rows of 4
    // and the 2 left over, the column tails, dilation, five kernel rows, 4 images in 2 slices.
    {4, 5, 16, 19, 6, 3, 3, params(1, 1, 2, 2, 2, 2, 1), "padded plane, 3x3 dilation 2 pad 2, 6 filters"},
    {5, 4, 20, 16, 8, 5, 3, params(1, 1, 2, 1, 1, 1, 1), "padded plane, 5x3, 5 images"},
    {2, 6, 16, 16, 4, 3, 3, params(1, 1, 1, 1, 1, 1, 2), "groups 2 at 16 x 16 (im2col)"},
};

// Tolerance of a dot product over `terms` unit normals in dtype.
::testing::AssertionResult matches(const Tensor& got, const Tensor& want, int64_t terms) {
  const double grow = std::sqrt(static_cast<double>(std::max<int64_t>(terms, 1)));
  return all_close(got, want, testing::default_atol(got.dtype()) * grow, testing::default_rtol(got.dtype()));
}

void check_conv(const ConvCase& k, DType dt) {
  SCOPED_TRACE(std::string(k.name) + " " + dtype_name(dt));
  const int64_t Cg = k.C / k.p.groups;
  Tensor x = Tensor::randn({k.N, k.C, k.H, k.W}, dt), w = Tensor::randn({k.O, Cg, k.KH, k.KW}, dt);
  Tensor bias = Tensor::randn({k.O}, dt);
  Shape os = out_shape(k);
  std::vector<double> vx = x.to_vector<double>(), vw = w.to_vector<double>(), vb = bias.to_vector<double>();
  const int64_t terms = Cg * k.KH * k.KW;

  // forward, with and without bias
  std::vector<double> ref(static_cast<size_t>(shape_numel(os)), 0.0);
  for_each_term(k, [&](size_t xi, size_t wi, size_t oi) { ref[oi] += vx[xi] * vw[wi]; });
  Tensor out = Tensor::full(os, NAN, dt);
  cpu().conv2d_forward(x, w, Tensor(), out, k.p);
  EXPECT_TRUE(matches(out, Tensor::from_vector(ref, os, DType::f64), terms)) << "forward, no bias";
  const int64_t plane = os[2] * os[3];
  for (size_t i = 0; i < ref.size(); ++i) ref[i] += vb[(i / static_cast<size_t>(plane)) % static_cast<size_t>(k.O)];
  cpu().conv2d_forward(x, w, bias, out, k.p);
  EXPECT_TRUE(matches(out, Tensor::from_vector(ref, os, DType::f64), terms)) << "forward, bias";

  // backward: dx scatters dout through the weights, dw gathers dout times the inputs
  Tensor dout = Tensor::randn(os, dt);
  std::vector<double> vd = dout.to_vector<double>();
  std::vector<double> rdx(vx.size(), 0.0), rdw(vw.size(), 0.0);
  for_each_term(k, [&](size_t xi, size_t wi, size_t oi) {
    rdx[xi] += vd[oi] * vw[wi];
    rdw[wi] += vd[oi] * vx[xi];
  });
  Tensor dx = Tensor::full(x.shape(), NAN, dt), dw = Tensor::full(w.shape(), NAN, dt);
  cpu().conv2d_backward_input(dout, w, dx, k.p);
  cpu().conv2d_backward_weight(dout, x, dw, k.p);
  EXPECT_TRUE(matches(dx, Tensor::from_vector(rdx, x.shape(), DType::f64), k.O / k.p.groups * k.KH * k.KW)) << "dx";
  EXPECT_TRUE(matches(dw, Tensor::from_vector(rdw, w.shape(), DType::f64), k.N * plane)) << "dw";
}

TEST(CpuConv2d, MatchesNaiveLoops) {
  for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16})
    for (const ConvCase& k : kCases) check_conv(k, dt);
}

TEST(CpuConv2d, ImagesInSeveralChunks) {
  // 256 channels of 64x64 with a 3x3 kernel make about 37 MiB of im2col columns per image,
  // over the 4 MiB scratch budget: each image is its own chunk and dw accumulates across them.
  check_conv({2, 256, 64, 64, 2, 3, 3, params(1, 1, 1, 1, 1, 1, 1), "one image a chunk"}, DType::f32);
  // About 9.5 MiB an image: seven chunks of one image, two groups each.
  check_conv({7, 128, 64, 64, 2, 3, 3, params(1, 1, 1, 1, 1, 1, 2), "one image a chunk, groups 2"}, DType::f32);
}

// Note [image-parallel convolution]: each slice of the batch after the first sums its own
// partial weight gradient, scratch on top of the slices' buffers; where the partials would pass
// the scratch budget the weight gradient keeps one slice. ctest runs this at 1, 2 and 16 threads
// (kernels_conv_threads_*): at 16, a 256 -> 256 channel 3x3 layer's fifteen partials would be
// 34 MiB of workspace.
TEST(CpuConv2d, WeightGradientScratchStaysBoundedWhateverTheThreads) {
  for (bool padded_plane : {false, true}) {  // 4 x 4 planes take im2col, 16 x 16 the padded-plane form
    const int64_t hw = padded_plane ? 16 : 4;
    Tensor x = Tensor::randn({16, 256, hw, hw}), dout = Tensor::randn({16, 256, hw, hw});
    Tensor dw = Tensor::empty({256, 256, 3, 3});
    CachingAllocator& alloc = caching_allocator(Device::cpu());
    const auto workspace = static_cast<size_t>(MemoryCategory::workspace);
    alloc.reset_peak_stats();
    const int64_t before = alloc.stats().category_bytes[workspace].current;
    cpu().conv2d_backward_weight(dout, x, dw, params(1, 1, 1, 1, 1, 1, 1));
    const int64_t scratch = alloc.stats().category_bytes[workspace].peak - before;
    // The slices' buffers within the 4 MiB budget, the partials within it too, and (padded-plane)
    // one dw-sized weight-by-tap buffer.
    EXPECT_LE(scratch, 2 * (4LL << 20) + dw.nbytes())
        << (padded_plane ? "16 x 16" : "4 x 4") << " planes, HEADROOM_NUM_THREADS="
        << (std::getenv("HEADROOM_NUM_THREADS") ? std::getenv("HEADROOM_NUM_THREADS") : "");
  }
}

TEST(CpuConv2d, RejectsMismatchedShapes) {
  Tensor x = Tensor::randn({1, 4, 5, 5}), w = Tensor::randn({2, 4, 3, 3});
  EXPECT_THROW_WITH(cpu().conv2d_forward(x, w, Tensor(), Tensor::empty({1, 2, 4, 4}), Conv2dParams{}), ShapeError,
                    "expected (1, 2, 3, 3)");
  Conv2dParams g2 = params(1, 1, 0, 0, 1, 1, 2);
  EXPECT_THROW_WITH(cpu().conv2d_forward(x, w, Tensor(), Tensor::empty({1, 2, 3, 3}), g2), ShapeError, "groups=2");
  EXPECT_THROW_WITH(cpu().conv2d_forward(x, w.to(DType::f64), Tensor(), Tensor::empty({1, 2, 3, 3}), Conv2dParams{}),
                    DTypeError, "f64");
}

// ---- pooling ----

struct PoolCase {
  int64_t N, C, H, W;
  Pool2dParams p;
  const char* name;
};

Pool2dParams pool(int64_t k, int64_t s, int64_t pad, bool include_pad = true) {
  Pool2dParams p;
  p.kernel_h = p.kernel_w = k;
  p.stride_h = p.stride_w = s;
  p.pad_h = p.pad_w = pad;
  p.count_include_pad = include_pad;
  return p;
}

const PoolCase kPoolCases[] = {
    {2, 3, 8, 8, pool(2, 2, 0), "2x2"},
    {2, 3, 7, 9, pool(3, 2, 1), "3x3 stride 2 pad 1 (overlapping)"},
    {1, 2, 7, 9, pool(3, 2, 1, false), "3x3 stride 2 pad 1, pad not counted"},
    {3, 1, 5, 6, pool(3, 1, 1), "3x3 stride 1 pad 1"},
    {1, 2, 9, 7, pool(4, 3, 2, false), "4x4 stride 3 pad 2, pad not counted"},
    {1, 129, 3, 3, pool(3, 3, 0), "one window a plane"},
};

Shape pool_shape(const PoolCase& k) {
  return {k.N, k.C, (k.H + 2 * k.p.pad_h - k.p.kernel_h) / k.p.stride_h + 1,
          (k.W + 2 * k.p.pad_w - k.p.kernel_w) / k.p.stride_w + 1};
}

// Visits every output with its list of (in-plane position) real inputs and the count of the
// window positions that lie inside the padded input.
template <typename F>
void for_each_window(const PoolCase& k, F&& f) {
  Shape os = pool_shape(k);
  const auto& p = k.p;
  for (int64_t pl = 0; pl < k.N * k.C; ++pl)
    for (int64_t oh = 0; oh < os[2]; ++oh)
      for (int64_t ow = 0; ow < os[3]; ++ow) {
        std::vector<int64_t> real;
        int64_t padded = 0;
        for (int64_t kh = 0; kh < p.kernel_h; ++kh)
          for (int64_t kw = 0; kw < p.kernel_w; ++kw) {
            const int64_t h = oh * p.stride_h - p.pad_h + kh, w = ow * p.stride_w - p.pad_w + kw;
            if (h < k.H + p.pad_h && w < k.W + p.pad_w) ++padded;
            if (h >= 0 && h < k.H && w >= 0 && w < k.W) real.push_back(h * k.W + w);
          }
        f(pl, (pl * os[2] + oh) * os[3] + ow, real, padded);
      }
}

TEST(CpuPool, MaxMatchesNaiveLoops) {
  for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16})
    for (DType it : {DType::u8, DType::i32})  // the saved offsets: 1 byte, or 4 for large windows
      for (const PoolCase& k : kPoolCases) {
        SCOPED_TRACE(std::string(k.name) + " " + dtype_name(dt) + " indices " + dtype_name(it));
        Tensor x = Tensor::randn({k.N, k.C, k.H, k.W}, dt);
        std::vector<double> vx = x.to_vector<double>();
        Shape os = pool_shape(k);
        std::vector<double> ref(static_cast<size_t>(shape_numel(os)));
        std::vector<int64_t> ref_pos(ref.size()), ref_off(ref.size());  // plane position, window offset
        const int64_t HW = k.H * k.W;
        for_each_window(k, [&](int64_t pl, int64_t o, const std::vector<int64_t>& real, int64_t) {
          int64_t best = real.at(0);
          for (int64_t i : real)
            if (vx[static_cast<size_t>(pl * HW + i)] > vx[static_cast<size_t>(pl * HW + best)]) best = i;
          ref[static_cast<size_t>(o)] = vx[static_cast<size_t>(pl * HW + best)];
          ref_pos[static_cast<size_t>(o)] = best;
          const int64_t ow = o % os[3], oh = (o / os[3]) % os[2];
          ref_off[static_cast<size_t>(o)] = (best / k.W - (oh * k.p.stride_h - k.p.pad_h)) * k.p.kernel_w +
                                            (best % k.W - (ow * k.p.stride_w - k.p.pad_w));
        });
        Tensor out = Tensor::empty(os, dt), idx = Tensor::empty(os, it);
        cpu().max_pool2d_forward(x, out, idx, k.p);
        EXPECT_TRUE(all_close(out, Tensor::from_vector(ref, os, DType::f64), 0, 0));
        EXPECT_EQ(idx.to_vector<int64_t>(), ref_off);
        // backward: each output's gradient lands on its winner; overlapping windows add up.
        Tensor dout = Tensor::randn(os, dt);
        std::vector<double> vd = dout.to_vector<double>(), rdx(vx.size(), 0.0);
        for (size_t o = 0; o < ref.size(); ++o) {
          const int64_t pl = static_cast<int64_t>(o) / (os[2] * os[3]);
          rdx[static_cast<size_t>(pl * HW + ref_pos[o])] += vd[o];
        }
        Tensor dx = Tensor::full(x.shape(), NAN, dt);
        cpu().max_pool2d_backward(dout, idx, dx, k.p);
        EXPECT_TRUE(all_close(dx, Tensor::from_vector(rdx, x.shape(), DType::f64)));
      }
}

TEST(CpuPool, MaxNeverPicksPaddingAndPropagatesNan) {
  // All inputs negative: a zero from the padding would win if padding were a candidate.
  Tensor x = Tensor::from_vector({-5.0, -4.0, -3.0, -2.0}, {1, 1, 2, 2});
  Tensor out = Tensor::empty({1, 1, 3, 3}), idx = Tensor::empty({1, 1, 3, 3}, DType::u8);
  cpu().max_pool2d_forward(x, out, idx, pool(2, 1, 1));
  EXPECT_EQ(out.to_vector<float>(), (std::vector<float>{-5, -4, -4, -3, -2, -2, -3, -2, -2}));
  // Offsets within each 2x2 window (row-major from the window's corner, padding counted): the
  // winners are the plane cells 0, 1, 1, 2, 3, 3, 2, 3, 3.
  EXPECT_EQ(idx.to_vector<int64_t>(), (std::vector<int64_t>{3, 3, 2, 3, 3, 2, 1, 1, 0}));
  Tensor y = Tensor::from_vector({1.0, NAN, 3.0, 2.0}, {1, 1, 2, 2});
  Tensor one = Tensor::empty({1, 1, 1, 1}), one_idx = Tensor::empty({1, 1, 1, 1}, DType::u8);
  cpu().max_pool2d_forward(y, one, one_idx, pool(2, 2, 0));
  EXPECT_TRUE(std::isnan(one.item<double>()));
  EXPECT_EQ(one_idx.item<int64_t>(), 1);
  // Ties go to the first element in window order; a window of -inf reports its first element.
  Tensor flat = Tensor::full({1, 1, 3, 3}, 1.0);
  cpu().max_pool2d_forward(flat, out, idx, pool(3, 1, 1));
  // The first real cell of each 3x3 window: plane cells 0, 0, 1, 0, 0, 1, 3, 3, 4.
  EXPECT_EQ(idx.to_vector<int64_t>(), (std::vector<int64_t>{4, 3, 3, 1, 0, 0, 1, 0, 0}));
  Tensor ninf = Tensor::full({1, 1, 3, 3}, -INFINITY);
  cpu().max_pool2d_forward(ninf, out, idx, pool(3, 1, 1));
  EXPECT_EQ(idx.to_vector<int64_t>(), (std::vector<int64_t>{4, 3, 3, 1, 0, 0, 1, 0, 0}));
  EXPECT_EQ(out.to_vector<float>(), std::vector<float>(9, -INFINITY));
  // An offset outside the window, or on padding, is reported, not written; i64 indices are refused.
  Tensor bad = Tensor::full({1, 1, 1, 1}, 4.0, DType::u8);
  EXPECT_THROW_WITH(cpu().max_pool2d_backward(one, bad, Tensor::empty({1, 1, 2, 2}), pool(2, 2, 0)), ValueError,
                    "index 4");
  // pool(2, 1, 1) over a 1x1 input: offset 0 of output (0, 0)'s window is a padding cell.
  Tensor on_pad = Tensor::full({1, 1, 2, 2}, 0.0, DType::u8);
  Tensor g4 = Tensor::ones({1, 1, 2, 2});
  EXPECT_THROW_WITH(cpu().max_pool2d_backward(g4, on_pad, Tensor::empty({1, 1, 1, 1}), pool(2, 1, 1)), ValueError,
                    "not a real cell");
  EXPECT_THROW_WITH(cpu().max_pool2d_forward(x, out, Tensor::empty({1, 1, 3, 3}, DType::i64), pool(2, 1, 1)),
                    ValueError, "u8 or i32");
}

TEST(CpuPool, AvgMatchesNaiveLoops) {
  for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16})
    for (const PoolCase& k : kPoolCases) {
      SCOPED_TRACE(std::string(k.name) + " " + dtype_name(dt));
      Tensor x = Tensor::randn({k.N, k.C, k.H, k.W}, dt);
      std::vector<double> vx = x.to_vector<double>();
      Shape os = pool_shape(k);
      Tensor dout = Tensor::randn(os, dt);
      std::vector<double> vd = dout.to_vector<double>();
      std::vector<double> ref(static_cast<size_t>(shape_numel(os)), 0.0), rdx(vx.size(), 0.0);
      const int64_t HW = k.H * k.W;
      for_each_window(k, [&](int64_t pl, int64_t o, const std::vector<int64_t>& real, int64_t padded) {
        const double div = static_cast<double>(k.p.count_include_pad ? padded : static_cast<int64_t>(real.size()));
        double s = 0;
        for (int64_t i : real) {
          s += vx[static_cast<size_t>(pl * HW + i)];
          rdx[static_cast<size_t>(pl * HW + i)] += vd[static_cast<size_t>(o)] / div;
        }
        ref[static_cast<size_t>(o)] = s / div;
      });
      Tensor out = Tensor::full(os, NAN, dt);
      cpu().avg_pool2d_forward(x, out, k.p);
      EXPECT_TRUE(all_close(out, Tensor::from_vector(ref, os, DType::f64)));
      Tensor dx = Tensor::full(x.shape(), NAN, dt);
      cpu().avg_pool2d_backward(dout, dx, k.p);
      EXPECT_TRUE(all_close(dx, Tensor::from_vector(rdx, x.shape(), DType::f64)));
    }
}

TEST(CpuPool, RejectsBadGeometry) {
  Tensor x = Tensor::randn({1, 1, 4, 4});
  EXPECT_THROW_WITH(cpu().avg_pool2d_forward(x, Tensor::empty({1, 1, 3, 3}), pool(2, 2, 0)), ShapeError,
                    "expected (1, 1, 2, 2)");
  EXPECT_THROW_WITH(cpu().avg_pool2d_forward(x, Tensor::empty({1, 1, 3, 3}), pool(2, 2, 2)), ValueError, "padding");
}

}  // namespace
}  // namespace headroom
