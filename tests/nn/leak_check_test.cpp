// The leak check (engine/leak_check.h, Note [leak check]): the classic leak -- every step's loss
// kept with its graph (here a metric computed without no_grad and appended to a history), whose
// saved activations pile up -- is found and named by the ops that made them; a clean training
// loop reports nothing over 100 steps.
#include <gtest/gtest.h>

#include "engine/leak_check.h"
#include "nn/nn.h"
#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

struct Loop {
  std::shared_ptr<nn::Sequential> model;
  std::unique_ptr<optim::SGD> opt;
  Tensor x, y;
  Loop() {
    manual_seed(4);
    model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
        std::make_shared<nn::Linear>(32, 256), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(256, 4)});
    opt = std::make_unique<optim::SGD>(model->parameters(), 0.01, 0.9);
    x = Tensor::randn({64, 32});
    std::vector<int64_t> labels(64);
    for (size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<int64_t>(i % 4);
    y = Tensor::from_vector(labels, {64}, DType::i64);
  }
  Tensor step() {
    opt->zero_grad();
    Tensor loss = cross_entropy((*model)(x), y);
    loss.backward();
    opt->step();
    return loss;
  }
};

TEST(LeakCheck, TheClassicLeakIsFoundAndNamed) {
  Loop loop;
  std::vector<Tensor> history;  // the leak: each step's metric kept with its graph
  LeakCheck check(Device::cpu());
  LeakReport report;
  int found_at = 0;
  for (int step = 1; step <= 10 && !report.leaking; ++step) {
    (void)loop.step();
    history.push_back(cross_entropy((*loop.model)(loop.x), loop.y));  // no NoGradGuard: the graph stays
    report = check.step();
    if (report.leaking) found_at = step;
  }
  ASSERT_TRUE(report.leaking) << "not found in 10 steps";
  std::cout << report.str();  // what a user reads
  // warm-up 2, then 3 growing steps in a row
  EXPECT_EQ(found_at, 5);
  EXPECT_EQ(report.growing_steps, 3);
  // Each kept graph saves relu's output [64, 256] f32 (64 KiB) and more; 3 steps' worth grew.
  EXPECT_GE(report.growth_bytes, 3 * 64 * 256 * 4);
  ASSERT_FALSE(report.groups.empty());
  bool relu = false;
  for (const LeakGroup& g : report.groups)
    if (g.site == "relu" && g.category == MemoryCategory::activation) {
      relu = true;
      EXPECT_EQ(g.bytes, 2 * 64 * 256 * 4) << "two steps' relu outputs (the last step's is left out)";
      EXPECT_EQ(g.blocks, 2);
    }
  EXPECT_TRUE(relu) << report.str();
  const std::string text = report.str();
  EXPECT_NE(text.find("memory grew 3 steps in a row"), std::string::npos) << text;
  EXPECT_NE(text.find("from relu"), std::string::npos) << text;
  // Letting go of the history ends the growth.
  history.clear();
  EXPECT_FALSE(check.step().leaking);
}

TEST(LeakCheck, ACleanLoopReportsNothingOverAHundredSteps) {
  Loop loop;
  LeakCheck check(Device::cpu());
  double last = 0;
  for (int step = 1; step <= 100; ++step) {
    last = loop.step().item<double>();  // a number, not the tensor with its graph
    const LeakReport r = check.step();
    ASSERT_FALSE(r.leaking) << "step " << step << ": " << r.str();
  }
  EXPECT_LT(last, 1.4);  // it trained
}

TEST(LeakCheck, SitesAreRecordedOnlyWhileACheckIsOpen) {
  CachingAllocator& a = caching_allocator(Device::cpu());
  Tensor w = Tensor::randn({8, 8}).set_requires_grad(true);
  Tensor off = relu(w);
  {
    LeakCheck check(Device::cpu());
    EXPECT_TRUE(a.site_recording());
    Tensor on = relu(w);
    bool found = false;
    for (const SegmentInfo& s : a.snapshot())
      for (const BlockInfo& b : s.blocks)
        if (b.address == reinterpret_cast<uint64_t>(on.raw_data())) found = b.site && std::string(b.site) == "relu";
    EXPECT_TRUE(found);
  }
  EXPECT_FALSE(a.site_recording());
  for (const SegmentInfo& s : a.snapshot())
    for (const BlockInfo& b : s.blocks)
      if (b.address == reinterpret_cast<uint64_t>(off.raw_data())) {
        EXPECT_EQ(b.site, nullptr);
      }
  EXPECT_THROW_WITH(LeakCheck(Device::cpu(), LeakCheckOptions{0, 0, 1}), ValueError, "patience >= 1");
}

}  // namespace
}  // namespace headroom
