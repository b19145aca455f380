// Meta execution of the several-device runners (Note [meta in worker threads]): a pipeline (one
// stage after another), a tensor-parallel GPT (a thread per rank) and DataParallel (a thread per
// replica) run inside a MetaScope predict each device's peak allocated and reserved bytes, and
// every category's peak, exactly as the real run measures them -- the prediction headroom-plan
// and headroom-bench --predict make for these techniques; a pipeline whose stages run on
// threads, within a few percent.
#include <gtest/gtest.h>

#include "dist/local_group.h"
#include "engine/meta.h"
#include "nn/nn.h"
#include "nn/parallel/data_parallel.h"
#include "nn/parallel/gpt_parallel.h"
#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

nn::GPTConfig tiny() {
  nn::GPTConfig c;
  c.vocab_size = 64;
  c.block_size = 16;
  c.n_layer = 4;
  c.n_head = 4;
  c.n_embd = 32;
  return c;
}

std::vector<Device> devices(int n) {
  std::vector<Device> d;
  for (int i = 0; i < n; ++i) d.push_back(Device::cpu(i));
  return d;
}

// Two training steps of `kind` on n devices; each device's allocator stats after them, from the
// real allocators or, under a MetaScope, from the scope's.
std::vector<MemoryStats> run(const std::string& kind, int n, bool meta) {
  std::optional<MetaScope> scope;
  for (const Device& d : devices(n)) {
    caching_allocator(d).empty_cache();
    caching_allocator(d).reset_peak_stats();
  }
  if (meta) scope.emplace();
  auto alloc = [&](Device d) -> CachingAllocator& { return meta ? scope->allocator(d) : caching_allocator(d); };
  {
    manual_seed(3);
    const TensorOptions idx = TensorOptions().dtype(DType::i64);
    Tensor x = Tensor::zeros({8, 16}, idx), y = Tensor::ones({8, 16}, idx);
    if (kind == "pipeline" || kind == "pipeline-threads") {
      nn::GPT model(tiny());
      auto stages = nn::GPTStage::split(model, devices(n));
      nn::PipelineOptions o;
      o.schedule = nn::PipelineSchedule::gpipe;
      o.concurrent = kind == "pipeline-threads";
      nn::Pipeline pipe(nn::GPTStage::pipeline_stages(stages), o);
      optim::AdamW opt(pipe.parameters(), 1e-3);
      for (int s = 0; s < 2; ++s) {
        opt.zero_grad();
        pipe.run(x, y, 4, nn::GPTStage::loss_fn(stages));
        nn::GPTStage::tie_gradients(stages);
        opt.step();
      }
    } else if (kind == "tensor") {
      nn::GPT model(tiny());
      auto groups = dist::make_local_groups(devices(n));
      std::vector<std::shared_ptr<nn::TensorParallelGPT>> ranks;
      std::vector<std::unique_ptr<optim::AdamW>> opts;
      for (int r = 0; r < n; ++r) {
        ranks.push_back(nn::TensorParallelGPT::from(model, *groups[static_cast<size_t>(r)], Device::cpu(r)));
        opts.push_back(std::make_unique<optim::AdamW>(ranks.back()->parameters(), 1e-3));
        // Agreeing under meta agrees (no values to read): the prediction is of the step that commits.
        opts.back()->set_step_agreement(dist::step_agreement(*groups[static_cast<size_t>(r)], Device::cpu(r)));
      }
      for (int s = 0; s < 2; ++s)
        dist::run_on_groups(groups, [&](int r, dist::ProcessGroup&) {
          const size_t i = static_cast<size_t>(r);
          opts[i]->zero_grad();
          ranks[i]->loss(x.to(Device::cpu(r)), y.to(Device::cpu(r))).backward();
          opts[i]->step();
        });
    } else {
      auto make = [] {
        return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
            std::make_shared<nn::Linear>(16, 64), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(64, 4)});
      };
      nn::DataParallel dp(make(), devices(n), make);
      optim::SGD opt(dp.parameters(), 0.1, 0.9);
      Tensor in = Tensor::zeros({24, 16}), labels = Tensor::zeros({24}, idx);
      for (int s = 0; s < 2; ++s) {
        opt.zero_grad();
        cross_entropy(dp(in), labels).backward();
        opt.step();
      }
    }
  }
  std::vector<MemoryStats> out;
  for (const Device& d : devices(n)) out.push_back(alloc(d).stats());
  return out;
}

TEST(ModelParallelMeta, EveryDevicesPeakIsPredictedExactly) {
  for (const auto& [kind, n] : std::vector<std::pair<std::string, int>>{
           {"pipeline", 2}, {"pipeline", 4}, {"tensor", 1}, {"tensor", 2}, {"tensor", 4}, {"data", 3}}) {
    const std::vector<MemoryStats> real = run(kind, n, false);
    const std::vector<MemoryStats> predicted = run(kind, n, true);
    for (int d = 0; d < n; ++d) {
      const size_t i = static_cast<size_t>(d);
      EXPECT_GT(real[i].allocated_bytes.peak, 0) << kind << " " << n << " cpu:" << d;
      EXPECT_EQ(predicted[i].allocated_bytes.peak, real[i].allocated_bytes.peak) << kind << " " << n << " cpu:" << d;
      EXPECT_EQ(predicted[i].reserved_bytes.peak, real[i].reserved_bytes.peak) << kind << " " << n << " cpu:" << d;
      for (int c = 0; c < kNumMemoryCategories; ++c)
        EXPECT_EQ(predicted[i].category(static_cast<MemoryCategory>(c)).peak,
                  real[i].category(static_cast<MemoryCategory>(c)).peak)
            << kind << " " << n << " cpu:" << d << " " << category_name(static_cast<MemoryCategory>(c));
    }
  }
}

// Stages on threads of their own: an activation (or its gradient) is copied onto the next
// device by the sending stage's thread, at a moment the threads' timing decides relative to the
// receiving stage's own work, so a device's peak can differ from the cooperative order the
// prediction runs by what those copies hold: up to 2.5% in the runs seen on the 2-core build
// machine (2026-12-07); the test allows 5%.
TEST(ModelParallelMeta, AConcurrentPipelineIsPredictedWithinAFewPercent) {
  for (int n : {2, 4}) {
    const std::vector<MemoryStats> predicted = run("pipeline-threads", n, true);
    for (int trial = 0; trial < 3; ++trial) {
      const std::vector<MemoryStats> real = run("pipeline-threads", n, false);
      for (int d = 0; d < n; ++d) {
        const auto p = static_cast<double>(predicted[static_cast<size_t>(d)].allocated_bytes.peak);
        const auto r = static_cast<double>(real[static_cast<size_t>(d)].allocated_bytes.peak);
        EXPECT_NEAR(p / r, 1.0, 0.05) << n << " stages, cpu:" << d;
      }
    }
  }
}

}  // namespace
}  // namespace headroom
