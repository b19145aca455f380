// Differentiable in-place ReLU (Note [differentiable in-place], autograd/functions.h): the same
// gradients as relu, bit for bit; the bytes of relu's input saved (the forward peak falls by one
// activation); the version check intact (an op that saved the overwritten tensor fails in
// backward, naming it); leaves and views refused.
#include <gtest/gtest.h>

#include "autograd/functions.h"
#include "nn/nn.h"
#include "test_util.h"

namespace headroom {
namespace {

using headroom::testing::all_close;

std::shared_ptr<nn::Sequential> net(bool inplace) {
  manual_seed(17);
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Conv2d>(3, 8, 3, 1, 1), std::make_shared<nn::BatchNorm2d>(8),
      std::make_shared<nn::ReLU>(inplace), std::make_shared<nn::Conv2d>(8, 8, 3, 1, 1),
      std::make_shared<nn::BatchNorm2d>(8), std::make_shared<nn::ReLU>(inplace)});
}

TEST(InplaceRelu, TheGradientsOfReluBitForBit) {
  manual_seed(2);
  const Tensor x = Tensor::randn({4, 3, 12, 12});
  auto a = net(false), b = net(true);
  sum(square((*a)(x))).backward();
  sum(square((*b)(x))).backward();
  const auto pa = a->parameters(), pb = b->parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(all_close(pa[i].grad(), pb[i].grad(), 0, 0)) << "parameter " << i;
  EXPECT_EQ(b->at(2)->name(), "ReLU(inplace)");
}

TEST(InplaceRelu, ItSavesTheBytesOfReluInput) {
  // Conv, BatchNorm, ReLU twice: each in-place ReLU allocates no output -- the forward allocates
  // two activations fewer in all.
  {
    manual_seed(2);
    const Tensor x = Tensor::randn({8, 3, 16, 16});
    const int64_t one = 8 * 8 * 16 * 16 * 4;  // a [8, 8, 16, 16] f32 activation
    int64_t allocated[2] = {0, 0};
    for (int inplace = 0; inplace < 2; ++inplace) {
      auto m = net(inplace == 1);
      CachingAllocator& a = caching_allocator(Device::cpu());
      const int64_t before = a.stats().allocated_bytes.allocated;
      Tensor y = (*m)(x);
      allocated[inplace] = a.stats().allocated_bytes.allocated - before;
      sum(y).backward();
    }
    EXPECT_EQ(allocated[0] - allocated[1], 2 * one);
  }
  // Where ReLU is the forward's peak (a wide hidden layer: its input and output both alive as it
  // runs out of place), the peak falls by nearly that activation.
  {
    manual_seed(3);
    const Tensor x = Tensor::randn({64, 32});
    int64_t peak[2] = {0, 0};
    for (int inplace = 0; inplace < 2; ++inplace) {
      manual_seed(5);
      nn::Sequential m(std::vector<std::shared_ptr<nn::Module>>{std::make_shared<nn::Linear>(32, 4096),
                                                                std::make_shared<nn::ReLU>(inplace == 1),
                                                                std::make_shared<nn::Linear>(4096, 4)});
      CachingAllocator& a = caching_allocator(Device::cpu());
      a.empty_cache();
      const int64_t base = a.stats().allocated_bytes.current;
      a.reset_peak_stats();
      Tensor y = m(x);
      peak[inplace] = a.stats().allocated_bytes.peak - base;
      sum(y).backward();
    }
    const int64_t hidden = 64 * 4096 * 4, out = 64 * 4 * 4;
    EXPECT_EQ(peak[0], 2 * hidden);    // ReLU's input and output
    EXPECT_EQ(peak[1], hidden + out);  // one hidden activation, then the small output beside it
  }
}

TEST(InplaceRelu, TheVersionCheckHolds) {
  Tensor w = Tensor::randn({5}).set_requires_grad(true);
  Tensor y = exp(w);  // exp saves its output: relu_ overwrites what exp's backward needs
  relu_(y);
  EXPECT_THROW_WITH(sum(y).backward(), AutogradError, "exp");
  // A leaf that requires grad, and a view, are refused.
  EXPECT_THROW_WITH(relu_(w), AutogradError, "leaf that requires grad");
  Tensor z = w * 2.0;
  Tensor v = z.slice(0, 1, 3);
  EXPECT_THROW_WITH(relu_(v), AutogradError, "view");
  // A ReLU in place that begins a recomputed block overwrites the input the block's re-run
  // starts from: refused in backward, naming checkpoint (inside a block it is fine: the sweep).
  {
    manual_seed(1);
    nn::Sequential m(
        std::vector<std::shared_ptr<nn::Module>>{std::make_shared<nn::Linear>(4, 4), std::make_shared<nn::ReLU>(true)});
    m.set_checkpoint(nn::CheckpointMode::block);
    EXPECT_THROW_WITH(sum(m(Tensor::randn({2, 4}))).backward(), AutogradError, "checkpoint");
  }
  // An expanded tensor would be computed on more than once per element (tanh(tanh(x))).
  Tensor wide = Tensor::from_vector({0.5}, {1}).expand({4});
  EXPECT_THROW_WITH(tanh_(wide), ValueError, "expanded");
  // Without grad it is an in-place op like any other, and bumps the version.
  Tensor plain = Tensor::from_vector({-1.0, 2.0, -3.0}, {3});
  const auto before = plain.version();
  relu_(plain);
  EXPECT_EQ(plain.to_vector<float>(), (std::vector<float>{0.0f, 2.0f, 0.0f}));
  EXPECT_GT(plain.version(), before);
}

// tanh_ and sigmoid_: the same pattern -- bit-identical gradients, one tensor fewer.
TEST(InplaceActivation, TanhAndSigmoidGiveTheOutOfPlaceGradients) {
  for (int which = 0; which < 2; ++which) {
    manual_seed(6);
    Tensor w = Tensor::randn({16, 32}).set_requires_grad(true);
    const Tensor x = Tensor::randn({8, 16});
    Tensor a = matmul(x, w);
    Tensor ya = which == 0 ? tanh(a) : sigmoid(a);
    sum(square(ya)).backward();
    const Tensor want = w.grad().clone();
    w.zero_grad();
    CachingAllocator& alloc = caching_allocator(Device::cpu());
    const int64_t before = alloc.stats().allocated_bytes.allocated;
    Tensor b = matmul(x, w);
    Tensor& yb = which == 0 ? tanh_(b) : sigmoid_(b);
    const int64_t forward = alloc.stats().allocated_bytes.allocated - before;
    sum(square(yb)).backward();
    EXPECT_TRUE(all_close(w.grad(), want, 0, 0)) << (which == 0 ? "tanh_" : "sigmoid_");
    EXPECT_EQ(yb.grad_fn()->name(), which == 0 ? "tanh_" : "sigmoid_");
    EXPECT_EQ(forward, 8 * 32 * 4) << "the matmul's output only";
  }
}

}  // namespace
}  // namespace headroom
