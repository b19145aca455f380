// --memory-budget / --plan in the example programs (optim/plan.h): the plan is made before the
// first step, its choice runs to the end in the budget, the training-step peaks it predicted are
// what the run measured (gpt_fortunes: the whole run is training steps and one validation), and a
// budget nothing fits is a clear error with exit status 1, not a crash mid-run.
#include <regex>

#include "nn/data/fashion_mnist.h"
#include "program_runner.h"

namespace {

using program_runner::run_program;
using program_runner::RunResult;

std::string binary(const std::string& name) { return std::string(HEADROOM_BINARY_DIR) + "/" + name; }

TEST(PlanExample, PlanWithoutBudgetExitsNamingTheFlag) {
  RunResult r = run_program(binary("mlp_fashion_mnist"), "--plan --epochs 1 --train-limit 256");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("--plan needs --memory-budget"), std::string::npos) << r.output;
  r = run_program(binary("mlp_fashion_mnist"), "--plan --memory-budget lots");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--memory-budget"), std::string::npos) << r.output;
}

TEST(PlanExample, MlpChoosesAMixThatTrainsInTheBudget) {
  if (!std::filesystem::is_directory(headroom::data::kFashionMnistDir)) GTEST_SKIP() << "Fashion-MNIST not installed";
  RunResult r = run_program(binary("mlp_fashion_mnist"), "--epochs 1 --train-limit 2048 --memory-budget 8MiB --plan");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("plan: 96 mixes for a batch of 128 in 8.00 MiB on cpu"), std::string::npos) << r.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m, std::regex(R"(plan: chose (f32|f16|bf16) ckpt-(\w+) mb(\d+))")))
      << r.output;
  EXPECT_NE(r.output.find("(limit 8.00 MiB)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("test accuracy: "), std::string::npos) << r.output;

  r = run_program(binary("mlp_fashion_mnist"), "--epochs 1 --train-limit 256 --memory-budget 3MiB --plan");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("--plan: none of the 96 mixes planned fits 3.00 MiB for a batch of 128"), std::string::npos)
      << r.output;
}

TEST(PlanExample, GptPredictionIsTheRunsPeak) {
  if (!std::filesystem::is_directory("/usr/share/games/fortunes")) GTEST_SKIP() << "fortunes not installed";
  RunResult r = run_program(binary("gpt_fortunes"),
                            "--steps 3 --eval-every 3 --eval-batches 1 --sample-chars 0 --memory-budget 64MiB --plan");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      r.output, m,
      std::regex(R"(plan check: predicted peak allocated (.+), reserved (.+); measured over the run (.+), (.+)\n)")))
      << r.output;
  EXPECT_EQ(m[1].str(), m[3].str()) << r.output;
  EXPECT_EQ(m[2].str(), m[4].str()) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex(R"(plan: chose f32 (naive|fused) ckpt-\w+ mb1)"))) << r.output;
}

TEST(PlanExample, OutOfMemoryReportGainsAPredictedRemedy) {
  if (!std::filesystem::is_directory(headroom::data::kFashionMnistDir)) GTEST_SKIP() << "Fashion-MNIST not installed";
  RunResult r =
      run_program(binary("cnn_fashion_mnist"), "--epochs 1 --batch-size 1024 --memory-limit 96MiB --train-limit 2048");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("error: out of memory on cpu"), std::string::npos) << r.output;
  EXPECT_TRUE(std::regex_search(
      r.output, std::regex(R"(predicted by meta execution: the mix with the fewest flops that fits 96.00 MiB is )"
                           R"(--precision (f32|f16|bf16) --checkpoint \w+ --micro-batches \d+, peaking at)")))
      << r.output;
}

TEST(PlanExample, GptRemedyNamesOnlyFlagsItHas) {
  if (!std::filesystem::is_directory("/usr/share/games/fortunes")) GTEST_SKIP() << "fortunes not installed";
  RunResult r = run_program(binary("gpt_fortunes"), "--steps 3 --sample-chars 0 --memory-limit 40MiB");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  const size_t at = r.output.find("predicted by meta execution: ");
  ASSERT_NE(at, std::string::npos) << r.output;
  const std::string line = r.output.substr(at, r.output.find('\n', at) - at);
  EXPECT_EQ(line.find("--precision"), std::string::npos) << line;
  EXPECT_EQ(line.find("--micro-batches"), std::string::npos) << line;
}

}  // namespace
