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
//   ./cnn_fashion_mnist --model mobilenet    # depthwise-separable blocks (docs/smaller-models.md)
//   ./cnn_fashion_mnist --save-model cnn.hrsd
//   ./cnn_fashion_mnist --load-model cnn.hrsd --prune-channels 0.5 --fine-tune-epochs 1
//
// Under --micro-batches, BatchNorm normalises each micro-batch with its own statistics, which
// changes training (docs/batch-splitting.md); --group-norm uses GroupNorm (per-sample statistics,
// unchanged by splitting) instead.
#include <numeric>

#include "examples/common.h"
#include "examples/small_models.h"
#include "nn/layers/group_norm.h"

using namespace headroom;

namespace {

// stage_starts: where each conv stage (conv, norm, ReLU, pool) and the head begin, the blocks
// of --checkpoint block.
std::shared_ptr<nn::Sequential> make_cnn(int64_t c1, bool batch_norm, bool group_norm,
                                         std::vector<int64_t>* stage_starts, bool inplace_relu = false) {
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

// --prune-channels / --prune-magnitude (nn/prune.h, docs/smaller-models.md).
struct Pruning {
  double channels = 0, magnitude = 0;
  int64_t fine_tune_epochs = 1;
  double fine_tune_lr = 1e-3;
  bool on() const { return channels > 0 || magnitude > 0; }
};

// Prunes the trained model, measures what it saved, fine-tunes it (the magnitude masks
// re-applied after every optimizer step: Note [pruned weights stay zero]) and returns its test
// accuracy. The fine-tuning epochs join `history`.
double prune_and_fine_tune(nn::Sequential& model, const Pruning& p, const examples::TrainConfig& cfg, Device device,
                           const data::Dataset& train, const data::Dataset& test, double accuracy_before,
                           std::vector<examples::EpochStats>& history) {
  data::BatchLoader probe(train, cfg.batch_size, /*shuffle=*/false, /*seed=*/0);
  Tensor images, labels;
  probe.next(images, labels);
  images = images.to(device);
  labels = labels.to(device);
  const int64_t params_before = model.num_parameters();
  const int64_t peak_before = examples::step_activation_peak(model, images, labels);
  if (p.channels > 0) {
    const std::vector<nn::PrunedChannels> report = nn::prune_channels(model, p.channels);
    std::cout << "channel pruning (" << p.channels << " of each conv's output channels, smallest L1 norm):";
    for (const nn::PrunedChannels& c : report)
      std::cout << " conv " << c.layer << " " << c.before << " -> " << c.after << ";";
    std::cout << "\n";
  }
  std::optional<nn::MagnitudePruner> pruner;
  if (p.magnitude > 0) {
    pruner.emplace(model, p.magnitude);
    std::cout << "magnitude pruning: " << pruner->pruned() << " of " << pruner->prunable()
              << " conv and linear weights set to 0 and masked\n";
  }
  const int64_t peak_after = examples::step_activation_peak(model, images, labels);
  const double accuracy_pruned = examples::evaluate(model, test, /*batch_size=*/500, device);
  std::cout << "pruned: parameters " << params_before << " -> " << model.num_parameters()
            << (pruner ? str_cat(" (", pruner->pruned(), " of them held at 0)") : std::string())
            << "; activation peak of a training step (batch " << cfg.batch_size << ") " << format_bytes(peak_before)
            << " -> " << format_bytes(peak_after) << std::fixed << std::setprecision(1) << " ("
            << (peak_before > 0
                    ? 100.0 * static_cast<double>(peak_after - peak_before) / static_cast<double>(peak_before)
                    : 0.0)
            << "%)\n"
            << std::setprecision(4) << "accuracy before pruning: " << accuracy_before
            << ", after pruning (before fine-tuning): " << accuracy_pruned << "\n";
  if (p.fine_tune_epochs == 0) return accuracy_pruned;
  // A new optimizer: pruning replaced the tensors the old one held (and fine-tuning starts afresh).
  const std::unique_ptr<optim::Optimizer> adam_made = examples::make_adam(cfg, model.parameters(), p.fine_tune_lr);
  optim::Optimizer& adam = *adam_made;
  data::BatchLoader loader(train, cfg.batch_size, /*shuffle=*/true, static_cast<uint64_t>(cfg.seed) + 1);
  optim::CosineWithWarmup schedule(adam, /*warmup_steps=*/0, p.fine_tune_epochs * loader.num_batches());
  examples::Precision precision = examples::make_precision(cfg);
  auto splitter = examples::make_splitter(cfg, adam, model, precision.scaler.get());
  std::function<void()> after_step;
  if (pruner) after_step = [&pruner] { pruner->apply(); };
  std::cout << "fine-tuning: " << p.fine_tune_epochs << (p.fine_tune_epochs == 1 ? " epoch" : " epochs") << ", Adam lr "
            << std::defaultfloat << p.fine_tune_lr << " (cosine)\n";
  for (int64_t e = 0; e < p.fine_tune_epochs; ++e)
    history.push_back(examples::train_one_epoch(model, *splitter, &schedule, loader, device, e, p.fine_tune_epochs,
                                                precision.autocast, nullptr, nullptr, nullptr, after_step,
                                                examples::activation_offload(cfg)));
  if (pruner)
    std::cout << "magnitude pruning after fine-tuning: " << std::setprecision(4) << pruner->sparsity()
              << " of the masked weights are exactly 0\n";
  return examples::evaluate(model, test, /*batch_size=*/500, device);
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
  // Smaller models (docs/smaller-models.md).
  std::string model_kind = "cnn";
  std::string load_model;
  Pruning pruning;
  flags.add("model", &model_kind,
            "cnn, or mobilenet: a stem conv and four depthwise-separable blocks, global average pooling (--channels "
            "is the stem's width)",
            examples::Flags::Check<std::string>([](const std::string& v) {
              return v == "cnn" || v == "mobilenet" ? std::string() : std::string("expected cnn or mobilenet");
            }));
  auto fraction = examples::Flags::Check<double>(
      [](const double& v) { return v >= 0 && v < 1 ? std::string() : std::string("must be in [0, 1)"); });
  flags.add("prune-channels", &pruning.channels,
            "after training, remove this fraction of each conv's output channels (smallest L1 norm) with the matching "
            "BatchNorm entries and next-layer inputs, then fine-tune",
            fraction);
  flags.add("prune-magnitude", &pruning.magnitude,
            "after training (and channel pruning), set this fraction of each conv and linear weight (smallest |w|) to "
            "0, held there by masks while fine-tuning",
            fraction);
  flags.add("fine-tune-epochs", &pruning.fine_tune_epochs, "epochs of fine-tuning after pruning",
            examples::at_least<int64_t>(0));
  flags.add("fine-tune-lr", &pruning.fine_tune_lr, "Adam's learning rate for fine-tuning (cosine to 0)",
            examples::positive());
  flags.add("load-model", &load_model,
            "start from this state dict (written by --save-model with the same model flags) instead of training");
  if (auto code = flags.parse(argc, argv)) return *code;
  if (model_kind == "mobilenet" && (group_norm || !batch_norm || inplace_relu)) {
    std::cerr << "cnn_fashion_mnist: --model mobilenet always uses BatchNorm and plain ReLU (--group-norm, "
                 "--batch-norm=false and --inplace-relu are for the cnn; see --help)\n";
    return 2;
  }
  if (pruning.on() && (cfg.ddp || cfg.zero > 0 || cfg.save_every > 0 || !cfg.resume.empty() || cfg.plan)) {
    std::cerr << "cnn_fashion_mnist: --prune-channels and --prune-magnitude are not supported with --ddp, --zero, "
                 "--save-every, --resume or --plan (see --help)\n";
    return 2;
  }
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
        examples::image_classifier_step(
            device, cfg.lr,
            [channels, batch_norm, group_norm, inplace_relu, model_kind](nn::CheckpointMode mode) {
              std::vector<int64_t> s;
              auto m = model_kind == "mobilenet" ? examples::make_fashion_mobilenet(channels, &s)
                                                 : make_cnn(channels, batch_norm, group_norm, &s, inplace_relu);
              m->set_checkpoint(mode, s);
              return std::shared_ptr<nn::Module>(m);
            }),
        space);
    manual_seed(static_cast<uint64_t>(cfg.seed));
    examples::MemoryReporting memory(cfg, device, "CNN on Fashion-MNIST");

    std::vector<int64_t> stages;
    auto model = model_kind == "mobilenet" ? examples::make_fashion_mobilenet(channels, &stages)
                                           : make_cnn(channels, batch_norm, group_norm, &stages, inplace_relu);
    model->set_checkpoint(nn::parse_checkpoint_mode(cfg.recompute, "--checkpoint"), stages);
    if (!load_model.empty()) model->load(load_model);
    model->to(device);
    examples::print_model(*model);
    // The data, Adam, the loader, --precision, --micro-batches, --save-every / --resume, --leak-check.
    examples::ClassifierTraining run(cfg, device, model, parallel);
    run.train(load_model.empty() ? cfg.epochs : 0);                             // --load-model: trained already
    if (!cfg.save_model.empty() && !pruning.on()) model->save(cfg.save_model);  // pruning: the pruned one, below

    double accuracy = run.evaluate(*model, /*batch_size=*/500);
    if (pruning.on()) {
      // The peaks so far are training's; pruning measures a step of each model, which resets them,
      // so the peaks printed at the end are those of fine-tuning.
      std::cout << "before pruning, ";
      memory.print_peaks();
      accuracy =
          prune_and_fine_tune(*model, pruning, cfg, device, run.data.train, run.data.test, accuracy, run.history);
      if (!cfg.save_model.empty()) model->save(cfg.save_model);  // the pruned model (it loads into itself only)
      std::cout << "after pruning (fine-tuning), ";
    }
    run.print_report(memory, planned, accuracy);
    return 0;
  });
}
