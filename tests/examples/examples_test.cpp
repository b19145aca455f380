// End-to-end tests of the example programs: they are run as a user would run them, and their
// exit codes and output are checked -- the package hint for missing data, exit 2 for a bad
// command line, and a short real training run that prints a parseable accuracy above chance.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include "nn/data/fashion_mnist.h"

namespace {

namespace fs = std::filesystem;

struct RunResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

std::string binary(const std::string& name) { return std::string(HEADROOM_BINARY_DIR) + "/" + name; }

// Runs an example with args (already shell-quoted where needed); stdout is a pipe, not a
// terminal, so the programs print one line an epoch.
RunResult run(const std::string& name, const std::string& args, const std::string& env = "") {
  RunResult r;
  const std::string path = binary(name);
  if (!fs::exists(path)) {
    ADD_FAILURE() << path << " is not built (the test target should depend on it)";
    return r;
  }
  const std::string cmd = env + (env.empty() ? "" : " ") + "'" + path + "' " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) {
    ADD_FAILURE() << "popen failed for " << cmd;
    return r;
  }
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) r.output.append(buf, n);
  int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  return r;
}

int count(const std::string& text, const std::string& what) {
  int c = 0;
  for (size_t pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1)) ++c;
  return c;
}

class Example : public ::testing::TestWithParam<std::string> {};

TEST_P(Example, MissingDataGivesThePackageHintAndExitCode1) {
  const std::string dir = "/nonexistent/headroom-fashion-mnist";
  RunResult r = run(GetParam(), "--epochs 1 --data-dir " + dir);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("error: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("apt-get install dataset-fashion-mnist"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(dir), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("test accuracy:"), std::string::npos) << r.output;
}

TEST_P(Example, BadCommandLineExitsWith2NamingTheFlag) {
  RunResult r = run(GetParam(), "--epochs 1 --bogus-flag 3");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("unknown flag --bogus-flag"), std::string::npos) << r.output;
  r = run(GetParam(), "--batch-size=abc");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--batch-size"), std::string::npos) << r.output;
  r = run(GetParam(), "--epochs 0");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--epochs: must be at least 1"), std::string::npos) << r.output;
  r = run(GetParam(), "--lr");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--lr needs a value"), std::string::npos) << r.output;
  r = run(GetParam(), "--device tpu");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--device"), std::string::npos) << r.output;
  r = run(GetParam(), "stray");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("unexpected argument 'stray'"), std::string::npos) << r.output;
}

TEST_P(Example, HelpListsTheFlags) {
  RunResult r = run(GetParam(), "--help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* flag : {"--epochs", "--batch-size", "--lr", "--seed", "--device", "--data-dir", "--train-limit"})
    EXPECT_NE(r.output.find(flag), std::string::npos) << flag << " missing from\n" << r.output;
}

TEST_P(Example, CudaWithoutAGpuIsAClearError) {
  if (!fs::is_directory(headroom::data::kFashionMnistDir)) GTEST_SKIP() << "Fashion-MNIST not installed";
  RunResult r = run(GetParam(), "--device cuda --epochs 1 --train-limit 256");
  if (r.exit_code == 0) GTEST_SKIP() << "this build runs on a GPU";  // a CUDA build on a GPU machine
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("error: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("cuda"), std::string::npos) << r.output;
  // Why, in words (Note [missing devices]): not "no allocator for device cuda:0".
#ifdef HEADROOM_WITH_CUDA
  EXPECT_NE(r.output.find("no GPU is visible"), std::string::npos) << r.output;
#else
  EXPECT_NE(r.output.find("built without CUDA support"), std::string::npos) << r.output;
#endif
}

TEST_P(Example, ShortRunPrintsAccuracyAboveChance) {
  if (!fs::is_directory(headroom::data::kFashionMnistDir))
    GTEST_SKIP() << headroom::data::kFashionMnistDir << " not found (apt-get install dataset-fashion-mnist)";
  RunResult r = run(GetParam(), "--train-limit 2000 --epochs 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(count(r.output, "test accuracy:"), 1) << r.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m, std::regex(R"(\ntest accuracy: (0\.\d{4}|1\.0000)\n)"))) << r.output;
  const double accuracy = std::stod(m[1].str());
  EXPECT_GT(accuracy, 0.3) << "ten classes: chance is 0.1\n" << r.output;
  // Not a terminal: one progress line for the epoch, no carriage returns.
  EXPECT_EQ(count(r.output, "epoch 1/1 ["), 1) << r.output;
  EXPECT_EQ(r.output.find('\r'), std::string::npos);
  EXPECT_NE(r.output.find("2000 training and 10000 test images"), std::string::npos) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex(R"(time per epoch: \d+\.\d\d s)"))) << r.output;
}

INSTANTIATE_TEST_SUITE_P(FashionMnist, Example, ::testing::Values("mlp_fashion_mnist", "cnn_fashion_mnist"),
                         [](const auto& p) { return p.param; });

TEST(MlpExample, SameSeedGivesTheSameResult) {
  if (!fs::is_directory(headroom::data::kFashionMnistDir)) GTEST_SKIP() << "Fashion-MNIST not installed";
  const std::string args = "--train-limit 1000 --epochs 2 --seed 7";
  RunResult a = run("mlp_fashion_mnist", args), b = run("mlp_fashion_mnist", args);
  ASSERT_EQ(a.exit_code, 0) << a.output;
  ASSERT_EQ(b.exit_code, 0) << b.output;
  std::regex acc_line(R"(test accuracy: \S+)");
  std::smatch ma, mb;
  ASSERT_TRUE(std::regex_search(a.output, ma, acc_line));
  ASSERT_TRUE(std::regex_search(b.output, mb, acc_line));
  EXPECT_EQ(ma.str(), mb.str());
  // And the epoch losses agree too (the lines differ only in their timings).
  std::regex loss(R"(loss \d+\.\d+ acc \d+\.\d+)");
  auto la = std::sregex_iterator(a.output.begin(), a.output.end(), loss);
  auto lb = std::sregex_iterator(b.output.begin(), b.output.end(), loss);
  for (; la != std::sregex_iterator() && lb != std::sregex_iterator(); ++la, ++lb) EXPECT_EQ(la->str(), lb->str());
}

// ---- memory: limits, the out-of-memory report, and --memory-report ----

std::string read_file(const fs::path& p) {
  FILE* f = std::fopen(p.c_str(), "rb");
  if (!f) return "";
  std::string s;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  std::fclose(f);
  return s;
}

TEST(CnnExample, UnderA16MiBLimitStopsWithTheOutOfMemoryReport) {
  if (!fs::is_directory(headroom::data::kFashionMnistDir)) GTEST_SKIP() << "Fashion-MNIST not installed";
  const fs::path dir = fs::temp_directory_path() / ("headroom-oom-" + std::to_string(::getpid()));
  RunResult r = run("cnn_fashion_mnist", "--epochs 1 --train-limit 512 --memory-report '" + dir.string() + "'",
                    "HEADROOM_MEMORY_LIMIT=16MiB");
  EXPECT_EQ(r.exit_code, 1) << r.output;  // an error exit, not a crash
  for (const char* part : {"error: out of memory on cpu", "limit: 16.00 MiB", "largest free block", "what may help"})
    EXPECT_NE(r.output.find(part), std::string::npos) << "missing '" << part << "' in:\n" << r.output;
  // The report names the categories with what they held when it stopped.
  EXPECT_TRUE(std::regex_search(r.output, std::regex(R"(parameter\s+[1-9][0-9.]* (KiB|MiB))"))) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex(R"(activation\s+[1-9][0-9.]* (KiB|MiB))"))) << r.output;
  EXPECT_EQ(r.output.find("test accuracy:"), std::string::npos) << r.output;
  // The memory report is still written, and its trace ends in the oom.
  EXPECT_NE(read_file(dir / "trace.json").find("\"oom\""), std::string::npos);
  EXPECT_NE(read_file(dir / "timeline.html").find("<svg"), std::string::npos);
  fs::remove_all(dir);
}

TEST(MlpExample, MemoryReportAndPeaksByCategory) {
  if (!fs::is_directory(headroom::data::kFashionMnistDir)) GTEST_SKIP() << "Fashion-MNIST not installed";
  const fs::path dir = fs::temp_directory_path() / ("headroom-report-" + std::to_string(::getpid()));
  RunResult r = run("mlp_fashion_mnist",
                    "--epochs 1 --train-limit 1000 --memory-limit 64MiB --memory-report '" + dir.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("(limit 64.00 MiB)"), std::string::npos) << r.output;
  for (const char* cat : {"parameter", "gradient", "optimizer_state", "activation"})
    EXPECT_TRUE(std::regex_search(r.output, std::regex(std::string(cat) + R"( [1-9][0-9.]* (B|KiB|MiB);)")))
        << cat << " missing from the peaks:\n"
        << r.output;
  for (const char* file : {"stats.json", "snapshot.json", "trace.json", "trace.chrome.json", "timeline.html"})
    EXPECT_GT(fs::file_size(dir / file), 100u) << file;
  fs::remove_all(dir);
}

TEST(MlpExample, RejectsABadMemoryLimit) {
  RunResult r = run("mlp_fashion_mnist", "--memory-limit lots");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--memory-limit"), std::string::npos) << r.output;
}

// ---- the accuracies the README states, trained in full (about 10 s and 2 min on 2 cores) ----

double trained_accuracy(const std::string& name, const std::string& args) {
  RunResult r = run(name, args);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::smatch m;
  if (!std::regex_search(r.output, m, std::regex(R"(\ntest accuracy: (0\.\d{4}|1\.0000)\n)"))) {
    ADD_FAILURE() << "no accuracy line in:\n" << r.output;
    return 0;
  }
  return std::stod(m[1].str());
}

TEST(MlpExample, ReachesTheStatedAccuracyInFiveEpochs) {
  if (!fs::is_directory(headroom::data::kFashionMnistDir)) GTEST_SKIP() << "Fashion-MNIST not installed";
  EXPECT_GE(trained_accuracy("mlp_fashion_mnist", "--epochs 5"), 0.87);
}

TEST(CnnExample, ReachesTheStatedAccuracyInThreeEpochs) {
  if (!fs::is_directory(headroom::data::kFashionMnistDir)) GTEST_SKIP() << "Fashion-MNIST not installed";
  EXPECT_GE(trained_accuracy("cnn_fashion_mnist", "--epochs 3"), 0.90);
}

}  // namespace

// ---- recompute checkpointing: --checkpoint none|block|sqrt|selective ----

// The activation peak the example prints ("activation 6.68 MiB;"), in MiB.
double activation_peak_mib(const std::string& output) {
  std::smatch m;
  if (!std::regex_search(output, m, std::regex(R"(activation ([0-9.]+) (B|KiB|MiB);)"))) return -1;
  const double v = std::stod(m[1].str());
  return m[2].str() == "MiB" ? v : m[2].str() == "KiB" ? v / 1024 : v / (1024 * 1024);
}

std::vector<std::string> loss_lines(const std::string& output) {
  std::vector<std::string> out;
  std::regex loss(R"(loss \d+\.\d+ acc \d+\.\d+|test accuracy: \S+)");
  for (auto it = std::sregex_iterator(output.begin(), output.end(), loss); it != std::sregex_iterator(); ++it)
    out.push_back(it->str());
  return out;
}

TEST(CnnExample, EveryCheckpointModeTrainsIdenticallyWithLessActivationMemory) {
  if (!fs::is_directory(headroom::data::kFashionMnistDir)) GTEST_SKIP() << "Fashion-MNIST not installed";
  const std::string args = "--epochs 1 --train-limit 512 --batch-size 64 --seed 3 --checkpoint ";
  RunResult none = run("cnn_fashion_mnist", args + "none", "HEADROOM_NUM_THREADS=1");
  ASSERT_EQ(none.exit_code, 0) << none.output;
  ASSERT_FALSE(loss_lines(none.output).empty()) << none.output;
  for (const char* mode : {"block", "sqrt", "selective"}) {
    RunResult r = run("cnn_fashion_mnist", args + mode, "HEADROOM_NUM_THREADS=1");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(loss_lines(r.output), loss_lines(none.output)) << mode;  // BatchNorm included
    EXPECT_LT(activation_peak_mib(r.output), 0.8 * activation_peak_mib(none.output)) << mode << "\n" << r.output;
  }
}

TEST(MlpExample, RejectsAnUnknownCheckpointMode) {
  RunResult r = run("mlp_fashion_mnist", "--checkpoint everything");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("unknown checkpointing mode 'everything'"), std::string::npos) << r.output;
}
