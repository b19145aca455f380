// --leak-check in the examples (engine/leak_check.h): a clean training run reports no growth
// over all its steps, on gpt_fortunes's own loop and on the shared loop of the Fashion-MNIST
// examples.
#include <filesystem>

#include "nn/data/fashion_mnist.h"
#include "program_runner.h"

namespace {

using program_runner::run_program;
using program_runner::RunResult;

std::string binary(const std::string& name) { return std::string(HEADROOM_BINARY_DIR) + "/" + name; }

TEST(LeakCheckExample, GptFortunesTrainsWithoutGrowth) {
  if (!std::filesystem::is_directory("/usr/share/games/fortunes")) GTEST_SKIP() << "fortunes not installed";
  RunResult r =
      run_program(binary("gpt_fortunes"), "--steps 30 --eval-every 10 --eval-batches 1 --sample-chars 0 --leak-check");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("leak check: no growth over 30 steps"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("memory grew"), std::string::npos) << r.output;
}

TEST(LeakCheckExample, TheMlpTrainsWithoutGrowth) {
  if (!std::filesystem::is_directory(headroom::data::kFashionMnistDir)) GTEST_SKIP() << "Fashion-MNIST not installed";
  RunResult r = run_program(binary("mlp_fashion_mnist"), "--epochs 1 --train-limit 2048 --batch-size 128 --leak-check");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("leak check: no growth over 16 steps"), std::string::npos) << r.output;
}

}  // namespace
