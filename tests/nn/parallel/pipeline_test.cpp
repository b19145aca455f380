// Pipeline parallelism over cpu devices (nn/parallel/pipeline.h): the same loss and gradients
// as the unsplit model on one device for both schedules, K = 2 and 4 stages and M = 1, 4, 8
// micro-batches; each device's allocator holding what the schedule says; a per-device limit the
// unsplit model exceeds met by the split one; a stage that runs out of memory ending the step,
// not hanging it.
//
// Tolerance: the pipeline runs the batch as micro-batches whose mean losses are weighted by
// n_i / N (as BatchSplitter does); the weight gradients are then sums over micro-batches of
// sums over their rows, the same terms as the whole batch's in another order: a few f32 ulps,
// below 1e-5 relative plus 1e-6 absolute on gradients of order 0.01-1.
#include <gtest/gtest.h>

#include "nn/nn.h"
#include "nn/parallel/pipeline.h"
#include "test_util.h"

namespace headroom {
namespace {

using headroom::testing::all_close;

// Four blocks of Linear + Tanh, then a head: 5 pieces, cut into stages below.
std::vector<std::shared_ptr<nn::Module>> make_blocks(uint64_t seed, int64_t width = 24) {
  manual_seed(seed);
  std::vector<std::shared_ptr<nn::Module>> blocks;
  int64_t in = 10;
  for (int b = 0; b < 4; ++b) {
    blocks.push_back(std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
        std::make_shared<nn::Linear>(in, width), std::make_shared<nn::ReLU>()}));
    in = width;
  }
  blocks.push_back(std::make_shared<nn::Linear>(width, 3));
  return blocks;
}

// The blocks cut into `k` stages on cpu:0..cpu:k-1 (the head with the last block).
std::vector<nn::PipelineStage> cut(const std::vector<std::shared_ptr<nn::Module>>& blocks, int k) {
  std::vector<std::shared_ptr<nn::Sequential>> parts(static_cast<size_t>(k));
  for (auto& p : parts) p = std::make_shared<nn::Sequential>();
  for (size_t b = 0; b < blocks.size(); ++b) {
    const size_t stage = std::min<size_t>(b * static_cast<size_t>(k) / 4, static_cast<size_t>(k - 1));
    parts[stage]->push_back(blocks[b]);
  }
  std::vector<nn::PipelineStage> stages;
  for (int s = 0; s < k; ++s) {
    parts[static_cast<size_t>(s)]->to(Device::cpu(s));
    stages.push_back({parts[static_cast<size_t>(s)], Device::cpu(s)});
  }
  return stages;
}

std::pair<Tensor, Tensor> batch(int64_t n) {
  manual_seed(77);
  Tensor x = Tensor::randn({n, 10});
  std::vector<int64_t> y(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) y[static_cast<size_t>(i)] = (i * 5) % 3;
  return {x, Tensor::from_vector(y, {n}, DType::i64)};
}

nn::PipelineOptions with(nn::PipelineSchedule schedule, bool concurrent = true) {
  nn::PipelineOptions o;
  o.schedule = schedule;
  o.concurrent = concurrent;
  return o;
}

nn::Pipeline::LossFn ce() {
  return [](const Tensor& out, const Tensor& t) { return cross_entropy(out, t); };
}

TEST(Pipeline, SchedulesOrderEveryForwardBeforeItsBackward) {
  for (auto sched : {nn::PipelineSchedule::gpipe, nn::PipelineSchedule::one_f_one_b})
    for (int64_t K : {1, 2, 4})
      for (int64_t M : {1, 3, 8})
        for (int64_t k = 0; k < K; ++k) {
          const auto order = nn::Pipeline::stage_order(sched, k, K, M);
          ASSERT_EQ(order.size(), static_cast<size_t>(2 * M));
          int64_t in_flight = 0, most = 0;
          std::vector<int> seen(static_cast<size_t>(M), 0);
          for (int64_t op : order) {
            const int64_t i = (op > 0 ? op : -op) - 1;
            if (op > 0) {
              EXPECT_EQ(seen[static_cast<size_t>(i)], 0);
              seen[static_cast<size_t>(i)] = 1;
              most = std::max(most, ++in_flight);
            } else {
              EXPECT_EQ(seen[static_cast<size_t>(i)], 1) << "a backward before its forward";
              seen[static_cast<size_t>(i)] = 2;
              --in_flight;
            }
          }
          // Note [pipeline schedules]: GPipe holds all M; 1F1B at most K - k.
          EXPECT_EQ(most, sched == nn::PipelineSchedule::gpipe ? M : std::min(K - k, M));
        }
  EXPECT_EQ(nn::parse_pipeline_schedule("1f1b"), nn::PipelineSchedule::one_f_one_b);
  EXPECT_THROW_WITH(nn::parse_pipeline_schedule("zigzag", "--schedule"), ValueError, "--schedule: 'zigzag'");
}

TEST(Pipeline, SameLossAndGradientsAsTheUnsplitModel) {
  auto [x, y] = batch(16);
  auto whole = make_blocks(3);
  nn::Sequential reference(whole);
  Tensor ref_loss = cross_entropy(reference(x), y);
  ref_loss.backward();
  const auto ref_params = reference.parameters();
  for (auto sched : {nn::PipelineSchedule::gpipe, nn::PipelineSchedule::one_f_one_b})
    for (int K : {2, 4})
      for (int64_t M : {1, 4, 8}) {
        nn::Pipeline pipe(cut(make_blocks(3), K), with(sched));
        const double loss = pipe.run(x, y, M, ce());
        const std::string what = str_cat(nn::pipeline_schedule_name(sched), " K=", K, " M=", M);
        EXPECT_NEAR(loss, ref_loss.item<double>(), 1e-6) << what;
        const auto params = pipe.parameters();
        ASSERT_EQ(params.size(), ref_params.size());
        for (size_t i = 0; i < params.size(); ++i) {
          ASSERT_TRUE(params[i].grad().defined()) << what << " parameter " << i;
          EXPECT_TRUE(all_close(params[i].grad().to(Device::cpu()), ref_params[i].grad(), 1e-6, 1e-5))
              << what << " parameter " << i;
        }
        EXPECT_EQ(pipe.last_stats().most_in_flight[0],
                  sched == nn::PipelineSchedule::gpipe ? M : std::min<int64_t>(K, M))
            << what;
      }
}

TEST(Pipeline, ConcurrentAndOneThreadAreBitIdenticalAndCheckpointingToo) {
  auto [x, y] = batch(12);
  std::vector<std::vector<Tensor>> grads;
  for (int mode = 0; mode < 3; ++mode) {
    auto stages = cut(make_blocks(5), 3);
    if (mode == 2)
      for (auto& s : stages) s.checkpoint = true;
    nn::Pipeline pipe(stages, with(nn::PipelineSchedule::one_f_one_b, mode != 1));
    pipe.run(x, y, 4, ce());
    std::vector<Tensor> g;
    for (const Tensor& p : pipe.parameters()) g.push_back(p.grad().to(Device::cpu()));
    grads.push_back(g);
  }
  for (int mode = 1; mode < 3; ++mode)
    for (size_t i = 0; i < grads[0].size(); ++i)
      EXPECT_TRUE(all_close(grads[static_cast<size_t>(mode)][i], grads[0][i], 0, 0))
          << "mode " << mode << " param " << i;
}

TEST(Pipeline, StageZeroHoldsKMicroBatchesUnder1F1BAndMUnderGPipe) {
  auto [x, y] = batch(32);
  const int K = 4;
  const int64_t M = 8;
  int64_t peak[2] = {0, 0};
  for (int s = 0; s < 2; ++s) {
    auto stages = cut(make_blocks(9, 256), K);
    CachingAllocator& a0 = caching_allocator(Device::cpu(0));
    a0.empty_cache();
    const int64_t base = a0.stats().category(MemoryCategory::activation).current;
    a0.reset_peak_stats();
    nn::Pipeline pipe(stages, with(s == 0 ? nn::PipelineSchedule::gpipe : nn::PipelineSchedule::one_f_one_b));
    pipe.run(x, y, M, ce());
    peak[s] = a0.stats().category(MemoryCategory::activation).peak - base;
  }
  // Stage 0 keeps the same activations per micro-batch under both: GPipe M of them, 1F1B K.
  ASSERT_GT(peak[1], 0);
  const double ratio = static_cast<double>(peak[0]) / static_cast<double>(peak[1]);
  EXPECT_NEAR(ratio, static_cast<double>(M) / K, 0.05 * M / K) << "GPipe " << peak[0] << " B, 1F1B " << peak[1] << " B";
}

TEST(Pipeline, APerDeviceLimitTheUnsplitModelExceedsIsMetBySplitting) {
  auto [x, y] = batch(8);
  const size_t limit = size_t{3} << 20;  // 3 MiB a device; the weights and their gradients need 3.7 MiB
  {
    nn::Sequential whole(make_blocks(11, 400));
    caching_allocator(Device::cpu(0)).set_memory_limit(limit);
    EXPECT_THROW(cross_entropy(whole(x), y).backward(), OutOfMemoryError);
    caching_allocator(Device::cpu(0)).set_memory_limit(0);
  }
  caching_allocator(Device::cpu(0)).empty_cache();
  {
    nn::Pipeline pipe(cut(make_blocks(11, 400), 4));
    for (int d = 0; d < 4; ++d) {
      caching_allocator(Device::cpu(d)).empty_cache();
      caching_allocator(Device::cpu(d)).set_memory_limit(limit);
      caching_allocator(Device::cpu(d)).reset_peak_stats();
    }
    EXPECT_NO_THROW(pipe.run(x, y, 2, ce()));
    for (int d = 0; d < 4; ++d) {
      EXPECT_LE(caching_allocator(Device::cpu(d)).stats().reserved_bytes.peak, static_cast<int64_t>(limit));
      caching_allocator(Device::cpu(d)).set_memory_limit(0);
    }
  }
}

TEST(Pipeline, AStageThatRunsOutOfMemoryEndsTheStepOnEveryStage) {
  auto [x, y] = batch(16);
  nn::Pipeline pipe(cut(make_blocks(13), 4));
  CachingAllocator& a2 = caching_allocator(Device::cpu(2));
  a2.inject_fault(FaultKind::allocation, 5);
  EXPECT_THROW(pipe.run(x, y, 4, ce()), OutOfMemoryError);
  a2.clear_fault();
  // The pipeline is usable again.
  for (const Tensor& p : pipe.parameters()) p.zero_grad();
  EXPECT_NO_THROW(pipe.run(x, y, 4, ce()));
}

}  // namespace
}  // namespace headroom
