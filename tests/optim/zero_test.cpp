// ZeRO stages 1 and 2 (Note [ZeRO stages] in nn/parallel/ddp.h, optim/zero.h), for any world
// size: ctest runs test_optim alone and these tests under mpirun with 2 and 3 ranks (3: the
// buckets do not divide evenly, so the last chunks carry padding). Tolerances as in
// tests/nn/parallel/ddp_test.cpp: the averages are the same sums in another order.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "dist/process_group.h"
#include "nn/nn.h"
#include "optim/optim.h"
#include "data_parallel_util.h"
#include "test_util.h"

namespace headroom {
namespace {

using headroom::testing::all_close;

using headroom::testing::my_share;
using headroom::testing::pg;

// Widths 33 and 25: buckets that do not divide among 2 or 3 ranks (uneven shards).
std::shared_ptr<nn::Sequential> make_mlp(uint64_t seed) { return headroom::testing::make_mlp(seed, 33, 25); }
std::pair<Tensor, Tensor> global_batch(int64_t step, int64_t per_rank = 4) {
  return headroom::testing::global_batch(step, per_rank, 2000);
}

nn::DDPOptions zero(int stage) {
  nn::DDPOptions o;
  o.zero_stage = stage;
  o.first_bucket_cap_bytes = 512;  // several buckets, so that stage 2 frees them one by one
  o.bucket_cap_bytes = 2048;
  return o;
}

using optim::ZeroRedundancyOptimizer;

ZeroRedundancyOptimizer::Factory adamw(double lr) {
  return [lr](std::vector<Tensor> shard) { return std::make_unique<optim::AdamW>(std::move(shard), lr); };
}

TEST(ZeRO, BothStagesEqualOneProcessOnTheWholeBatch) {
  for (int stage : {1, 2}) {
    for (int kind : {0, 1}) {
      auto reference = make_mlp(21);
      auto model = make_mlp(21 + static_cast<uint64_t>(pg().rank()));  // rank 0's weights are broadcast
      nn::DistributedDataParallel ddp(model, pg(), zero(stage));
      std::unique_ptr<optim::Optimizer> opt_ref;
      ZeroRedundancyOptimizer::Factory make;
      if (kind == 0) {
        opt_ref = std::make_unique<optim::SGD>(reference->parameters(), 0.1, 0.9);
        make = [](std::vector<Tensor> s) { return std::make_unique<optim::SGD>(std::move(s), 0.1, 0.9); };
      } else {
        opt_ref = std::make_unique<optim::AdamW>(reference->parameters(), 0.01);
        make = adamw(0.01);
      }
      ZeroRedundancyOptimizer opt(ddp, make);
      for (int64_t step = 0; step < 5; ++step) {
        auto [x, y] = global_batch(step);
        opt_ref->zero_grad();
        cross_entropy((*reference)(x), y).backward();
        opt_ref->step();
        opt.zero_grad();
        cross_entropy(ddp(my_share(x)), my_share(y)).backward();
        opt.step();
      }
      const auto a = ddp.parameters(), b = reference->parameters();
      ASSERT_EQ(a.size(), b.size());
      for (size_t i = 0; i < a.size(); ++i)
        EXPECT_TRUE(all_close(a[i], b[i], 1e-6, 1e-5))
            << "stage " << stage << (kind ? " AdamW" : " SGD") << ", parameter " << i;
      // The module's parameters are views into the flat buffers the all-gather writes.
      for (const Tensor& p : model->parameters()) {
        bool in_a_bucket = false;
        for (const auto& bk : ddp.buckets()) in_a_bucket |= p.storage().get() == bk.params_flat.storage().get();
        EXPECT_TRUE(in_a_bucket);
      }
    }
  }
}

TEST(ZeRO, PerRankMemoryFollowsTheStagesAccounting) {
  // Measured by this rank's allocator, by category, after the first step; each figure against
  // what Note [ZeRO stages] says a rank holds.
  const int64_t ranks = pg().size();
  int64_t state_unsharded = 0;
  {
    auto model = make_mlp(5);
    nn::DistributedDataParallel ddp(model, pg(), zero(0));
    optim::AdamW opt(ddp.parameters(), 0.01);
    auto [x, y] = global_batch(0);
    cross_entropy(ddp(my_share(x)), my_share(y)).backward();
    opt.step();
    state_unsharded = static_cast<int64_t>(opt.state_nbytes());
  }
  const int64_t numel = make_mlp(5)->num_parameters();
  int64_t stage1_gradient_peak = 0;
  for (int stage : {1, 2}) {
    CachingAllocator& alloc = caching_allocator(Device::cpu());
    alloc.empty_cache();
    const MemoryStats before = alloc.stats();
    auto model = make_mlp(5);
    nn::DistributedDataParallel ddp(model, pg(), zero(stage));
    ZeroRedundancyOptimizer opt(ddp, adamw(0.01));
    int64_t padded = 0, chunks = 0;
    for (const auto& b : ddp.buckets()) {
      padded += b.padded;
      chunks += b.padded / ranks;
      EXPECT_LT(b.padded - b.numel, ranks);  // uneven: at most N-1 elements of padding a bucket
    }
    alloc.reset_peak_stats();
    auto [x, y] = global_batch(0);
    cross_entropy(ddp(my_share(x)), my_share(y)).backward();
    opt.step();
    const MemoryStats after = alloc.stats();
    auto grown = [&](MemoryCategory c) { return after.category(c).current - before.category(c).current; };
    // Optimizer state: 1/N of one process's, within one shard's rounding (two f32 moments of the
    // padding, plus what the allocator rounds each state tensor up to).
    const int64_t state = static_cast<int64_t>(opt.state_nbytes());
    EXPECT_EQ(state, 8 * chunks) << "stage " << stage;
    EXPECT_LE(std::abs(state * ranks - state_unsharded), 8 * (padded - numel) + 1) << "stage " << stage;
    EXPECT_GE(grown(MemoryCategory::optimizer_state), state);
    EXPECT_LE(grown(MemoryCategory::optimizer_state), state + 2 * 512 * static_cast<int64_t>(ddp.buckets().size()));
    // Gradients: stage 1 keeps the full buckets and adds the shards; stage 2 keeps the shards.
    const int64_t full = 4 * padded, shard = 4 * chunks;
    const int64_t slack = 512 * 2 * static_cast<int64_t>(ddp.buckets().size());
    const int64_t gradient_peak = ddp.last_sync().bucket_bytes_peak;
    if (stage == 1) {
      EXPECT_GE(grown(MemoryCategory::gradient), full + shard);
      EXPECT_LE(grown(MemoryCategory::gradient), full + shard + slack);
      EXPECT_EQ(gradient_peak, full);
      stage1_gradient_peak = gradient_peak;
    } else {
      EXPECT_GE(grown(MemoryCategory::gradient), shard);
      EXPECT_LE(grown(MemoryCategory::gradient), shard + slack);
      // During backward the buckets come and go: a hook frees the ones whose reduce-scatter has
      // ended. Alone (world size 1) each ends at once, so never all are held together; with
      // peers it depends on when they finish, but never more than stage 1 holds.
      EXPECT_LE(gradient_peak, stage1_gradient_peak);
      if (ranks == 1) {
        EXPECT_LT(gradient_peak, full);
      }
    }
    // Parameters: every rank holds all of them (headroom's parameters are the master weights).
    EXPECT_GE(grown(MemoryCategory::parameter), 4 * padded);
    for (const Tensor& p : model->parameters()) EXPECT_FALSE(p.grad().defined());
  }
}

TEST(ZeRO, AnOverflowOnOneRanksShardSkipsTheStepOnEveryRank) {
  auto model = make_mlp(8);
  nn::DistributedDataParallel ddp(model, pg(), zero(2));
  ZeroRedundancyOptimizer opt(ddp, adamw(0.01));
  optim::GradScaler scaler;
  EXPECT_EQ(opt.on_any_rank(pg().rank() == 0), true);
  EXPECT_EQ(opt.on_any_rank(false), false);
  // One element of one gradient is inf on rank 0 only: after the reduce-scatter it sits in the
  // shard of whichever rank owns it, and no other rank sees it.
  const Tensor w = model->parameters()[0];
  HookHandle h = register_hook(w, [&](const Tensor& g) -> Tensor {
    if (pg().rank() != 0) return {};
    Tensor bad = g.clone();
    bad.reshape({bad.numel()}).slice(0, 7, 8).fill_(std::numeric_limits<double>::infinity());
    return bad;
  });
  auto [x, y] = global_batch(1);
  const Tensor before = model->parameters()[0].clone();
  cross_entropy(ddp(my_share(x)), my_share(y)).backward();
  int local = 0;
  for (const Tensor& s : ddp.shard_parameters()) local |= !std::isfinite(s.grad().abs().sum().item<double>());
  Tensor seen = Tensor::full({1}, local);
  pg().all_reduce(seen)->wait();
  EXPECT_EQ(seen.item<double>(), 1.0) << "exactly one rank's shard holds the inf";
  EXPECT_FALSE(scaler.step(opt));
  scaler.update();
  EXPECT_EQ(scaler.skipped_steps(), 1);
  EXPECT_TRUE(all_close(model->parameters()[0], before, 0, 0));
  h.remove();
}

TEST(ZeRO, SplitStepReduceScattersOncePerBucketAndMatchesTheWholeBatch) {
  for (int stage : {1, 2}) {
    auto [x, y] = global_batch(3, 8);
    auto reference = make_mlp(13);
    auto model = make_mlp(13);
    nn::DistributedDataParallel ddp(model, pg(), zero(stage));
    ZeroRedundancyOptimizer opt(
        ddp, [](std::vector<Tensor> s) { return std::make_unique<optim::SGD>(std::move(s), 0.1, 0.9); });
    optim::BatchSplitter::Options so;
    so.ddp = &ddp;
    optim::BatchSplitter splitter(opt, 4, &ddp, so);
    optim::SGD opt_ref(reference->parameters(), 0.1, 0.9);
    for (int step = 0; step < 3; ++step) {
      const int64_t before = pg().stats().reduce_scatters;
      splitter.step(my_share(x), my_share(y), [&](const Tensor& xb, const Tensor& yb) {
        return optim::MicroBatchOutput{cross_entropy(ddp(xb), yb)};
      });
      EXPECT_EQ(pg().stats().reduce_scatters - before, static_cast<int64_t>(ddp.buckets().size()));
      opt_ref.zero_grad();
      cross_entropy((*reference)(x), y).backward();
      opt_ref.step();
    }
    const auto a = ddp.parameters(), b = reference->parameters();
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_TRUE(all_close(a[i], b[i], 1e-6, 1e-5)) << "stage " << stage << ", parameter " << i;
  }
}

TEST(ZeRO, ClipGradNormTakesTheNormOverEveryRank) {
  auto model = make_mlp(17), reference = make_mlp(17);
  nn::DistributedDataParallel ddp(model, pg(), zero(1));
  ZeroRedundancyOptimizer opt(ddp, adamw(0.01));
  auto [x, y] = global_batch(4);
  cross_entropy(ddp(my_share(x)), my_share(y)).backward();
  cross_entropy((*reference)(x), y).backward();
  const double expected = optim::grad_norm(reference->parameters());
  EXPECT_NEAR(opt.clip_grad_norm_(1e-3), expected, 1e-5 * expected);
  EXPECT_NEAR(opt.grad_norm(), 1e-3, 1e-6);
  nn::DistributedDataParallel plain(make_mlp(1), pg());
  EXPECT_THROW_WITH(ZeroRedundancyOptimizer(plain, adamw(0.1)), ValueError, "no ZeRO stage");
}

}  // namespace
}  // namespace headroom
