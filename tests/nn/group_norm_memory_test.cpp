// The memory GroupNorm keeps for backward: its input (alive anyway, as the previous layer's
// output), its output y (which the caller holds) and [N, G] f32 mean and rstd -- BatchNorm's
// footprint. The composite it replaced (reshape + layer_norm + per-channel affine) also held the
// normalised input for the weight gradient, a second y-sized tensor; this test fails with it.
#include "engine/caching_allocator.h"
#include "nn/layers/group_norm.h"
#include "nn/nn.h"
#include "test_util.h"

namespace headroom {
namespace {

int64_t rounded(int64_t bytes) { return (bytes + 511) / 512 * 512; }  // the allocator's unit

TEST(GroupNormMemory, ForwardWithGradHoldsOnlyTheOutputAndStatistics) {
  manual_seed(3);
  CachingAllocator& alloc = caching_allocator(Device::cpu());
  for (const bool affine : {true, false}) {
    nn::GroupNorm gn(4, 16, 1e-5, affine);
    Tensor x = Tensor::randn({8, 16, 24, 24}).set_requires_grad(true);
    const int64_t before = alloc.stats().allocated_bytes.current;
    Tensor y = gn(x);
    const int64_t held = alloc.stats().allocated_bytes.current - before;
    const int64_t y_bytes = y.numel() * 4, stat_bytes = 8 * 4 * 4;  // [N, G] f32
    EXPECT_EQ(held, rounded(y_bytes) + 2 * rounded(stat_bytes)) << (affine ? "affine" : "no affine");
    EXPECT_LT(held, 2 * y_bytes) << "a second activation-sized tensor is held";
    // Backward frees the node and with it the statistics: nothing is left behind.
    y.sum().backward();
    ASSERT_TRUE(x.grad().defined());
    y = Tensor();
    const int64_t grad_bytes = x.numel() * 4;
    EXPECT_EQ(alloc.stats().allocated_bytes.current - before, rounded(grad_bytes) + (affine ? 2 * rounded(16 * 4) : 0))
        << "after backward only x.grad (and the parameters' gradients) remain";
  }
}

TEST(GroupNormMemory, NoGradForwardSavesNothing) {
  CachingAllocator& alloc = caching_allocator(Device::cpu());
  nn::GroupNorm gn(2, 8);
  Tensor x = Tensor::randn({4, 8, 16, 16});
  const int64_t before = alloc.stats().allocated_bytes.current;
  Tensor y;
  {
    NoGradGuard no_grad;
    y = gn(x);
  }
  // y plus the statistics the kernel writes, which nothing keeps once the op returns.
  EXPECT_EQ(alloc.stats().allocated_bytes.current - before, rounded(y.numel() * 4));
}

}  // namespace
}  // namespace headroom
