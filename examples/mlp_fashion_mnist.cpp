// A multi-layer perceptron on Fashion-MNIST: the smallest complete training program --
// data, model, optimizer, loop, evaluation -- on headroom's public API.
//
// 784-256-128-10 with ReLU, trained with Adam (lr 2e-3 decayed to 0 by a per-step cosine,
// batch 128): it needs no tuning and reaches about 0.88 test accuracy in 5 epochs (0.873 with
// a constant 1e-3), where SGD would want a learning-rate search.
//
//   ./mlp_fashion_mnist                      # 5 epochs on the CPU
//   ./mlp_fashion_mnist --epochs 1 --train-limit 2000
#include "examples/common.h"

using namespace headroom;

namespace {

std::shared_ptr<nn::Sequential> make_mlp() {
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Flatten>(),  // [N, 1, 28, 28] -> [N, 784]
      std::make_shared<nn::Linear>(784, 256), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(256, 128),
      std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(128, 10)});  // logits
}

}  // namespace

int main(int argc, char** argv) {
  examples::TrainConfig cfg;  // 5 epochs, batch 128, cosine schedule
  cfg.lr = 2e-3;
  examples::Flags flags("mlp_fashion_mnist", "Trains a 784-256-128-10 MLP on Fashion-MNIST with Adam.");
  examples::add_training_flags(flags, cfg);
  if (auto code = flags.parse(argc, argv)) return *code;

  return examples::run_reporting_errors([&] {
    const Device device = Device::parse(cfg.device);
    examples::DataParallel parallel(cfg, "mlp_fashion_mnist");  // --ddp, --zero: under mpirun
    // --memory-budget 256MiB --plan: precision, checkpointing and micro-batches chosen before the
    // first step (optim/plan.h).
    optim::PlanSpace space = optim::PlanSpace::for_batch(cfg.batch_size);
    space.has_attention = false;
    const auto planned =
        examples::plan_techniques(cfg, device,
                                  examples::image_classifier_step(device, cfg.lr,
                                                                  [](nn::CheckpointMode mode) {
                                                                    auto m = make_mlp();
                                                                    m->set_checkpoint(mode, {0, 3, 5});
                                                                    return std::shared_ptr<nn::Module>(m);
                                                                  }),
                                  space);
    manual_seed(static_cast<uint64_t>(cfg.seed));
    examples::MemoryReporting memory(cfg, device, "MLP on Fashion-MNIST");

    auto model = make_mlp();
    // --checkpoint block: the blocks [Flatten, Linear, ReLU], [Linear, ReLU], [Linear].
    model->set_checkpoint(nn::parse_checkpoint_mode(cfg.recompute, "--checkpoint"), {0, 3, 5});
    model->to(device);
    examples::print_model(*model);
    // The data, Adam, the loader, --precision, --micro-batches, --save-every / --resume, --leak-check.
    examples::ClassifierTraining run(cfg, device, model, parallel);
    run.train(cfg.epochs);
    if (!cfg.save_model.empty()) model->save(cfg.save_model);

    const double accuracy = run.evaluate(*model, /*batch_size=*/1000);
    run.print_report(memory, planned, accuracy);
    return 0;
  });
}
