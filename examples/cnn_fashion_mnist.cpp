// A small convolutional network on Fashion-MNIST: convolution, pooling and (optionally) batch
// or group normalisation trained end to end on headroom's public API.
//
//   conv 1->C1 3x3 pad 1 [BN|GN] ReLU maxpool2   28x28 -> 14x14
//   conv C1->C2 3x3 pad 1 [BN|GN] ReLU maxpool2  14x14 -> 7x7
//   flatten, linear C2*49->128, ReLU, linear 128->10
//
// Adam, lr 4e-3 decayed to 0 by a per-step cosine, batch 128, 3 epochs: about 0.91 test
// accuracy. BatchNorm is what lets so short a run get there (0.896 without it at lr 2e-3), and
// the widths default to 16 and 32 (not the usual 32 and 64), which quarters the convolution
// work on a 2-core CPU.
//
//   ./cnn_fashion_mnist                      # defaults
//   ./cnn_fashion_mnist --channels 32 --batch-norm=false --lr 0.001
//   ./cnn_fashion_mnist --batch-size 1024 --memory-limit 64MiB --micro-batches auto
//
// Under --micro-batches, BatchNorm normalises each micro-batch with its own statistics, which
// changes training (docs/batch-splitting.md); --group-norm uses GroupNorm (per-sample statistics,
// unchanged by splitting) instead.
#include <numeric>

#include "examples/common.h"
#include "nn/layers/group_norm.h"

using namespace headroom;

namespace {

// stage_starts: where each conv stage (conv, norm, ReLU, pool) and the head begin, the blocks
// of --checkpoint block.
std::shared_ptr<nn::Sequential> make_cnn(int64_t c1, bool batch_norm, bool group_norm, std::vector<int64_t>* stage_starts,
                                         bool inplace_relu = false) {
  const int64_t c2 = 2 * c1;
  auto model = std::make_shared<nn::Sequential>();
  for (auto [in, out] : {std::pair{int64_t{1}, c1}, std::pair{c1, c2}}) {
    stage_starts->push_back(model->size());
    model->push_back(std::make_shared<nn::Conv2d>(in, out, /*kernel=*/3, /*stride=*/1, /*padding=*/1,
                                                  /*groups=*/1, /*bias=*/!batch_norm && !group_norm));
    if (group_norm) model->push_back(std::make_shared<nn::GroupNorm>(std::gcd(out, int64_t{8}), out));
    else if (batch_norm) model->push_back(std::make_shared<nn::BatchNorm2d>(out));
    model->push_back(std::make_shared<nn::ReLU>(inplace_relu));
    model->push_back(std::make_shared<nn::MaxPool2d>(2));
  }
  stage_starts->push_back(model->size());  // the head
  model->push_back(std::make_shared<nn::Flatten>());
  model->push_back(std::make_shared<nn::Linear>(c2 * 7 * 7, 128));
  model->push_back(std::make_shared<nn::ReLU>(inplace_relu));
  model->push_back(std::make_shared<nn::Linear>(128, 10));
  return model;
}

}  // namespace

int main(int argc, char** argv) {
  examples::TrainConfig cfg;
  cfg.epochs = 3;
  cfg.lr = 4e-3;
  int64_t channels = 16;
  bool batch_norm = true;
  bool group_norm = false;
  bool inplace_relu = false;
  examples::Flags flags("cnn_fashion_mnist", "Trains a two-conv-layer CNN on Fashion-MNIST with Adam.");
  examples::add_training_flags(flags, cfg);
  flags.add("channels", &channels, "channels of the first conv (the second has twice as many)",
            examples::at_least<int64_t>(1));
  flags.add("batch-norm", &batch_norm, "BatchNorm2d after each conv (--batch-norm=false: none)");
  flags.add("group-norm", &group_norm, "GroupNorm (8 groups) after each conv instead of BatchNorm2d");
  flags.add("inplace-relu", &inplace_relu,
            "ReLU in place (relu_: its input's bytes saved, the same gradients; docs/leak-check.md)");
  if (auto code = flags.parse(argc, argv)) return *code;
  // Selective checkpointing keeps the linear layer's output for its re-run, and a ReLU in place
  // would overwrite it (the version check would stop backward, naming linear).
  if (inplace_relu && cfg.recompute == "selective") {
    std::cerr << "cnn_fashion_mnist: --inplace-relu and --checkpoint selective are not supported together (selective "
                 "keeps the outputs ReLU would overwrite; see --help)\n";
    return 2;
  }

  return examples::run_reporting_errors([&] {
    const Device device = Device::parse(cfg.device);
    examples::DataParallel parallel(cfg, "cnn_fashion_mnist");  // --ddp, --zero: under mpirun
    // --memory-budget 256MiB --plan: precision, checkpointing and micro-batches chosen before the
    // first step (optim/plan.h).
    optim::PlanSpace space = optim::PlanSpace::for_batch(cfg.batch_size);
    space.has_attention = false;
    if (inplace_relu)  // as above: no selective checkpointing with ReLU in place
      space.checkpoints = {nn::CheckpointMode::none, nn::CheckpointMode::block, nn::CheckpointMode::sqrt};
    const auto planned = examples::plan_techniques(
        cfg, device,
        examples::image_classifier_step(device, cfg.lr, [channels, batch_norm, group_norm, inplace_relu](nn::CheckpointMode mode) {
          std::vector<int64_t> s;
          auto m = make_cnn(channels, batch_norm, group_norm, &s, inplace_relu);
          m->set_checkpoint(mode, s);
          return std::shared_ptr<nn::Module>(m);
        }),
        space);
    manual_seed(static_cast<uint64_t>(cfg.seed));
    examples::MemoryReporting memory(cfg, device, "CNN on Fashion-MNIST");

    std::vector<int64_t> stages;
    auto model = make_cnn(channels, batch_norm, group_norm, &stages, inplace_relu);
    model->set_checkpoint(nn::parse_checkpoint_mode(cfg.recompute, "--checkpoint"), stages);
    model->to(device);
    examples::print_model(*model);
    auto [train, test] = examples::load_data(cfg);
    std::shared_ptr<nn::Module> trained = parallel.wrap(model);  // the model, or its DistributedDataParallel
    auto optimizer = parallel.make_optimizer(
        [&](std::vector<Tensor> ps) { return examples::make_adam(cfg, std::move(ps), cfg.lr); }, *trained);
    // With --ddp every rank walks the same order and keeps its share; a short last batch is dropped.
    data::BatchLoader loader(train, cfg.batch_size, /*shuffle=*/true, static_cast<uint64_t>(cfg.seed),
                             /*drop_last=*/parallel.on());
    auto schedule = examples::make_schedule(cfg, *optimizer, loader.num_batches());
    examples::Precision precision = examples::make_precision(cfg);
    auto splitter = examples::make_splitter(cfg, *optimizer, *trained, precision.scaler.get(), parallel.ddp());

    // --save-every / --resume: everything the rest of the run depends on (optim/checkpoint.h).
    examples::Checkpointing checkpoints(cfg, {.model = model.get(), .optimizer = optimizer.get(),
                                              .scaler = precision.scaler.get(), .splitter = splitter.get(),
                                              .schedule = schedule.get()});
    examples::LeakChecking leaks(cfg.leak_check, device);  // --leak-check
    std::vector<examples::EpochStats> history;
    for (int64_t epoch = checkpoints.resume(); epoch < cfg.epochs; ++epoch)
      history.push_back(examples::train_one_epoch(*trained, *splitter, schedule.get(), loader, device, epoch, cfg.epochs,
                                                  precision.autocast, &checkpoints, &parallel, &leaks,
                                                  examples::activation_offload(cfg)));
    if (!cfg.save_model.empty()) model->save(cfg.save_model);

    const double accuracy = examples::evaluate(*model, test, /*batch_size=*/500, device,
                                                 /*halve_on_oom=*/cfg.micro_batches == "auto" || cfg.plan);
    memory.print_peaks();
    leaks.print_summary();
    parallel.print_per_rank_memory(device);
    parallel.print_communication();
    examples::print_plan_check(planned, device);
    examples::print_batch_splitting(cfg, *splitter);
    examples::print_precision(cfg, precision);
    examples::print_results(history, accuracy);
    return 0;
  });
}
