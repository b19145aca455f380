// The smaller-models flags of cnn_fashion_mnist (--model mobilenet, --prune-channels,
// --prune-magnitude, --fine-tune-epochs, --load-model) and distill_fashion_mnist, run as a user
// would on a few hundred images: they finish, print what they did, and refuse bad flags with
// exit code 2. The trained numbers are in docs/smaller-models.md.
#include <filesystem>
#include <regex>
#include <string>

#include "nn/data/fashion_mnist.h"
#include "program_runner.h"

namespace {

using program_runner::count_of;
using program_runner::run_program;
using program_runner::RunResult;
using program_runner::TempDir;

std::string binary(const std::string& name) { return std::string(HEADROOM_BINARY_DIR) + "/" + name; }
bool have_data() { return std::filesystem::is_directory(headroom::data::kFashionMnistDir); }

TEST(SmallerModelsExample, BadFlagsExitWith2NamingTheProblem) {
  RunResult r = run_program(binary("cnn_fashion_mnist"), "--prune-channels 1");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--prune-channels: must be in [0, 1)"), std::string::npos) << r.output;
  r = run_program(binary("cnn_fashion_mnist"), "--prune-magnitude -0.5");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = run_program(binary("cnn_fashion_mnist"), "--model resnet");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("expected cnn or mobilenet"), std::string::npos) << r.output;
  r = run_program(binary("cnn_fashion_mnist"), "--model mobilenet --group-norm");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--model mobilenet always uses BatchNorm"), std::string::npos) << r.output;
  r = run_program(binary("cnn_fashion_mnist"), "--prune-channels 0.5 --ddp");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("not supported with --ddp"), std::string::npos) << r.output;
  r = run_program(binary("distill_fashion_mnist"), "--alpha 1.5");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--alpha: must be in [0, 1]"), std::string::npos) << r.output;
  r = run_program(binary("distill_fashion_mnist"), "--temperature 0");
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

TEST(SmallerModelsExample, MobileNetTrains) {
  if (!have_data()) GTEST_SKIP() << "Fashion-MNIST not installed";
  RunResult r = run_program(binary("cnn_fashion_mnist"), "--model mobilenet --epochs 1 --train-limit 256");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("model: 10474 parameters"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("DepthwiseSeparableConv2d(16, 32, stride=2)"), std::string::npos) << r.output;
  EXPECT_EQ(count_of(r.output, "test accuracy:"), 1) << r.output;
}

// A CNN trained briefly by cnn_fashion_mnist and saved: its file and printed test accuracy.
struct SavedCnn {
  std::string path, accuracy;
};
SavedCnn train_and_save(const TempDir& dir) {
  SavedCnn s{(dir.path / "cnn.hrsd").string(), ""};
  RunResult r = run_program(binary("cnn_fashion_mnist"), "--epochs 1 --train-limit 256 --save-model '" + s.path + "'");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::smatch m;
  if (std::regex_search(r.output, m, std::regex(R"(\ntest accuracy: (\d\.\d{4})\n)"))) s.accuracy = m[1].str();
  EXPECT_FALSE(s.accuracy.empty()) << r.output;
  return s;
}

// Loads the saved CNN, prunes half its channels and half of each remaining weight, fine-tunes.
TEST(SmallerModelsExample, LoadPruneAndFineTune) {
  if (!have_data()) GTEST_SKIP() << "Fashion-MNIST not installed";
  TempDir dir("smaller-models-prune");
  const SavedCnn cnn = train_and_save(dir);
  ASSERT_FALSE(cnn.accuracy.empty());
  const std::string& saved = cnn.path;
  const std::string& accuracy = cnn.accuracy;
  std::smatch m;

  RunResult r =
      run_program(binary("cnn_fashion_mnist"), "--train-limit 256 --load-model '" + saved +
                                                   "' --prune-channels 0.5 --prune-magnitude 0.5 --fine-tune-epochs 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("accuracy before pruning: " + accuracy), std::string::npos)
      << "the loaded model is the saved one\n"
      << r.output;
  EXPECT_NE(r.output.find("conv 0 16 -> 8; conv 4 32 -> 16;"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("parameters 206970 -> 103042 (51428 of them held at 0)"), std::string::npos) << r.output;
  ASSERT_TRUE(std::regex_search(r.output, m,
                                std::regex(R"(activation peak of a training step \(batch 128\) .* \((-?\d+\.\d)%\))")))
      << r.output;
  EXPECT_LE(std::stod(m[1].str()), -40.0) << r.output;
  ASSERT_TRUE(std::regex_search(r.output, m,
                                std::regex(R"(after fine-tuning: (\d\.\d{4}) of the masked weights are exactly 0)")))
      << r.output;
  EXPECT_GE(std::stod(m[1].str()), 0.5) << r.output;
  EXPECT_EQ(count_of(r.output, "epoch 1/1 ["), 1) << "fine-tuning only: --load-model skips training\n" << r.output;
  EXPECT_EQ(count_of(r.output, "test accuracy:"), 1) << r.output;
}

// Distils the saved CNN (cnn_fashion_mnist's layout loads as distill_fashion_mnist's teacher).
TEST(SmallerModelsExample, DistilTheSavedCnn) {
  if (!have_data()) GTEST_SKIP() << "Fashion-MNIST not installed";
  TempDir dir("smaller-models-distil");
  const SavedCnn cnn = train_and_save(dir);
  ASSERT_FALSE(cnn.accuracy.empty());
  const std::string& saved = cnn.path;
  const std::string& accuracy = cnn.accuracy;
  RunResult r =
      run_program(binary("distill_fashion_mnist"), "--train-limit 256 --epochs 1 --teacher-model '" + saved + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("teacher: 206970 parameters, loaded from"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("teacher: test accuracy " + accuracy), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("student: 13254 parameters"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("labels only: test accuracy"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("distilled:   test accuracy"), std::string::npos) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex(R"(distillation gain: [+-]\d+\.\d\d points)"))) << r.output;
  EXPECT_EQ(count_of(r.output, "test accuracy:"), 1) << r.output;
}

// A teacher file that is not there: exit 1, naming it.
TEST(SmallerModelsExample, MissingTeacherIsAClearError) {
  if (!have_data()) GTEST_SKIP() << "Fashion-MNIST not installed";
  RunResult r =
      run_program(binary("distill_fashion_mnist"), "--teacher-model /nonexistent/teacher.hrsd --train-limit 256");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("/nonexistent/teacher.hrsd"), std::string::npos) << r.output;
}

}  // namespace
