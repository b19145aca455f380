// --save-every / --resume end to end: mlp_fashion_mnist is killed with SIGKILL at several points
// (after its k-th checkpoint line, right after it resumed, ...), resumed from its last checkpoint
// each time, and its final model must be byte-identical to an uninterrupted run's -- llm.c's
// determinism check, with a real kill in the middle. Once plain (Adam, cosine schedule, shuffled
// data), once with f16 autocast, a loss scaler and automatic batch splitting under a memory
// limit (so the scaler's and the splitter's learned state must survive too).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "program_runner.h"

namespace {

namespace fs = std::filesystem;
using program_runner::read_text;
using program_runner::run_program;

const std::string kMlp = std::string(HEADROOM_BINARY_DIR) + "/mlp_fashion_mnist";
const std::string kGpt = std::string(HEADROOM_BINARY_DIR) + "/gpt_fortunes";

// Runs the program with args, reads its output line by line, and kills it (SIGKILL) once `kill_after`
// lines containing `marker` have been read (never when kill_after is 0). Returns true when it
// ran to its end with exit code 0, false when it was killed; the output goes to *log.
bool run_until(const std::string& program, const std::vector<std::string>& args, const std::string& marker,
               int kill_after, std::string* log) {
  int fds[2];
  if (pipe(fds) != 0) {
    ADD_FAILURE() << "pipe failed";
    return false;
  }
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    close(fds[1]);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(program.c_str()));
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(program.c_str(), argv.data());
    _exit(127);
  }
  close(fds[1]);
  FILE* out = fdopen(fds[0], "r");
  char line[4096];
  int seen = 0;
  bool killed = false;
  while (std::fgets(line, sizeof line, out)) {
    *log += line;
    if (kill_after > 0 && std::string(line).find(marker) != std::string::npos && ++seen == kill_after) {
      kill(pid, SIGKILL);
      killed = true;
      break;
    }
  }
  std::fclose(out);
  int status = 0;
  waitpid(pid, &status, 0);
  if (killed) return false;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << *log;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

void expect_resumes_bit_identical(const std::vector<std::string>& flags, const std::string& name,
                                  const std::string& straight_run_says = "") {
  SCOPED_TRACE(name);
  const fs::path dir = fs::temp_directory_path() / ("headroom_resume_" + name + "_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string straight = (dir / "straight.hrsd").string(), resumed = (dir / "resumed.hrsd").string();
  const std::string ckpt = (dir / "run.hrck").string();

  std::string log;
  std::vector<std::string> a = flags;
  a.insert(a.end(), {"--save-model", straight});
  ASSERT_TRUE(run_until(kMlp, a, "", 0, &log));
  EXPECT_NE(log.find(straight_run_says), std::string::npos) << log;

  // The kills: after the 2nd checkpoint line; after the 1st of the resumed run; right after a
  // resume, before any new checkpoint; then the run to its end. The pipe lets the child run a
  // little past each line, so the kills land between checkpoints or inside the next save.
  struct Kill {
    const char* marker;
    int after;
  };
  const std::vector<Kill> kills = {{"checkpoint: step", 2}, {"checkpoint: step", 1}, {"resumed from", 1}, {"", 0}};
  int killed = 0;
  for (size_t i = 0; i < kills.size(); ++i) {
    std::vector<std::string> b = flags;
    b.insert(b.end(), {"--save-every", "2", "--checkpoint-file", ckpt, "--save-model", resumed});
    if (fs::exists(ckpt)) b.insert(b.end(), {"--resume", ckpt});
    std::string run_log;
    const bool finished = run_until(kMlp, b, kills[i].marker, kills[i].after, &run_log);
    log += run_log;
    if (finished) break;
    ++killed;
    ASSERT_TRUE(fs::exists(ckpt)) << "killed before any checkpoint:\n" << run_log;
  }
  EXPECT_EQ(killed, 3) << log;
  EXPECT_NE(log.find("resumed from"), std::string::npos);
  const std::string want = read_text(straight), got = read_text(resumed);
  ASSERT_FALSE(want.empty());
  EXPECT_TRUE(want == got) << "the resumed run's model differs from the uninterrupted run's\n" << log;
  fs::remove_all(dir);
}

TEST(ResumeExample, KilledThreeTimesEndsBitIdenticalToAnUninterruptedRun) {
  expect_resumes_bit_identical({"--epochs", "2", "--train-limit", "1024", "--batch-size", "64"}, "plain");
}

TEST(ResumeExample, WithALossScalerAndAutomaticSplittingUnderALimit) {
  // 10 MiB makes the batch of 512 split to 2 x 256 on its first step (measured on the CPU).
  expect_resumes_bit_identical({"--epochs", "2", "--train-limit", "2048", "--batch-size", "512", "--precision", "f16",
                                "--micro-batches", "auto", "--memory-limit", "10MiB"},
                               "f16_auto", "retrying with 256");
}

// gpt_fortunes keeps its own loop: its batch sampler's generator and the dropout RNG must come
// back from the checkpoint too.
TEST(ResumeExample, GptFortunesKilledAndResumedEndsBitIdentical) {
  const fs::path dir = fs::temp_directory_path() / ("headroom_resume_gpt_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::vector<std::string> flags = {"--steps",      "24", "--batch-size",   "4",  "--block-size", "16",
                                          "--n-layer",    "1",  "--n-embd",       "32", "--n-head",     "2",
                                          "--eval-every", "10", "--sample-chars", "0"};
  const std::string straight = (dir / "straight.hrsd").string(), resumed = (dir / "resumed.hrsd").string();
  const std::string ckpt = (dir / "run.hrck").string();
  std::string log;
  std::vector<std::string> a = flags;
  a.insert(a.end(), {"--save-model", straight});
  ASSERT_TRUE(run_until(kGpt, a, "", 0, &log));
  std::vector<std::string> b = flags;
  b.insert(b.end(), {"--save-every", "5", "--checkpoint-file", ckpt, "--save-model", resumed});
  ASSERT_FALSE(run_until(kGpt, b, "checkpoint: step", 2, &log));
  b.insert(b.end(), {"--resume", ckpt});
  ASSERT_TRUE(run_until(kGpt, b, "", 0, &log));
  EXPECT_NE(log.find("resumed from"), std::string::npos) << log;
  EXPECT_TRUE(read_text(straight) == read_text(resumed)) << log;
  fs::remove_all(dir);
}

}  // namespace
