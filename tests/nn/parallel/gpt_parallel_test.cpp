// A GPT cut into pipeline stages and split for tensor parallelism (nn/parallel/gpt_parallel.h)
// over cpu devices: the same loss and gradients as the unsplit GPT, the tied embedding and head
// getting the whole gradient on both stages (Note [tied weights across stages]), and the copies
// staying equal through optimizer steps.
//
// Tolerance: as pipeline_test.cpp and tensor_parallel_test.cpp (the same f32 terms summed in
// another order): 1e-5 relative plus 1e-6 absolute; the loss within 1e-5.
#include <gtest/gtest.h>

#include <mutex>

#include "dist/local_group.h"
#include "nn/nn.h"
#include "nn/parallel/gpt_parallel.h"
#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

using headroom::testing::all_close;

nn::GPTConfig tiny() {
  nn::GPTConfig c;
  c.vocab_size = 40;
  c.block_size = 8;
  c.n_layer = 4;
  c.n_head = 4;
  c.n_embd = 16;
  return c;
}

std::pair<Tensor, Tensor> tokens() {
  std::vector<int64_t> x(6 * 8), y(6 * 8);
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = static_cast<int64_t>((i * 7) % 40);
    y[i] = static_cast<int64_t>((i * 11 + 3) % 40);
  }
  return {Tensor::from_vector(x, {6, 8}, DType::i64), Tensor::from_vector(y, {6, 8}, DType::i64)};
}

std::vector<Device> devices(int n) {
  std::vector<Device> d;
  for (int i = 0; i < n; ++i) d.push_back(Device::cpu(i));
  return d;
}

TEST(GPTPipeline, StagesGiveTheUnsplitLossAndGradients) {
  auto [x, y] = tokens();
  manual_seed(4);
  nn::GPT reference(tiny());
  Tensor ref_loss = reference.loss(x, y);
  ref_loss.backward();
  const auto want = reference.named_parameters();
  for (int k : {1, 2, 4})
    for (auto schedule : {nn::PipelineSchedule::gpipe, nn::PipelineSchedule::one_f_one_b}) {
      manual_seed(4);
      nn::GPT model(tiny());
      auto stages = nn::GPTStage::split(model, devices(k));
      nn::PipelineOptions o;
      o.schedule = schedule;
      nn::Pipeline pipe(nn::GPTStage::pipeline_stages(stages), o);
      const double loss = pipe.run(x, y, 3, nn::GPTStage::loss_fn(stages));
      nn::GPTStage::tie_gradients(stages);
      const std::string what = str_cat("K=", k, " ", nn::pipeline_schedule_name(schedule));
      EXPECT_NEAR(loss, ref_loss.item<double>(), 1e-5) << what;
      // Every parameter of the unsplit model, found in its stage under the same name.
      size_t found = 0;
      for (const auto& st : stages)
        for (const auto& [name, p] : st->named_parameters()) {
          const std::string key = name == "head" ? "wte.weight" : name;
          for (const auto& [wn, wp] : want)
            if (wn == key) {
              ++found;
              EXPECT_TRUE(all_close(p.grad().to(Device::cpu()), wp.grad(), 1e-6, 1e-5)) << what << " " << name;
            }
        }
      EXPECT_EQ(found, want.size() + (k > 1 ? 1 : 0)) << what;
    }
}

TEST(GPTPipeline, TheTiedCopiesStayEqualThroughSteps) {
  auto [x, y] = tokens();
  manual_seed(9);
  nn::GPT model(tiny());
  auto stages = nn::GPTStage::split(model, devices(2));
  nn::Pipeline pipe(nn::GPTStage::pipeline_stages(stages));
  optim::AdamW opt(pipe.parameters(), 1e-2);
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    pipe.run(x, y, 2, nn::GPTStage::loss_fn(stages));
    nn::GPTStage::tie_gradients(stages);
    opt.step();
  }
  EXPECT_TRUE(all_close(stages.front()->wte->weight, stages.back()->head.to(Device::cpu()), 0, 0));
  // The stages' state joined on one device loads into a whole GPT.
  manual_seed(1);
  nn::GPT whole(tiny());
  whole.load_state_dict(nn::GPTStage::state_dict_on(stages, Device::cpu()));
  EXPECT_TRUE(all_close(whole.blocks[3]->mlp->c_fc->weight,
                        stages.back()->blocks.back()->mlp->c_fc->weight.to(Device::cpu()), 0, 0));
  EXPECT_EQ(stages.back()->head.device(), Device::cpu(1));
  manual_seed(9);
  nn::GPT too_small(tiny());
  EXPECT_THROW_WITH(nn::GPTStage::split(too_small, devices(5)), ValueError, "5 stages for 4 blocks");
}

TEST(GPTPipeline, ClippingCountsTheTiedWeightOnce) {
  auto [x, y] = tokens();
  manual_seed(4);
  nn::GPT reference(tiny());
  reference.loss(x, y).backward();
  const double want = optim::clip_grad_norm_(reference.parameters(), 0.1);
  manual_seed(4);
  nn::GPT model(tiny());
  auto stages = nn::GPTStage::split(model, devices(2));
  nn::Pipeline pipe(nn::GPTStage::pipeline_stages(stages));
  pipe.run(x, y, 2, nn::GPTStage::loss_fn(stages));
  nn::GPTStage::tie_gradients(stages);
  EXPECT_NEAR(optim::clip_grad_norm_(stages, 0.1), want, 1e-5 * want);
  EXPECT_TRUE(all_close(stages.back()->head.grad().to(Device::cpu()), reference.wte->weight.grad(), 1e-6, 1e-5));
  EXPECT_TRUE(all_close(stages.front()->wte->weight.grad(), reference.wte->weight.grad(), 1e-6, 1e-5));
}

TEST(GPTTensorParallel, ClippingAndTheUnsplitStateDict) {
  auto [x, y] = tokens();
  manual_seed(12);
  nn::GPT reference(tiny());
  reference.loss(x, y).backward();
  const double want = optim::clip_grad_norm_(reference.parameters(), 0.1);
  std::vector<std::shared_ptr<nn::TensorParallelGPT>> ranks(2);
  std::vector<double> norms(2);
  dist::run_on_devices(devices(2), [&](int r, dist::ProcessGroup& g) {
    ranks[static_cast<size_t>(r)] = nn::TensorParallelGPT::from(reference, g, Device::cpu(r));
    ranks[static_cast<size_t>(r)]->loss(x.to(Device::cpu(r)), y.to(Device::cpu(r))).backward();
    norms[static_cast<size_t>(r)] = optim::clip_grad_norm_(*ranks[static_cast<size_t>(r)], 0.1, g);
  });
  EXPECT_NEAR(norms[0], want, 1e-5 * want);
  EXPECT_EQ(norms[0], norms[1]);
  manual_seed(77);
  nn::GPT whole(tiny());
  whole.load_state_dict(nn::TensorParallelGPT::unsplit_state_dict(ranks, Device::cpu()));
  const auto got = whole.named_parameters(), want_p = reference.named_parameters();
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(all_close(got[i].second, want_p[i].second, 0, 0)) << got[i].first;
  ranks.clear();  // their groups ended with run_on_devices
}

TEST(GPTTensorParallel, TheSplitGptGivesTheUnsplitLossAndGradients) {
  auto [x, y] = tokens();
  manual_seed(12);
  nn::GPT reference(tiny());
  Tensor ref_loss = reference.loss(x, y);
  ref_loss.backward();
  for (int t : {2, 4}) {
    std::mutex m;
    std::vector<std::string> failures;
    dist::run_on_devices(devices(t), [&](int r, dist::ProcessGroup& g) {
      const Device d = Device::cpu(r);
      auto tp = nn::TensorParallelGPT::from(reference, g, d);
      Tensor loss = tp->loss(x.to(d), y.to(d));
      loss.backward();
      const int64_t local = 16 / t;
      std::vector<std::pair<std::string, bool>> checks = {
          {"loss", std::abs(loss.item<double>() - ref_loss.item<double>()) < 1e-5},
          {"wte (tied) gradient",
           bool(all_close(tp->wte->weight.grad().to(Device::cpu()), reference.wte->weight.grad(), 1e-6, 1e-5))},
          {"ln_f gradient",
           bool(all_close(tp->ln_f->weight.grad().to(Device::cpu()), reference.ln_f->weight.grad(), 1e-6, 1e-5))},
          {"block 3 c_proj columns",
           bool(all_close(tp->blocks[3]->attn->c_proj->weight.grad().to(Device::cpu()),
                          reference.blocks[3]->attn->c_proj->weight.grad().slice(1, r * local, (r + 1) * local), 1e-6,
                          1e-5))},
          {"1/T of the block matrices",
           tp->blocks[0]->mlp->fc->weight.numel() * t == reference.blocks[0]->mlp->c_fc->weight.numel()},
      };
      std::lock_guard<std::mutex> lock(m);
      for (const auto& [what, ok] : checks)
        if (!ok) failures.push_back(str_cat("T=", t, " rank ", r, ": ", what));
    });
    for (const auto& f : failures) ADD_FAILURE() << f;
  }
}

}  // namespace
}  // namespace headroom
