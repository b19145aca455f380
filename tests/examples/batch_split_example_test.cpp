// --micro-batches in the example programs, run as a user would: a fixed split prints its
// micro-batch size, a bad value exits 2 naming the flag, and the issue's check -- under a memory
// limit that stops the plain CNN at --batch-size 1024 with an out-of-memory error,
// --micro-batches auto splits the batch and trains it for an epoch to at least 0.80 test
// accuracy (about 45 s on 2 cores), staying under the limit.
#include <regex>

#include "nn/data/fashion_mnist.h"
#include "program_runner.h"

namespace {

using program_runner::run_program;
using program_runner::RunResult;

std::string binary(const std::string& name) { return std::string(HEADROOM_BINARY_DIR) + "/" + name; }

double test_accuracy(const RunResult& r) {
  std::smatch m;
  if (!std::regex_search(r.output, m, std::regex(R"(\ntest accuracy: (0\.\d{4}|1\.0000)\n)"))) {
    ADD_FAILURE() << "no accuracy line in:\n" << r.output;
    return 0;
  }
  return std::stod(m[1].str());
}

TEST(BatchSplitExample, BadMicroBatchesExitsWith2NamingTheFlag) {
  for (const char* value : {"0", "-2", "half"}) {
    RunResult r = run_program(binary("mlp_fashion_mnist"), std::string("--micro-batches ") + value);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("--micro-batches"), std::string::npos) << r.output;
  }
}

TEST(BatchSplitExample, FixedSplitPrintsItsMicroBatchSize) {
  if (!std::filesystem::is_directory(headroom::data::kFashionMnistDir)) GTEST_SKIP() << "Fashion-MNIST not installed";
  RunResult r = run_program(binary("mlp_fashion_mnist"), "--epochs 1 --train-limit 1024 --micro-batches 3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("batch splitting (3): micro-batches of 43 samples (3 per batch of 128), 0 out-of-memory "
                          "errors recovered"),
            std::string::npos)
      << r.output;
  EXPECT_GT(test_accuracy(r), 0.5);
  r = run_program(binary("cnn_fashion_mnist"), "--epochs 1 --train-limit 512 --group-norm --micro-batches 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("GroupNorm(8, 16)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("micro-batches of 64 samples (2 per batch of 128)"), std::string::npos) << r.output;
}

TEST(BatchSplitExample, AutoTrainsTheCnnAtBatch1024UnderALimitThatStopsThePlainRun) {
  if (!std::filesystem::is_directory(headroom::data::kFashionMnistDir)) GTEST_SKIP() << "Fashion-MNIST not installed";
  const std::string args = "--epochs 1 --batch-size 1024 --memory-limit 96MiB";
  RunResult plain = run_program(binary("cnn_fashion_mnist"), args + " --train-limit 2048");
  EXPECT_EQ(plain.exit_code, 1) << plain.output;
  EXPECT_NE(plain.output.find("error: out of memory on cpu"), std::string::npos) << plain.output;

  RunResult r = run_program(binary("cnn_fashion_mnist"), args + " --micro-batches auto");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("batch splitting: micro-batch of 1024 ran out of memory"), std::string::npos) << r.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      r.output, m,
      std::regex(
          R"(batch splitting \(auto\): micro-batches of (\d+) samples \((\d+) per batch of 1024\), (\d+) out-of-memory errors recovered)")))
      << r.output;
  EXPECT_LT(std::stoi(m[1].str()), 1024);
  EXPECT_GE(std::stoi(m[3].str()), 1);
  // Reserved memory stayed under the limit (the allocator enforces it; the line shows it).
  EXPECT_TRUE(std::regex_search(r.output, std::regex(R"(reserved [0-9.]+ MiB \(limit 96.00 MiB\))"))) << r.output;
  EXPECT_GE(test_accuracy(r), 0.80);
}

}  // namespace
