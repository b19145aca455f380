// Pipeline and tensor parallelism across processes, for any world size: ctest runs test_nn
// alone (world size 1: one stage, T = 1) and these tests under mpirun -np 2 (label mpi). Each
// rank builds the same unsplit model from the same seed and computes its loss and gradients on
// the whole batch; the split model must give the same loss on every rank and, for the part this
// rank holds, the same gradients.
//
// Tolerance: as in pipeline_test.cpp and tensor_parallel_test.cpp -- micro-batch sums and
// partial products add the same f32 terms in another order: 1e-5 relative plus 1e-6 absolute.
#include <gtest/gtest.h>

#include "dist/process_group.h"
#include "nn/nn.h"
#include "nn/parallel/pipeline.h"
#include "nn/parallel/tensor_parallel.h"
#include "test_util.h"

namespace headroom {
namespace {

using headroom::testing::all_close;

dist::ProcessGroup& world() { return dist::world(); }

// 2 * world Linear + ReLU pieces, then a head on the last rank's stage.
std::vector<std::shared_ptr<nn::Module>> make_pieces(uint64_t seed, int pieces) {
  manual_seed(seed);
  std::vector<std::shared_ptr<nn::Module>> out;
  for (int i = 0; i < pieces; ++i)
    out.push_back(std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
        std::make_shared<nn::Linear>(i == 0 ? 10 : 20, 20), std::make_shared<nn::ReLU>()}));
  out.push_back(std::make_shared<nn::Linear>(20, 4));
  return out;
}

TEST(PipelineAcrossProcesses, OneStagePerRankEqualsTheUnsplitModel) {
  const int K = world().size(), rank = world().rank();
  const int pieces = 2 * K;
  manual_seed(3);
  const int64_t n = 16;
  Tensor x = Tensor::randn({n, 10});
  std::vector<int64_t> labels(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) labels[static_cast<size_t>(i)] = (i * 3) % 4;
  Tensor y = Tensor::from_vector(labels, {n}, DType::i64);

  auto reference = make_pieces(41, pieces);
  nn::Sequential whole(reference);
  Tensor ref_loss = cross_entropy(whole(x), y);
  ref_loss.backward();

  for (auto schedule : {nn::PipelineSchedule::gpipe, nn::PipelineSchedule::one_f_one_b})
    for (int64_t m : {1, 4, 8}) {
      auto mine = make_pieces(41, pieces);
      // Rank r holds pieces 2r and 2r+1 (the last rank the head too).
      auto stage = std::make_shared<nn::Sequential>();
      std::vector<size_t> held{static_cast<size_t>(2 * rank), static_cast<size_t>(2 * rank + 1)};
      if (rank == K - 1) held.push_back(static_cast<size_t>(pieces));
      for (size_t i : held) stage->push_back(mine[i]);
      nn::PipelineOptions o;
      o.schedule = schedule;
      nn::Pipeline pipe({stage, Device::cpu()}, world(), o);
      EXPECT_EQ(pipe.num_stages(), static_cast<size_t>(K));
      const double loss = pipe.run(x, y, m, [](const Tensor& out, const Tensor& t) { return cross_entropy(out, t); });
      const std::string what = str_cat(nn::pipeline_schedule_name(schedule), ", M=", m, ", rank ", rank, " of ", K);
      EXPECT_NEAR(loss, ref_loss.item<double>(), 1e-6) << what;
      for (size_t i : held) {
        const auto got = mine[i]->parameters(), want = reference[i]->parameters();
        for (size_t j = 0; j < got.size(); ++j)
          EXPECT_TRUE(all_close(got[j].grad(), want[j].grad(), 1e-6, 1e-5))
              << what << ", piece " << i << " parameter " << j;
      }
      EXPECT_LE(pipe.last_stats().most_in_flight[0],
                schedule == nn::PipelineSchedule::gpipe ? std::min<int64_t>(m, n) : K - rank)
          << what;
    }
}

TEST(PipelineAcrossProcesses, AStageOnAnotherDeviceTypeThanTheGroupIsRefused) {
  auto stage = std::make_shared<nn::Linear>(2, 2);
  EXPECT_THROW_WITH(nn::Pipeline({stage, Device::cpu()}, *std::make_unique<dist::MetaGroup>(0, 1, DeviceType::cuda)),
                    DeviceError, "moves cuda tensors");
}

TEST(TensorParallelAcrossProcesses, GptBlockEqualsTheUnsplitBlock) {
  const int T = world().size(), r = world().rank();
  nn::GPTConfig cfg;
  cfg.n_embd = 24;
  cfg.n_head = 6;  // divides among 1, 2 and 3 ranks
  cfg.block_size = 8;
  manual_seed(35);
  nn::Block full(cfg);
  Tensor x = Tensor::randn({2, 8, 24}).set_requires_grad(true);
  Tensor ref = full(x);
  sum(ref * ref).backward();

  auto blk = nn::TensorParallelBlock::from(full, world(), Device::cpu());
  Tensor xr = x.detach().set_requires_grad(true);
  Tensor yr = blk->forward(xr);
  sum(yr * yr).backward();
  const int64_t local = 24 / T, hidden = 4 * 24 / T;
  EXPECT_TRUE(all_close(yr, ref, 1e-6, 1e-5)) << "rank " << r;
  EXPECT_TRUE(all_close(xr.grad(), x.grad(), 1e-6, 1e-5)) << "rank " << r;
  EXPECT_TRUE(all_close(blk->attn->c_proj->weight.grad(),
                        full.attn->c_proj->weight.grad().slice(1, r * local, (r + 1) * local), 1e-6, 1e-5))
      << "rank " << r;
  EXPECT_TRUE(all_close(blk->mlp->fc->weight.grad(),
                        full.mlp->c_fc->weight.grad().slice(0, r * hidden, (r + 1) * hidden), 1e-6, 1e-5))
      << "rank " << r;
  // Each rank holds 1/T of the block's weight matrices.
  EXPECT_EQ(blk->mlp->fc->weight.numel() * T, full.mlp->c_fc->weight.numel());
  EXPECT_EQ(blk->attn->c_attn->weight.numel() * T, full.attn->c_attn->weight.numel());
}

}  // namespace
}  // namespace headroom
