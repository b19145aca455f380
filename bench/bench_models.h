// headroom-bench's presets and the workloads they build: a preset names one configuration
// (model x batch x precision x technique), a Workload is that configuration made real on a
// device -- model, optimizer, a fixed synthetic batch -- with one training step to call.
//
// Kept apart from the program (headroom_bench.cpp) and the reports (bench_report.h) so the
// preset table reads as a table, and so bench/pytorch_reference.py can mirror it field by field:
// the two must build the same models with the same optimizers for their numbers to compare.
//
// Models (DESIGN.md, "Reference workloads"):
//   GPT      nn::GPT; GPT-2 small is GPTConfig::gpt2_small() (vocab 50304 = 50257 padded to a
//            multiple of 64; the tokens are drawn from the real 50257), AdamW lr 6e-4,
//            betas (0.9, 0.95), weight decay 0.1.
//   MLP      Linear+ReLU stack, 784-4096-4096-4096-10, SGD lr 0.01 with momentum 0.9.
//   ResNet-18  CIFAR-style: a 3x3 stem without max-pool, four stages of two BasicBlocks
//            (64, 128, 256, 512 channels; stride 2 from the second stage), global average
//            pooling, Linear to 10 classes; SGD lr 0.01 with momentum 0.9.
//   CNN      cnn_fashion_mnist's CNN (docs/smaller-models.md) on 1x28x28: conv 1->16 and 16->32
//            (3x3, BatchNorm, ReLU, max-pool 2), Linear 1568->128->10; "cnn-small-pruned" is it after
//            nn::prune_channels (the fraction of Preset::prune_channels, chosen by L1 norm on the
//            freshly initialised filters: the shapes are what matter to memory and time).
//   MobileNet  the separable net of cnn_fashion_mnist --model mobilenet: conv 1->16, four
//            depthwise-separable blocks (16->32 s2, 32->32, 32->64 s2, 64->64), global average
//            pooling, Linear 64->10. Both SGD lr 0.01 with momentum 0.9.
// Inputs are random (tokens, N(0,1) images, labels) and fixed for the run: the benchmark
// measures a training step, not a data pipeline, and a fixed batch makes the loss fall, which
// shows the step really trains.
//
// Precision f16 and bf16 is mixed precision (autograd/autocast.h): f32 master weights, gradients
// and optimizer state; matmuls and convolutions in 16 bits inside an autocast scope, each weight
// cast once per step; f16 adds dynamic loss scaling (optim/grad_scaler.h). Technique
// "micro-batches k" runs each step's batch as k micro-batches with gradient accumulation
// (optim/batch_split.h) -- the same step, a smaller activation peak. Technique "checkpoint"
// (nn/checkpoint.h, docs/checkpointing.md) drops activations in forward and recomputes them in
// backward: GPT per transformer block (GPTConfig::checkpoint), ResNet-18 per stage (each stage's
// two BasicBlocks are one segment); -ckpt-sqrt runs checkpoint_sequential over those blocks
// (round(sqrt(n)) segments, the last one kept). The same gradients, bit for bit, for one more
// forward of the checkpointed segments; the report prints each -ckpt- preset's step time and
// activation peak against its base preset's when both ran (checkpoint_overheads()).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "headroom.h"
#include "nn/nn.h"
#include "nn/parallel/pipeline.h"
#include "optim/optim.h"

namespace headroom::bench {

// timed_stages: K stages of a fixed cost -- each waits a set time per row in forward and twice
// that in backward (a device's kernel time, not the host's cores) -- for the pipeline's bubble.
enum class ModelKind : uint8_t { gpt, mlp, resnet18, timed_stages, cnn };

struct Preset {
  std::string name;
  std::string description;  // one line, for --list
  ModelKind kind = ModelKind::gpt;
  // "gpt2-small", "gpt-tiny", "mlp", "mlp-small", "resnet18", "resnet18-small", "cnn-small",
  // "cnn-small-pruned", "mobilenet-small"
  std::string model;
  int64_t batch = 1;
  DType dtype = DType::f32;   // f32, or the autocast dtype (f16, bf16)
  int64_t micro_batches = 1;  // gradient accumulation over this many micro-batches
  // Recompute checkpointing: GPT per block, ResNet-18 per stage; sqrt over those (the MLP: none).
  nn::CheckpointMode checkpoint = nn::CheckpointMode::none;
  // Data parallelism (nn/parallel/ddp.h): the batch is the global one, each of the world's N
  // ranks (mpirun -np N headroom-bench ...; alone, N = 1) runs batch / N of it.
  bool ddp = false;
  int zero_stage = 0;           // with ddp: ZeRO stage 1 or 2 (optim/zero.h)
  int64_t bucket_cap_mib = 25;  // with ddp: DDPOptions::bucket_cap_bytes
  // Several devices in one process (docs/model-parallel.md): devices 0..N-1 of the bench's
  // device kind (cpu:0..cpu:N-1 on the CPU), f32.
  int64_t pipeline_stages = 1;  // > 1: nn::Pipeline over this many stages, micro_batches its M
  nn::PipelineSchedule schedule = nn::PipelineSchedule::one_f_one_b;
  int64_t tensor_parallel = 1;  // > 1: every GPT block split over this many devices
  int64_t replicas = 1;         // > 1: nn::DataParallel over this many devices
  double stage_ms_per_row = 0;  // timed_stages: each stage's forward wait per row (backward: twice)
  bool inplace_relu = false;    // ResNet-18: relu_ after each BatchNorm and residual add
  // Offload (docs/offload.md): saved activations of 64 KiB or more to the pinned host pool
  // (ActivationOffload), Adam's state on the host (OffloadedAdamW; GPT presets only).
  bool offload_activations = false;
  bool offload_optimizer = false;
  bool cpu_sized = false;  // one of the small presets that run in seconds on the CPU
  // GPT
  nn::GPTConfig gpt;
  int64_t seq_len = 0;
  int64_t token_range = 0;  // tokens are drawn from [0, token_range)
  // MLP: in, hidden..., out
  std::vector<int64_t> widths;
  // ResNet-18; the CNN and MobileNet (ModelKind::cnn) use base_width, image_size and classes too
  int64_t base_width = 64;  // channels of the stem and the first stage
  int64_t image_size = 32;
  int64_t classes = 10;
  double prune_channels = 0;  // CNN: this fraction of each conv's output channels removed (nn/prune.h)

  int64_t items_per_step() const { return kind == ModelKind::gpt ? batch * seq_len : batch; }
  const char* item_unit() const {
    return kind == ModelKind::gpt ? "tokens" : kind == ModelKind::timed_stages ? "rows" : "images";
  }
  // How many devices the preset runs on (1, or its stages, ranks or replicas).
  int64_t device_count() const { return std::max({pipeline_stages, tensor_parallel, replicas}); }
  bool several_devices() const { return device_count() > 1; }
  // GPipe's idle share for equal stages, (K-1)/(M+K-1) (1F1B's is the same); 0 without stages.
  double ideal_bubble() const;
  // "naive attention" or "fused attention" for GPT, "none" for the others; then
  // ", 4 micro-batches" when split, ", checkpoint per block" (GPT) / ", checkpoint per stage"
  // (ResNet-18) / ", checkpoint sqrt(n) segments" when checkpointed.
  std::string technique() const;
  // The preset this one is measured against: the name without its -ckpt-block / -ckpt-sqrt
  // suffix, or "" for a preset without checkpointing.
  std::string checkpoint_base() const;
  // "f32", "f16 autocast", "bf16 autocast".
  std::string precision_label() const;
};

// Every preset, GPU-sized ones first, in --list order.
const std::vector<Preset>& all_presets();
// Group names that stand for several presets: "cpu", "gpu", "gpt2-small", "all".
std::vector<std::string> preset_groups();
// The presets `names` asks for, in order, each once; names are preset names or group names.
// Throws ValueError naming the unknown name and listing what exists.
std::vector<Preset> select_presets(const std::vector<std::string>& names);

// A compact ResNet-18 for small images (CIFAR layout), from nn layers.
class BasicBlock : public nn::Module {
 public:
  BasicBlock(int64_t in_channels, int64_t out_channels, int64_t stride, bool inplace_relu = false);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "BasicBlock"; }

  std::shared_ptr<nn::Conv2d> conv1, conv2, down_conv;  // down_conv: only when the shape changes
  std::shared_ptr<nn::BatchNorm2d> bn1, bn2, down_bn;
  bool inplace_relu = false;
};

// `mode` runs the four stages through nn::run_checkpointed: block checkpoints each stage,
// sqrt checkpoints the first two as one segment and keeps the last two (round(sqrt(4)) = 2).
// The stem and the head are cheap to keep and are never recomputed.
class ResNet18 : public nn::Module {
 public:
  ResNet18(int64_t base_width, int64_t image_size, int64_t classes, nn::CheckpointMode mode = nn::CheckpointMode::none,
           bool inplace_relu = false);
  Tensor forward(const Tensor& x) override;  // [N, 3, S, S] -> [N, classes]
  std::string name() const override { return "ResNet18"; }

  std::shared_ptr<nn::Conv2d> stem;
  std::shared_ptr<nn::BatchNorm2d> stem_bn;
  std::vector<std::shared_ptr<nn::Sequential>> stages;  // layer1..layer4
  std::shared_ptr<nn::Linear> fc;
  int64_t pool_kernel;
  nn::CheckpointMode checkpoint;
  bool inplace_relu = false;

 private:
  std::vector<std::shared_ptr<nn::Module>> stage_modules_;  // `stages` as run_checkpointed takes them
};

// A preset built on a device: step() runs one training step (zero_grad, forward, loss,
// backward, optimizer step) on the fixed batch and returns the loss, detached.
struct Workload {
  std::vector<Device> devices;              // several-device presets: devices 0..N-1
  std::shared_ptr<nn::Pipeline> pipeline;   // pipeline presets (its last_stats: the bubble)
  std::vector<std::shared_ptr<void>> keep;  // what the step needs kept alive
  std::shared_ptr<nn::Module> model;
  std::shared_ptr<nn::DistributedDataParallel> ddp;  // data-parallel presets
  std::unique_ptr<optim::Optimizer> optimizer;
  std::unique_ptr<optim::GradScaler> scaler;       // f16 only
  std::unique_ptr<optim::BatchSplitter> splitter;  // runs every step (one micro-batch: the plain step)
  Tensor input, target;
  int64_t parameters = 0;
  std::function<Tensor()> step;
};

// The devices a preset runs on: `device` alone, or devices 0..N-1 of its kind (DeviceError when
// there are fewer, naming HEADROOM_CPU_DEVICES on the CPU).
std::vector<Device> preset_devices(const Preset& preset, Device device);

// Builds the model (initialised from the global generator: manual_seed first) in f32, moves it to
// `device` (a several-device preset: splits it over preset_devices), makes the optimizer, the scaler for f16, the splitter and the batch (from `seed`).
// A data-parallel preset runs over `group` (dist::world() when null), on this rank's share of
// the batch; ValueError when the batch does not divide among the ranks.
std::unique_ptr<Workload> make_workload(const Preset& preset, Device device, uint64_t seed,
                                        dist::ProcessGroup* group = nullptr);

}  // namespace headroom::bench
