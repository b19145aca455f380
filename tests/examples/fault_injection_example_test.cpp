// HEADROOM_FAIL_ALLOC from outside a program (Note [fault injection] in
// engine/caching_allocator.h): the 100th allocation (in the second step) of the MLP example fails; with automatic
// splitting the run recovers and finishes, without it the run stops with the injected report;
// a bad value is refused by name.
#include <string>

#include "program_runner.h"

namespace {

using program_runner::run_program;

const std::string kMlp = std::string(HEADROOM_BINARY_DIR) + "/mlp_fashion_mnist";
const std::string kArgs = "--epochs 1 --train-limit 512 --batch-size 128";

TEST(FaultInjectionExample, AutomaticSplittingRecoversFromAnInjectedFailure) {
  auto r = run_program(kMlp, kArgs + " --micro-batches auto", "HEADROOM_FAIL_ALLOC=100");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("1 out-of-memory errors recovered"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("test accuracy:"), std::string::npos) << r.output;
}

TEST(FaultInjectionExample, APlainRunStopsWithTheInjectedReport) {
  auto r = run_program(kMlp, kArgs, "HEADROOM_FAIL_ALLOC=100");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("injected failure (allocation #100"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("changed nothing"), std::string::npos) << r.output;
}

TEST(FaultInjectionExample, ABadValueIsRefusedByName) {
  auto r = run_program(kMlp, kArgs, "HEADROOM_FAIL_ALLOC=often");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("HEADROOM_FAIL_ALLOC"), std::string::npos) << r.output;
  auto m = run_program(kMlp, kArgs, "HEADROOM_MEMORY_LIMIT=0x100");
  EXPECT_NE(m.exit_code, 0) << m.output;
  EXPECT_NE(m.output.find("HEADROOM_MEMORY_LIMIT"), std::string::npos) << m.output;
}

}  // namespace
