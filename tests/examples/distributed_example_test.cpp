// The examples under mpirun (label mpi; ctest runs this suite on its own, not with the cpu
// tests): --ddp and --zero train as one process on the whole batch would -- the same losses and
// the same test accuracy as the single-process run, printed once, by rank 0 -- and a batch that
// does not divide among the ranks is a clear error.
#include <regex>

#include "nn/data/fashion_mnist.h"
#include "program_runner.h"

#ifndef HEADROOM_MPIRUN
#define HEADROOM_MPIRUN ""  // a build without the MPI transport: these tests skip
#endif

namespace {

using program_runner::run_program;
using program_runner::RunResult;

std::string binary(const std::string& name) { return std::string(HEADROOM_BINARY_DIR) + "/" + name; }

RunResult mpirun(int np, const std::string& program, const std::string& args) {
  if (std::string(HEADROOM_MPIRUN).empty()) return RunResult{};
  return run_program(HEADROOM_MPIRUN, "--allow-run-as-root --oversubscribe --bind-to none -np " + std::to_string(np) +
                                          " '" + binary(program) + "' " + args);
}

// Every "loss X acc Y" / "loss X" figure and the test accuracy, in order: what must agree.
std::vector<std::string> figures(const std::string& output) {
  std::vector<std::string> out;
  std::regex re(
      R"((\d+/\d+\] \d+/\d+ loss [0-9.]+ acc [0-9.]+|step \d+/\d+ loss [0-9.]+|test accuracy: [0-9.]+|validation loss [0-9.]+))");
  for (auto it = std::sregex_iterator(output.begin(), output.end(), re); it != std::sregex_iterator(); ++it)
    out.push_back(it->str());
  // The progress bar repeats its last state; keep each distinct figure once.
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

bool have_data() { return std::filesystem::is_directory(headroom::data::kFashionMnistDir); }

#define REQUIRE_MPI() \
  if (std::string(HEADROOM_MPIRUN).empty()) GTEST_SKIP() << "this build has no MPI transport"

TEST(DistributedExample, CnnWithDdpTrainsAsOneProcessOnTheWholeBatch) {
  REQUIRE_MPI();
  if (!have_data()) GTEST_SKIP() << "Fashion-MNIST not installed";
  const std::string args = "--epochs 1 --train-limit 1024 --group-norm";
  RunResult one = run_program(binary("cnn_fashion_mnist"), args);
  ASSERT_EQ(one.exit_code, 0) << one.output;
  RunResult two = mpirun(2, "cnn_fashion_mnist", args + " --ddp");
  ASSERT_EQ(two.exit_code, 0) << two.output;
  EXPECT_NE(two.output.find("data parallel: 2 ranks (mpi)"), std::string::npos) << two.output;
  EXPECT_NE(two.output.find("hidden behind backward"), std::string::npos) << two.output;
  // Rank 0 alone prints.
  EXPECT_EQ(std::count(two.output.begin(), two.output.end(), '\n') > 0 &&
                two.output.find("test accuracy") == two.output.rfind("test accuracy"),
            true)
      << two.output;
  const auto a = figures(one.output), b = figures(two.output);
  ASSERT_FALSE(a.empty()) << one.output;
  EXPECT_EQ(a.back(), b.back()) << one.output << "\n----\n" << two.output;
  EXPECT_EQ(a, b);
}

TEST(DistributedExample, CnnWithZero2OnThreeRanksTrainsAsOneProcess) {
  REQUIRE_MPI();
  if (!have_data()) GTEST_SKIP() << "Fashion-MNIST not installed";
  const std::string args = "--epochs 1 --train-limit 768 --group-norm --batch-size 96";
  RunResult one = run_program(binary("cnn_fashion_mnist"), args);
  ASSERT_EQ(one.exit_code, 0) << one.output;
  RunResult three = mpirun(3, "cnn_fashion_mnist", args + " --zero 2 --bucket-cap 256KiB");
  ASSERT_EQ(three.exit_code, 0) << three.output;
  EXPECT_NE(three.output.find("ZeRO stage 2"), std::string::npos) << three.output;
  EXPECT_NE(three.output.find("reduce-scattered per step"), std::string::npos) << three.output;
  // The per-rank table: three rows.
  std::smatch m;
  EXPECT_TRUE(std::regex_search(three.output, m, std::regex(R"(\n +2 +[0-9.]+ [KMG]?i?B)"))) << three.output;
  // The figures agree to the printed digits except where rounding of the sharded updates
  // shows: compare the test accuracy to within 0.5%.
  std::smatch x, y;
  ASSERT_TRUE(std::regex_search(one.output, x, std::regex(R"(test accuracy: ([0-9.]+))"))) << one.output;
  ASSERT_TRUE(std::regex_search(three.output, y, std::regex(R"(test accuracy: ([0-9.]+))"))) << three.output;
  EXPECT_NEAR(std::stod(x[1]), std::stod(y[1]), 0.005) << one.output << "\n----\n" << three.output;
}

TEST(DistributedExample, GptWithDdpHasTheSameLossesAsOneProcess) {
  REQUIRE_MPI();
  if (!std::filesystem::is_directory("/usr/share/games/fortunes")) GTEST_SKIP() << "fortunes not installed";
  const std::string args = "--steps 5 --log-every 1 --eval-every 5 --eval-batches 2 --sample-chars 0";
  RunResult one = run_program(binary("gpt_fortunes"), args);
  ASSERT_EQ(one.exit_code, 0) << one.output;
  RunResult two = mpirun(2, "gpt_fortunes", args + " --ddp");
  ASSERT_EQ(two.exit_code, 0) << two.output;
  EXPECT_EQ(figures(one.output), figures(two.output)) << one.output << "\n----\n" << two.output;
  RunResult zero = mpirun(2, "gpt_fortunes", args + " --zero 1");
  ASSERT_EQ(zero.exit_code, 0) << zero.output;
  EXPECT_EQ(figures(one.output), figures(zero.output)) << one.output << "\n----\n" << zero.output;
}

TEST(DistributedExample, ABatchThatDoesNotDivideIsAClearError) {
  REQUIRE_MPI();
  if (!have_data()) GTEST_SKIP() << "Fashion-MNIST not installed";
  RunResult r = mpirun(3, "mlp_fashion_mnist", "--ddp --epochs 1 --train-limit 512 --batch-size 128");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("--batch-size 128 does not divide among 3 ranks"), std::string::npos) << r.output;
}

}  // namespace
