// Training checkpoints (optim/checkpoint.h): a run saved and restored continues bit for bit as
// the uninterrupted run; a bad or foreign file is refused by entry, changing nothing; a process
// killed while saving leaves the previous checkpoint whole.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>
#include <thread>

#include "nn/nn.h"
#include "optim/optim.h"
#include "sweep_harness.h"
#include "test_util.h"

namespace headroom {
namespace {

namespace fs = std::filesystem;

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("headroom_checkpoint_test_" + name + "_" + std::to_string(getpid()));
  fs::create_directories(d);
  return d;
}

// A small GPT with dropout (the RNG matters), AdamW, f16 autocast with a GradScaler, a splitter
// and a cosine schedule: every part a checkpoint holds.
struct GptRun {
  std::shared_ptr<nn::GPT> model;
  std::unique_ptr<optim::AdamW> opt;
  std::unique_ptr<optim::GradScaler> scaler;
  std::unique_ptr<optim::BatchSplitter> splitter;
  std::unique_ptr<optim::CosineWithWarmup> schedule;
  Tensor x, y;
  int64_t steps = 0;

  explicit GptRun(uint64_t seed = 21) {
    manual_seed(seed);
    nn::GPTConfig cfg;
    cfg.vocab_size = 32;
    cfg.block_size = 8;
    cfg.n_layer = 1;
    cfg.n_head = 2;
    cfg.n_embd = 16;
    cfg.dropout = 0.2;
    model = std::make_shared<nn::GPT>(cfg);
    opt = std::make_unique<optim::AdamW>(model->parameters(), 3e-3);
    scaler = std::make_unique<optim::GradScaler>(optim::GradScalerOptions{.init_scale = 256.0, .growth_interval = 2});
    optim::BatchSplitter::Options options;
    options.scaler = scaler.get();
    splitter = std::make_unique<optim::BatchSplitter>(*opt, 2, model.get(), options);
    schedule = std::make_unique<optim::CosineWithWarmup>(*opt, 2, 20);
    std::vector<int64_t> tokens(4 * 8), next(4 * 8);
    for (size_t i = 0; i < tokens.size(); ++i) {
      tokens[i] = static_cast<int64_t>((i * 5 + 1) % 32);
      next[i] = static_cast<int64_t>((i * 5 + 6) % 32);
    }
    x = Tensor::from_vector(tokens, {4, 8}, DType::i64);
    y = Tensor::from_vector(next, {4, 8}, DType::i64);
  }
  optim::TrainingState state() {
    optim::TrainingState st{.model = model.get(),
                            .optimizer = opt.get(),
                            .scaler = scaler.get(),
                            .splitter = splitter.get(),
                            .schedule = schedule.get()};
    st.step = steps;
    st.data_order = {2, 0, 1};
    st.extra["note"] = Tensor::from_vector({1.5, 2.5}, {2}, DType::f64);
    return st;
  }
  void train(int n) {
    for (int i = 0; i < n; ++i) {
      AutocastCacheScope cache;
      splitter->step(x, y, [&](const Tensor& xi, const Tensor& yi) -> optim::MicroBatchOutput {
        AutocastGuard amp(DeviceType::cpu, DType::f16);
        return model->loss(xi, yi);
      });
      schedule->step();
      ++steps;
    }
  }
  testing::StateSnapshot snapshot() const { return testing::snapshot_state(*model, *opt, scaler.get()); }
};

TEST(TrainingCheckpoint, ResumedRunEndsBitIdenticalToTheUninterruptedOne) {
  const fs::path dir = temp_dir("resume");
  GptRun straight;
  straight.train(6);
  const testing::StateSnapshot expected = straight.snapshot();

  GptRun first;
  first.train(3);
  const double scale_at_3 = first.scaler->scale();
  optim::save_training_checkpoint((dir / "c.hrck").string(), first.state());
  first.train(2);     // work after the checkpoint is lost with the process
  GptRun second(99);  // another seed: everything must come from the file
  optim::TrainingState st = second.state();
  optim::load_training_checkpoint((dir / "c.hrck").string(), st);
  EXPECT_EQ(st.step, 3);
  EXPECT_EQ(st.data_order, (std::vector<int64_t>{2, 0, 1}));
  EXPECT_EQ(st.extra.at("note").to_vector<double>(), (std::vector<double>{1.5, 2.5}));
  EXPECT_EQ(second.schedule->last_step(), 3);
  EXPECT_EQ(second.scaler->scale(), scale_at_3);
  second.steps = st.step;
  second.train(3);
  EXPECT_EQ(second.snapshot().first_difference(expected), "");
  fs::remove_all(dir);
}

TEST(TrainingCheckpoint, RefusesAFileThatDoesNotFitAndChangesNothing) {
  const fs::path dir = temp_dir("refuse");
  GptRun a;
  a.train(1);
  const std::string path = (dir / "c.hrck").string();
  optim::save_training_checkpoint(path, a.state());
  std::map<std::string, Tensor> good = nn::load_tensors(path);

  GptRun b(5);
  const testing::StateSnapshot before = b.snapshot();
  const uint64_t offset = default_generator().offset();
  auto expect_refused = [&](std::map<std::string, Tensor> t, const std::string& part) {
    optim::TrainingState st = b.state();
    EXPECT_THROW_WITH(optim::restore_training_state(t, st, "test"), ValueError, part);
    EXPECT_EQ(b.snapshot().first_difference(before), "") << "changed after refusing: " << part;
    EXPECT_EQ(default_generator().offset(), offset);
  };
  auto bad = good;
  bad["model/wte.weight"] = Tensor::zeros({31, 16});
  expect_refused(bad, "'model/wte.weight' is f32 (31, 16)");
  bad = good;
  bad.erase("model/ln_f.bias");
  expect_refused(bad, "no entry 'model/ln_f.bias'");
  bad = good;
  bad["optim/param.0.exp_avg"] = Tensor::zeros({2});
  expect_refused(bad, "'param.0.exp_avg' is f32 (2,)");
  bad = good;
  bad["scaler/scale"] = Tensor::scalar(std::nan(""), DType::f64);
  expect_refused(bad, "'scale' is nan");
  bad = good;
  bad["loop/data_order"] = Tensor::from_vector(std::vector<int64_t>{0, 0, 1}, {3}, DType::i64);
  expect_refused(bad, "not a permutation");
  bad = good;
  bad["checkpoint/version"] = Tensor::from_vector(std::vector<int64_t>{7}, {}, DType::i64);
  expect_refused(bad, "version 7");
  bad = good;
  bad["weights"] = Tensor::zeros({1});
  expect_refused(bad, "entry 'weights' belongs to no part");
  // Parts present in one and not the other.
  {
    optim::TrainingState st = b.state();
    st.scaler = nullptr;
    EXPECT_THROW_WITH(optim::restore_training_state(good, st, "test"), ValueError,
                      "the checkpoint has loss scaler state but none was given");
  }
  // A plain state dict is not a training checkpoint.
  b.model->save((dir / "model.hrsd").string());
  optim::TrainingState st = b.state();
  EXPECT_THROW_WITH(optim::load_training_checkpoint((dir / "model.hrsd").string(), st), ValueError, "Module::load");
  EXPECT_EQ(b.snapshot().first_difference(before), "");
  fs::remove_all(dir);
}

// A child saves checkpoints of a growing step count in a loop and is killed at a spread of
// moments, some of them inside a save: the file at the path always loads, whole.
TEST(TrainingCheckpoint, AProcessKilledWhileSavingLeavesTheLastCheckpointWhole) {
  const fs::path dir = temp_dir("kill");
  const std::string path = (dir / "c.hrck").string();
  int loaded = 0, torn = 0;
  // Made before fork(), so the child runs no kernel (the CPU backend's worker threads do not
  // survive a fork); it only gathers and writes bytes. 4 MiB a save, so kills land inside saves.
  const Tensor big = Tensor::randn({1 << 20});
  auto saved_model = std::make_shared<nn::Linear>(4, 4);
  optim::SGD saved_opt(saved_model->parameters(), 0.1);
  for (int trial = 0; trial < 8; ++trial) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      optim::TrainingState st{.model = saved_model.get(), .optimizer = &saved_opt};
      for (int64_t s = 1;; ++s) {
        st.step = s;
        st.extra["payload"] = big;
        optim::save_training_checkpoint(path, st);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(40 + 23 * trial));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status));
    torn += fs::exists(path + ".tmp");  // killed inside a save: its temporary file is left
    if (!fs::exists(path)) continue;    // killed before its first save finished
    auto model = std::make_shared<nn::Linear>(4, 4);
    optim::SGD opt(model->parameters(), 0.1);
    optim::TrainingState st{.model = model.get(), .optimizer = &opt};
    EXPECT_NO_THROW(optim::load_training_checkpoint(path, st)) << "trial " << trial;
    EXPECT_GE(st.step, 1);
    EXPECT_EQ(st.extra.at("payload").numel(), 1 << 20);
    ++loaded;
  }
  EXPECT_GE(loaded, 4);
  std::cout << loaded << " of 8 kills left a checkpoint to load, " << torn << " of them inside a save\n";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace headroom
