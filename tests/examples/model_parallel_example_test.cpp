// gpt_fortunes split over cpu devices (docs/model-parallel.md): --pipeline K with either
// schedule and --tensor-parallel T train the same model on the same batches as the one-device
// run, so every printed loss agrees with it (to 2e-4: the split adds the same f32 terms in
// another order, and the 4-decimal print can round either way); the end prints each device's
// peak memory and the pipeline's bubble; what cannot run is a clear error.
#include <filesystem>
#include <fstream>
#include <regex>

#include "program_runner.h"

namespace {

using program_runner::run_program;
using program_runner::RunResult;

std::string gpt() { return std::string(HEADROOM_BINARY_DIR) + "/gpt_fortunes"; }

// Every training and validation loss, in order.
std::vector<double> losses(const std::string& output) {
  std::vector<double> out;
  std::regex re(R"((?:step \d+/\d+ loss|validation loss) ([0-9.]+))");
  for (auto it = std::sregex_iterator(output.begin(), output.end(), re); it != std::sregex_iterator(); ++it)
    out.push_back(std::stod((*it)[1].str()));
  return out;
}

TEST(ModelParallelExample, PipelineAndTensorParallelTrainAsOneDevice) {
  if (!std::filesystem::is_directory("/usr/share/games/fortunes")) GTEST_SKIP() << "fortunes not installed";
  const std::string args = " --steps 4 --log-every 1 --eval-every 4 --eval-batches 2 --sample-chars 20";
  RunResult one = run_program(gpt(), args);
  ASSERT_EQ(one.exit_code, 0) << one.output;
  const std::vector<double> want = losses(one.output);
  ASSERT_EQ(want.size(), 5u) << one.output;
  for (const std::string& split : {std::string("--pipeline 3 --schedule gpipe --micro-batches 4"),
                                   std::string("--pipeline 2 --schedule 1f1b --micro-batches 2"),
                                   std::string("--tensor-parallel 2"), std::string("--tensor-parallel 4")}) {
    RunResult r = run_program(gpt(), split + args);
    ASSERT_EQ(r.exit_code, 0) << split << "\n" << r.output;
    const std::vector<double> got = losses(r.output);
    ASSERT_EQ(got.size(), want.size()) << split << "\n" << r.output;
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_NEAR(got[i], want[i], 2e-4) << split << ", loss " << i << "\n" << r.output;
    EXPECT_NE(r.output.find("peak memory per device:"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("  cpu:1: allocated"), std::string::npos) << r.output;
    if (split.find("pipeline") != std::string::npos) {
      EXPECT_TRUE(std::regex_search(r.output, std::regex(R"(bubble [0-9.]+% of the stages' time)"))) << r.output;
    }
  }
}

TEST(ModelParallelExample, TheMemoryReportHasEveryDevice) {
  if (!std::filesystem::is_directory("/usr/share/games/fortunes")) GTEST_SKIP() << "fortunes not installed";
  const std::string dir = ::testing::TempDir() + "/mp-report";
  std::filesystem::remove_all(dir);
  RunResult r = run_program(gpt(),
                            "--pipeline 3 --micro-batches 2 --steps 2 --eval-every 2 --eval-batches 1 "
                            "--sample-chars 0 --memory-report " +
                                dir);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* folder : {"cpu", "cpu_1", "cpu_2"})
    EXPECT_TRUE(std::filesystem::file_size(dir + "/" + folder + "/timeline.html") > 0) << folder;
  std::ifstream in(dir + "/index.html");
  const std::string index((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(index.find("3 devices"), std::string::npos) << index;
  EXPECT_NE(index.find("cpu_2/timeline.html"), std::string::npos) << index;
}

TEST(ModelParallelExample, WhatCannotRunIsAClearError) {
  RunResult r = run_program(gpt(), "--pipeline 2 --tensor-parallel 2 --steps 1");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--pipeline and --tensor-parallel are not supported together"), std::string::npos)
      << r.output;
  r = run_program(gpt(), "--tensor-parallel 3 --steps 1");
  EXPECT_NE(r.output.find("the 4 heads do not divide among the devices"), std::string::npos) << r.output;
  if (!std::filesystem::is_directory("/usr/share/games/fortunes")) return;
  r = run_program(gpt(), "--pipeline 3 --steps 1 --sample-chars 0", "HEADROOM_CPU_DEVICES=2");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("3 devices asked for, but cpu has 2"), std::string::npos) << r.output;
}

}  // namespace
