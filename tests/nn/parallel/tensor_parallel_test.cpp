// Tensor parallelism over the cpu devices of one process (nn/parallel/tensor_parallel.h, and the
// in-process groups of dist/local_group.h it runs on): the collectives between devices; a
// tensor-parallel MLP over T = 2 and 4 devices giving the unsplit layer's output and gradients
// (each rank's weight gradients are the matching slices of the unsplit ones); each device
// holding 1/T of the parameters; a rank that fails ending the others' waits.
//
// Tolerance: a row-parallel layer sums T partial products where the unsplit layer sums one
// product over all of in: the same terms in another order, a few f32 ulps (1e-5 relative plus
// 1e-6 absolute).
#include <gtest/gtest.h>

#include <array>
#include <map>
#include <mutex>

#include "dist/local_group.h"
#include "nn/nn.h"
#include "nn/parallel/tensor_parallel.h"
#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

using headroom::testing::all_close;

std::vector<Device> devices(int n) {
  std::vector<Device> d;
  for (int i = 0; i < n; ++i) d.push_back(Device::cpu(i));
  return d;
}

TEST(InProcessGroup, CollectivesBetweenDevices) {
  for (int n : {1, 2, 3}) {
    dist::run_on_devices(devices(n), [n](int r, dist::ProcessGroup& g) {
      const Device d = Device::cpu(r);
      EXPECT_EQ(g.size(), n);
      EXPECT_EQ(g.backend_name(), "local");
      Tensor t = Tensor::full({5}, r + 1, d);
      g.all_reduce(t)->wait();
      EXPECT_EQ(t.to_vector<float>()[4], static_cast<float>(n * (n + 1) / 2));
      g.all_reduce(t, dist::ReduceOp::average)->wait();
      EXPECT_EQ(t.to_vector<float>()[0], static_cast<float>(n * (n + 1) / 2));
      Tensor in = Tensor::arange(0, 4 * n, 1, d), out = Tensor::zeros({4}, d);
      g.reduce_scatter(out, in)->wait();
      EXPECT_EQ(out.to_vector<float>()[1], static_cast<float>(n * (4 * r + 1)));
      Tensor mine = Tensor::full({2}, r, DType::f64).to(d),
             all = Tensor::zeros({2 * n}, TensorOptions().dtype(DType::f64).device(d));
      g.all_gather(all, mine)->wait();
      EXPECT_EQ(all.to_vector<double>()[2 * (n - 1)], n - 1);
      Tensor b = Tensor::full({3}, r == n - 1 ? 9 : 0, d);
      g.broadcast(b, n - 1)->wait();
      EXPECT_EQ(b.to_vector<float>()[2], 9.0f);
      g.barrier()->wait();
      // A tensor on another device than the rank's is refused.
      if (n > 1) {
        EXPECT_THROW(g.all_reduce(Tensor::zeros({1}, Device::cpu((r + 1) % n))), DeviceError);
      }
    });
  }
  EXPECT_THROW_WITH(dist::make_local_groups({Device::cpu(0), Device::cpu(0)}), DeviceError, "listed twice");
}

TEST(InProcessGroup, RanksCallingDifferentCollectivesAreToldSo) {
  EXPECT_THROW_WITH(dist::run_on_devices(devices(2),
                                         [](int r, dist::ProcessGroup& g) {
                                           Tensor t = Tensor::ones({2}, Device::cpu(r));
                                           if (r == 0) g.all_reduce(t)->wait();
                                           else g.broadcast(t, 0)->wait();
                                         }),
                    dist::CommunicationError, "the ranks must call the same collectives in the same order");
}

TEST(InProcessGroup, ARankThatFailsEndsTheOthersWaits) {
  EXPECT_THROW_WITH(dist::run_on_devices(devices(3),
                                         [](int r, dist::ProcessGroup& g) {
                                           if (r == 1) throw ValueError("rank 1 gave up");
                                           Tensor t = Tensor::ones({2}, Device::cpu(r));
                                           g.all_reduce(t)->wait();  // would wait for rank 1 for ever
                                         }),
                    ValueError, "rank 1 gave up");
}

TEST(TensorParallel, MlpOverTDevicesEqualsTheUnsplitLayers) {
  const int64_t C = 12, H = 48, B = 5;
  manual_seed(21);
  nn::Linear fc(C, H), proj(H, C);
  Tensor x = Tensor::randn({B, C}).set_requires_grad(true);
  Tensor ref = proj(gelu(fc(x)));
  sum(ref * ref).backward();
  for (int T : {2, 4}) {
    std::mutex m;
    std::vector<std::string> failures;
    auto check = [&](bool ok, const std::string& what) {
      if (ok) return;
      std::lock_guard<std::mutex> lock(m);
      failures.push_back(str_cat("T=", T, ": ", what));
    };
    dist::run_on_devices(devices(T), [&](int r, dist::ProcessGroup& g) {
      const Device d = Device::cpu(r);
      auto mlp = nn::TensorParallelMLP::from(fc, proj, g, d);
      Tensor xr = x.detach().to(d).set_requires_grad(true);
      Tensor y = mlp->forward(xr);
      sum(y * y).backward();
      const int64_t hl = H / T;
      check(bool(all_close(y.to(Device::cpu()), ref, 1e-6, 1e-5)), str_cat("rank ", r, " output"));
      check(bool(all_close(xr.grad().to(Device::cpu()), x.grad(), 1e-6, 1e-5)), str_cat("rank ", r, " input gradient"));
      check(bool(all_close(mlp->fc->weight.grad().to(Device::cpu()), fc.weight.grad().slice(0, r * hl, (r + 1) * hl),
                           1e-6, 1e-5)),
            str_cat("rank ", r, " fc weight gradient"));
      check(bool(all_close(mlp->fc->bias.grad().to(Device::cpu()), fc.bias.grad().slice(0, r * hl, (r + 1) * hl), 1e-6,
                           1e-5)),
            str_cat("rank ", r, " fc bias gradient"));
      check(bool(all_close(mlp->proj->weight.grad().to(Device::cpu()),
                           proj.weight.grad().slice(1, r * hl, (r + 1) * hl), 1e-6, 1e-5)),
            str_cat("rank ", r, " proj weight gradient"));
      check(bool(all_close(mlp->proj->bias.grad().to(Device::cpu()), proj.bias.grad(), 1e-6, 1e-5)),
            str_cat("rank ", r, " proj bias gradient"));
      // 1/T of the two weight matrices (the row layer's bias stays whole) on each device.
      check(mlp->fc->weight.device() == d && mlp->proj->weight.numel() == C * H / T, str_cat("rank ", r, " shard"));
    });
    for (const auto& f : failures) ADD_FAILURE() << f;
  }
}

TEST(TensorParallel, ShapesThatDoNotDivideAreRefused) {
  dist::run_on_devices(devices(2), [](int r, dist::ProcessGroup& g) {
    EXPECT_THROW_WITH(nn::ColumnParallelLinear(4, 5, g), ShapeError, "5 does not divide among the group's 2 ranks");
    EXPECT_THROW_WITH(nn::RowParallelLinear(7, 4, g), ShapeError, "7 does not divide");
    (void)r;
  });
}

}  // namespace
}  // namespace headroom

namespace headroom {
namespace {

TEST(TensorParallel, GptBlockOverTDevicesEqualsTheUnsplitBlock) {
  nn::GPTConfig cfg;
  cfg.n_embd = 16;
  cfg.n_head = 4;
  cfg.block_size = 8;
  manual_seed(33);
  nn::Block full(cfg);
  Tensor x = Tensor::randn({2, 8, 16}).set_requires_grad(true);
  Tensor ref = full(x);
  sum(ref * ref).backward();
  for (int T : {2, 4}) {
    std::mutex m;
    std::vector<std::string> failures;
    dist::run_on_devices(devices(T), [&](int r, dist::ProcessGroup& g) {
      const Device d = Device::cpu(r);
      auto blk = nn::TensorParallelBlock::from(full, g, d);
      Tensor xr = x.detach().to(d).set_requires_grad(true);
      Tensor y = blk->forward(xr);
      sum(y * y).backward();
      const int64_t local = 16 / T;
      std::vector<std::pair<std::string, bool>> checks = {
          {"output", bool(all_close(y.to(Device::cpu()), ref, 1e-6, 1e-5))},
          {"input gradient", bool(all_close(xr.grad().to(Device::cpu()), x.grad(), 1e-6, 1e-5))},
          {"ln_1 gradient",
           bool(all_close(blk->ln_1->weight.grad().to(Device::cpu()), full.ln_1->weight.grad(), 1e-6, 1e-5))},
          {"q rows of c_attn",
           bool(all_close(blk->attn->c_attn->weight.grad().slice(0, 0, local).to(Device::cpu()),
                          full.attn->c_attn->weight.grad().slice(0, r * local, (r + 1) * local), 1e-6, 1e-5))},
          {"v rows of c_attn",
           bool(all_close(blk->attn->c_attn->weight.grad().slice(0, 2 * local, 3 * local).to(Device::cpu()),
                          full.attn->c_attn->weight.grad().slice(0, 32 + r * local, 32 + (r + 1) * local), 1e-6,
                          1e-5))},
          {"c_proj columns",
           bool(all_close(blk->attn->c_proj->weight.grad().to(Device::cpu()),
                          full.attn->c_proj->weight.grad().slice(1, r * local, (r + 1) * local), 1e-6, 1e-5))},
      };
      std::lock_guard<std::mutex> lock(m);
      for (const auto& [what, ok] : checks)
        if (!ok) failures.push_back(str_cat("T=", T, " rank ", r, ": ", what));
    });
    for (const auto& f : failures) ADD_FAILURE() << f;
  }
}

}  // namespace
}  // namespace headroom

namespace headroom {
namespace {

// Issue 15: tensor parallelism divides each block's parameter, gradient and optimizer bytes by
// T -- measured by each device's allocator. The LayerNorms stay whole on every rank (R below);
// everything else is a 1/T shard. No biases, so that every shard is a multiple of the
// allocator's 512 B rounding and the division is exact.
TEST(TensorParallel, EachDeviceHoldsOneTthOfABlocksParametersGradientsAndOptimizerState) {
  nn::GPTConfig cfg;
  cfg.n_embd = 64;
  cfg.n_head = 4;
  cfg.block_size = 8;
  cfg.bias = false;
  manual_seed(5);
  nn::Block full(cfg);
  const Tensor x = Tensor::randn({2, 8, 64});
  // The LayerNorms' four [64] f32 tensors, 256 B each, rounded to 512 B by the allocator.
  const int64_t replicated = 4 * 512;
  std::map<int, std::array<int64_t, 3>> whole;  // T -> parameter, gradient, optimizer_state on rank 0
  for (int T : {1, 2, 4}) {
    // Measured from here, once every rank is done: a rank's shards are cut from the whole block
    // on cpu:0, so cpu:0 sees the others' passing copies while they run.
    std::vector<MemoryStats> before;
    for (int r = 0; r < T; ++r) before.push_back(caching_allocator(Device::cpu(r)).stats());
    std::vector<std::shared_ptr<nn::TensorParallelBlock>> blocks(static_cast<size_t>(T));
    std::vector<std::unique_ptr<optim::Adam>> opts(static_cast<size_t>(T));
    dist::run_on_devices(devices(T), [&](int r, dist::ProcessGroup& g) {
      const Device d = Device::cpu(r);
      auto& blk = blocks[static_cast<size_t>(r)];
      blk = nn::TensorParallelBlock::from(full, g, d);
      opts[static_cast<size_t>(r)] = std::make_unique<optim::Adam>(blk->parameters(), 1e-3);
      Tensor y = blk->forward(x.to(d));
      sum(y * y).backward();
      opts[static_cast<size_t>(r)]->step();
    });
    std::vector<std::array<int64_t, 3>> per(static_cast<size_t>(T));
    for (int r = 0; r < T; ++r) {
      const MemoryStats after = caching_allocator(Device::cpu(r)).stats();
      auto grew = [&](MemoryCategory c) {
        return after.category(c).current - before[static_cast<size_t>(r)].category(c).current;
      };
      per[static_cast<size_t>(r)] = {grew(MemoryCategory::parameter), grew(MemoryCategory::gradient),
                                     grew(MemoryCategory::optimizer_state)};
    }
    for (int r = 0; r < T; ++r) {
      EXPECT_EQ(per[static_cast<size_t>(r)], per[0]) << "T=" << T << " rank " << r;
    }
    whole[T] = per[0];
  }
  EXPECT_EQ(whole[1][0], 12 * 64 * 64 * 4 + replicated);  // c_attn, c_proj, c_fc, mlp's c_proj: 12 C^2 floats
  const char* names[] = {"parameter", "gradient", "optimizer_state"};
  for (int T : {2, 4})
    for (size_t c = 0; c < 3; ++c) {
      const int64_t rep = c == 2 ? 2 * replicated : replicated;  // Adam: two moments
      EXPECT_EQ((whole[T][c] - rep) * T, whole[1][c] - rep) << names[c] << ", T=" << T;
    }
}

}  // namespace
}  // namespace headroom
