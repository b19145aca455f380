// The preset table and the workloads (bench_models.h). One function builds each model family;
// the table below is the only place a preset's numbers are written down.
#include "bench/bench_models.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <tuple>

#include "autograd/offload.h"
#include "dist/local_group.h"
#include "engine/meta.h"
#include "optim/offload.h"
#include "nn/parallel/data_parallel.h"
#include "nn/parallel/gpt_parallel.h"

namespace headroom::bench {

std::string Preset::technique() const {
  std::string t = kind == ModelKind::gpt ? std::string(attention_impl_name(gpt.attention)) + " attention" : "none";
  if (pipeline_stages > 1)
    t = (t == "none" ? "" : t + ", ") +
        str_cat(pipeline_stages, "-stage pipeline (", nn::pipeline_schedule_name(schedule), ")");
  if (tensor_parallel > 1)
    t = (t == "none" ? "" : t + ", ") + str_cat("tensor parallel over ", tensor_parallel, " devices");
  if (replicas > 1) t = (t == "none" ? "" : t + ", ") + str_cat("DataParallel over ", replicas, " devices");
  if (micro_batches > 1) t = (t == "none" ? "" : t + ", ") + str_cat(micro_batches, " micro-batches");
  if (checkpoint != nn::CheckpointMode::none) {
    const char* unit = kind == ModelKind::gpt ? "block" : "stage";
    const std::string ck = checkpoint == nn::CheckpointMode::sqrt        ? std::string("checkpoint sqrt(n) segments")
                           : checkpoint == nn::CheckpointMode::selective ? str_cat("selective checkpoint per ", unit)
                                                                         : str_cat("checkpoint per ", unit);
    t = (t == "none" ? "" : t + ", ") + ck;
  }
  if (inplace_relu) t = (t == "none" ? "" : t + ", ") + "ReLU in place";
  if (offload_activations) t = (t == "none" ? "" : t + ", ") + "activations offloaded";
  if (offload_optimizer) t = (t == "none" ? "" : t + ", ") + "AdamW state offloaded";
  if (prune_channels > 0)
    t = (t == "none" ? "" : t + ", ") +
        str_cat(static_cast<int>(std::lround(prune_channels * 100)), "% of channels pruned");
  if (ddp) {
    const std::string d = zero_stage > 0 ? str_cat("ZeRO-", zero_stage, " over the ranks")
                                         : str_cat("DDP over the ranks, ", bucket_cap_mib, " MiB buckets");
    t = (t == "none" ? "" : t + ", ") + d;
  }
  return t;
}

std::string Preset::checkpoint_base() const {
  if (checkpoint == nn::CheckpointMode::none) return "";
  const std::string suffix = str_cat("-ckpt-", nn::checkpoint_mode_name(checkpoint));
  HR_CHECK(name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0,
           ValueError, "preset ", name, ": a checkpointed preset's name ends in ", suffix);
  return name.substr(0, name.size() - suffix.size());
}

double Preset::ideal_bubble() const {
  if (pipeline_stages <= 1) return 0;
  const auto k = static_cast<double>(pipeline_stages), m = static_cast<double>(std::min(micro_batches, batch));
  return (k - 1) / (m + k - 1);
}

std::string Preset::precision_label() const {
  return dtype == DType::f32 ? "f32" : std::string(dtype_name(dtype)) + " autocast";
}

namespace {
std::string precision_words(DType dtype) {
  if (dtype == DType::f32) return "f32";
  return str_cat(dtype_name(dtype), " autocast", dtype == DType::f16 ? " + loss scaling" : "");
}
std::string split_words(int64_t k) { return k > 1 ? str_cat(", ", k, " micro-batches") : std::string(); }
std::string split_suffix(int64_t k) { return k > 1 ? str_cat("-mb", k) : std::string(); }
// `unit` is what mode block checkpoints: "block" (GPT) or "stage" (ResNet-18).
std::string checkpoint_words(nn::CheckpointMode mode, const char* unit) {
  switch (mode) {
    case nn::CheckpointMode::none: break;
    case nn::CheckpointMode::block: return str_cat(", checkpoint per ", unit);
    case nn::CheckpointMode::sqrt: return ", checkpoint sqrt(n) segments";
    case nn::CheckpointMode::selective: return str_cat(", selective checkpoint per ", unit);
  }
  return "";
}
std::string checkpoint_suffix(nn::CheckpointMode mode) {
  return mode == nn::CheckpointMode::none ? std::string() : str_cat("-ckpt-", nn::checkpoint_mode_name(mode));
}
// A data-parallel version of `base`: "-ddp" (25 MiB buckets), "-ddp-b<MiB>" (another bucket
// size), "-zero1" / "-zero2".
Preset data_parallel(Preset p, int zero_stage, int64_t bucket_cap_mib = 25) {
  p.ddp = true;
  p.zero_stage = zero_stage;
  p.bucket_cap_mib = bucket_cap_mib;
  if (zero_stage > 0) {
    p.name += str_cat("-zero", zero_stage);
    p.description += str_cat(", ZeRO-", zero_stage, " over the ranks");
  } else {
    p.name += bucket_cap_mib == 25 ? std::string("-ddp") : str_cat("-ddp-b", bucket_cap_mib);
    p.description += str_cat(", DDP over the ranks (", bucket_cap_mib, " MiB buckets)");
  }
  return p;
}
}  // namespace

namespace {

Preset gpt2_small(DType dtype, AttentionImpl attention, int64_t micro_batches = 1,
                  nn::CheckpointMode checkpoint = nn::CheckpointMode::none) {
  Preset p;
  p.micro_batches = micro_batches;
  p.checkpoint = checkpoint;
  p.kind = ModelKind::gpt;
  p.model = "gpt2-small";
  p.gpt = nn::GPTConfig::gpt2_small();
  p.gpt.attention = attention;
  p.gpt.checkpoint = checkpoint;
  p.batch = 8;
  p.seq_len = 1024;
  p.token_range = 50257;
  p.dtype = dtype;
  p.name = str_cat("gpt2-small-", dtype_name(dtype), "-", attention_impl_name(attention), split_suffix(micro_batches),
                   checkpoint_suffix(checkpoint));
  p.description = str_cat("GPT-2 small (124M, 12x768, vocab 50304), B=8 T=1024, ", precision_words(dtype), ", ",
                          attention_impl_name(attention), " attention", split_words(micro_batches),
                          checkpoint_words(checkpoint, "block"), ", AdamW");
  return p;
}

// Two blocks: round(sqrt(2)) = 1 segment, and checkpoint_sequential keeps its last segment, so
// sqrt would checkpoint nothing here -- the small GPT has -ckpt-block only.
Preset gpt_tiny(DType dtype, AttentionImpl attention, int64_t micro_batches = 1,
                nn::CheckpointMode checkpoint = nn::CheckpointMode::none) {
  Preset p;
  p.micro_batches = micro_batches;
  p.checkpoint = checkpoint;
  p.kind = ModelKind::gpt;
  p.model = "gpt-tiny";
  p.gpt.vocab_size = 512;
  p.gpt.block_size = 128;
  p.gpt.n_layer = 2;
  p.gpt.n_head = 4;
  p.gpt.n_embd = 128;
  p.gpt.attention = attention;
  p.gpt.checkpoint = checkpoint;
  p.batch = 4;
  p.seq_len = 128;
  p.token_range = 512;
  p.dtype = dtype;
  p.cpu_sized = true;
  p.name = str_cat("gpt-tiny-cpu-", dtype_name(dtype), "-", attention_impl_name(attention), split_suffix(micro_batches),
                   checkpoint_suffix(checkpoint));
  p.description = str_cat("small GPT (2x128, 4 heads, vocab 512), B=4 T=128, ", precision_words(dtype), ", ",
                          attention_impl_name(attention), " attention", split_words(micro_batches),
                          checkpoint_words(checkpoint, "block"), ", AdamW");
  return p;
}

Preset mlp(bool small, DType dtype = DType::f32, int64_t micro_batches = 1) {
  Preset p;
  p.dtype = dtype;
  p.micro_batches = micro_batches;
  p.kind = ModelKind::mlp;
  p.model = small ? "mlp-small" : "mlp";
  p.widths = small ? std::vector<int64_t>{784, 512, 512, 512, 10} : std::vector<int64_t>{784, 4096, 4096, 4096, 10};
  p.batch = small ? 256 : 4096;
  p.cpu_sized = small;
  p.name = str_cat(small ? "mlp-cpu-" : "mlp-", dtype_name(dtype), split_suffix(micro_batches));
  p.description = str_cat(small ? "MLP 784-512-512-512-10, batch 256, " : "MLP 784-4096-4096-4096-10, batch 4096, ",
                          precision_words(dtype), split_words(micro_batches), ", SGD momentum");
  return p;
}

Preset resnet18(bool small, DType dtype = DType::f32, int64_t micro_batches = 1,
                nn::CheckpointMode checkpoint = nn::CheckpointMode::none) {
  Preset p;
  p.dtype = dtype;
  p.micro_batches = micro_batches;
  p.checkpoint = checkpoint;
  p.kind = ModelKind::resnet18;
  p.model = small ? "resnet18-small" : "resnet18";
  p.base_width = small ? 16 : 64;
  p.batch = small ? 16 : 256;
  p.cpu_sized = small;
  p.name = str_cat(small ? "resnet18-cpu-" : "resnet18-", dtype_name(dtype), split_suffix(micro_batches),
                   checkpoint_suffix(checkpoint));
  p.description = str_cat(small ? "ResNet-18 at quarter width (16..128 channels), 3x32x32, batch 16, "
                                : "ResNet-18 (CIFAR stem, 64..512 channels), 3x32x32, batch 256, ",
                          precision_words(dtype), split_words(micro_batches), checkpoint_words(checkpoint, "stage"),
                          ", SGD momentum");
  return p;
}

// Smaller models (docs/smaller-models.md): the Fashion-MNIST CNN whole and with half its channels
// pruned, and the MobileNet-style net of depthwise-separable blocks; CPU-sized.
Preset fashion_cnn(bool mobilenet, double prune_channels = 0) {
  Preset p;
  p.kind = ModelKind::cnn;
  p.model = mobilenet ? "mobilenet-small" : prune_channels > 0 ? "cnn-small-pruned" : "cnn-small";
  p.base_width = 16;
  p.image_size = 28;
  p.classes = 10;
  p.batch = 128;
  p.prune_channels = prune_channels;
  p.cpu_sized = true;
  const int pct = static_cast<int>(std::lround(prune_channels * 100));
  p.name = str_cat(mobilenet ? "mobilenet-cpu-f32" : "cnn-cpu-f32", prune_channels > 0 ? str_cat("-prune", pct) : "");
  p.description = mobilenet
                      ? std::string("MobileNet-style (conv 16, 4 depthwise-separable blocks to 64, global pool), ")
                  : prune_channels > 0
                      ? str_cat("Fashion-MNIST CNN with ", pct, "% of channels pruned by L1 (8, 16, linear 784-128), ")
                      : std::string("Fashion-MNIST CNN (conv 16, 32, BatchNorm, linear 1568-128-10), ");
  p.description += "1x28x28, batch 128, f32, SGD momentum";
  return p;
}

// The CNN (or MobileNet) of a ModelKind::cnn preset, its conv stages as checkpoint blocks.
std::shared_ptr<nn::Sequential> make_fashion_model(const Preset& p) {
  const int64_t c = p.base_width;
  auto m = std::make_shared<nn::Sequential>();
  std::vector<int64_t> starts;
  if (p.model == "mobilenet-small") {
    starts.push_back(m->size());
    m->push_back(std::make_shared<nn::Conv2d>(1, c, 3, 1, 1, 1, false));
    m->push_back(std::make_shared<nn::BatchNorm2d>(c));
    m->push_back(std::make_shared<nn::ReLU>());
    for (auto [in, out, stride] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {c, 2 * c, 2}, {2 * c, 2 * c, 1}, {2 * c, 4 * c, 2}, {4 * c, 4 * c, 1}}) {
      starts.push_back(m->size());
      m->push_back(std::make_shared<nn::DepthwiseSeparableConv2d>(in, out, stride));
    }
    starts.push_back(m->size());
    m->push_back(std::make_shared<nn::AvgPool2d>(p.image_size / 4));
    m->push_back(std::make_shared<nn::Flatten>());
    m->push_back(std::make_shared<nn::Linear>(4 * c, p.classes));
  } else {
    for (auto [in, out] : {std::pair{int64_t{1}, c}, std::pair{c, 2 * c}}) {
      starts.push_back(m->size());
      m->push_back(std::make_shared<nn::Conv2d>(in, out, 3, 1, 1, 1, false));
      m->push_back(std::make_shared<nn::BatchNorm2d>(out));
      m->push_back(std::make_shared<nn::ReLU>());
      m->push_back(std::make_shared<nn::MaxPool2d>(2));
    }
    starts.push_back(m->size());
    m->push_back(std::make_shared<nn::Flatten>());
    m->push_back(std::make_shared<nn::Linear>(2 * c * (p.image_size / 4) * (p.image_size / 4), 128));
    m->push_back(std::make_shared<nn::ReLU>());
    m->push_back(std::make_shared<nn::Linear>(128, p.classes));
    if (p.prune_channels > 0) nn::prune_channels(*m, p.prune_channels);
  }
  m->set_checkpoint(p.checkpoint, starts);
  return m;
}

// In-place ReLU (Note [differentiable in-place]): "-inplace", the same model otherwise.
Preset inplace(Preset p) {
  p.inplace_relu = true;
  p.name += "-inplace";
  p.description += ", ReLU in place";
  return p;
}

// Offload (docs/offload.md): "-offload" (saved activations to the host), "-offload-opt"
// (AdamW's moments and master weights on the host, the update there).
Preset offloaded(Preset p, bool activations, bool optimizer) {
  p.offload_activations = activations;
  p.offload_optimizer = optimizer;
  p.name += activations && optimizer ? "-offload-all" : activations ? "-offload" : "-offload-opt";
  if (activations) p.description += ", activations offloaded to the host";
  if (optimizer) p.description += ", AdamW state on the host";
  return p;
}

// Several devices (docs/model-parallel.md). A 4-block GPT (so that 4 stages have a block each)
// as one device, cut into pipeline stages, or split by tensor parallelism.
Preset gpt_deep(int64_t stages = 1, nn::PipelineSchedule schedule = nn::PipelineSchedule::one_f_one_b,
                int64_t micro_batches = 1, int64_t tensor_parallel = 1) {
  Preset p = gpt_tiny(DType::f32, AttentionImpl::fused);  // gpt-tiny with 4 blocks and a batch of 8
  p.model = "gpt-4l";
  p.gpt.n_layer = 4;
  p.batch = 8;
  p.pipeline_stages = stages;
  p.schedule = schedule;
  p.micro_batches = micro_batches;
  p.tensor_parallel = tensor_parallel;
  p.name = "gpt-4l-cpu-f32-fused";
  p.description = "small GPT (4x128, 4 heads, vocab 512), B=8 T=128, f32, fused attention";
  if (stages > 1) {
    p.name += str_cat("-pp", stages, "-", nn::pipeline_schedule_name(schedule), "-mb", micro_batches);
    p.description += str_cat(", ", stages, "-stage pipeline (", nn::pipeline_schedule_name(schedule), ") on ", stages,
                             " devices, ", micro_batches, " micro-batches");
  }
  if (tensor_parallel > 1) {
    p.name += str_cat("-tp", tensor_parallel);
    p.description += str_cat(", tensor parallel over ", tensor_parallel, " devices");
  }
  p.description += ", AdamW";
  return p;
}

// The MLP's batch split over replicas on devices 0..R-1 (nn::DataParallel), its gradients summed
// on the first.
Preset mlp_data_parallel(int64_t replicas) {
  Preset p = mlp(true);
  p.replicas = replicas;
  p.name += str_cat("-dp", replicas);
  p.description =
      str_cat("MLP 784-512-512-512-10, batch 256, f32, DataParallel over ", replicas, " devices, SGD momentum");
  return p;
}

// K stages of a fixed cost (ModelKind::timed_stages): the bubble of a schedule, measured.
Preset timed_stages(int64_t stages, nn::PipelineSchedule schedule, int64_t micro_batches) {
  Preset p;
  p.kind = ModelKind::timed_stages;
  p.model = "timed-stages";
  p.batch = 32;
  p.widths = {32, 32};
  p.stage_ms_per_row = 0.5;
  p.pipeline_stages = stages;
  p.schedule = schedule;
  p.micro_batches = micro_batches;
  p.cpu_sized = true;
  p.name = str_cat("stages-cpu-pp", stages, "-", nn::pipeline_schedule_name(schedule), "-mb", micro_batches);
  p.description = str_cat(stages, " stages of fixed cost (Linear 32x32 + a wait of 0.5 ms per row forward, 1 ",
                          "backward), batch 32, f32, ", nn::pipeline_schedule_name(schedule), ", ", micro_batches,
                          " micro-batches, SGD");
  return p;
}

std::vector<Preset> build_presets() {
  std::vector<Preset> v;
  for (DType dt : {DType::f32, DType::f16, DType::bf16})
    for (AttentionImpl a : {AttentionImpl::naive, AttentionImpl::fused}) v.push_back(gpt2_small(dt, a));
  v.push_back(gpt2_small(DType::f16, AttentionImpl::naive, 4));  // DESIGN.md: "4 micro-batches of 2"
  // Checkpointing against gpt2-small-bf16-fused, resnet18-f32 and their small versions.
  v.push_back(gpt2_small(DType::bf16, AttentionImpl::fused, 1, nn::CheckpointMode::block));
  v.push_back(gpt2_small(DType::bf16, AttentionImpl::fused, 1, nn::CheckpointMode::sqrt));
  v.push_back(gpt2_small(DType::bf16, AttentionImpl::fused, 1, nn::CheckpointMode::selective));
  v.push_back(offloaded(gpt2_small(DType::bf16, AttentionImpl::fused), true, false));
  v.push_back(offloaded(gpt2_small(DType::bf16, AttentionImpl::fused), false, true));
  v.push_back(mlp(false));
  v.push_back(mlp(false, DType::bf16));
  v.push_back(resnet18(false));
  v.push_back(resnet18(false, DType::bf16));
  v.push_back(resnet18(false, DType::f32, 4));
  v.push_back(resnet18(false, DType::f32, 1, nn::CheckpointMode::block));
  v.push_back(resnet18(false, DType::f32, 1, nn::CheckpointMode::sqrt));
  v.push_back(resnet18(false, DType::f32, 1, nn::CheckpointMode::selective));
  v.push_back(inplace(resnet18(false)));  // against resnet18-f32
  // Data parallelism: GPT-2 small under DDP and both ZeRO stages; the bucket-size sweep on the
  // MLP (140 MiB of gradients; a parameter is never split between buckets, so its two 64 MiB
  // matrices are a bucket each below 64 MiB: 6 buckets at 1 and 5 MiB, 5 at 25, 3 at 100).
  v.push_back(data_parallel(gpt2_small(DType::bf16, AttentionImpl::fused), 0));
  v.push_back(data_parallel(gpt2_small(DType::bf16, AttentionImpl::fused), 1));
  v.push_back(data_parallel(gpt2_small(DType::bf16, AttentionImpl::fused), 2));
  for (int64_t cap : {1, 5, 25, 100}) {
    Preset m = data_parallel(mlp(false), 0, cap);
    if (cap == 25) {  // the sweep names every size
      m.name += "-b25";
      m.description = mlp(false).description + ", DDP over the ranks (25 MiB buckets)";
    }
    v.push_back(m);
  }
  v.push_back(gpt_tiny(DType::f32, AttentionImpl::naive));
  v.push_back(gpt_tiny(DType::f32, AttentionImpl::fused));
  v.push_back(gpt_tiny(DType::f16, AttentionImpl::fused));
  v.push_back(gpt_tiny(DType::bf16, AttentionImpl::fused));
  v.push_back(gpt_tiny(DType::f32, AttentionImpl::naive, 4));
  v.push_back(gpt_tiny(DType::f32, AttentionImpl::fused, 1, nn::CheckpointMode::block));  // no -ckpt-sqrt: see gpt_tiny
  v.push_back(gpt_tiny(DType::f32, AttentionImpl::fused, 1, nn::CheckpointMode::selective));
  // Naive attention: Debian's PyTorch 1.13 (the CPU reference here) has no fused attention.
  v.push_back(offloaded(gpt_tiny(DType::f32, AttentionImpl::naive), true, false));
  v.push_back(offloaded(gpt_tiny(DType::f32, AttentionImpl::naive), false, true));
  v.push_back(data_parallel(gpt_tiny(DType::f32, AttentionImpl::fused), 0));
  v.push_back(data_parallel(gpt_tiny(DType::f32, AttentionImpl::fused), 1));
  v.push_back(data_parallel(gpt_tiny(DType::f32, AttentionImpl::fused), 2));
  v.push_back(mlp(true));
  v.push_back(mlp(true, DType::f16));
  v.push_back(mlp(true, DType::bf16));
  v.push_back(mlp(true, DType::f32, 4));
  v.push_back(resnet18(true));
  v.push_back(resnet18(true, DType::bf16));
  v.push_back(resnet18(true, DType::f32, 4));
  v.push_back(resnet18(true, DType::f32, 1, nn::CheckpointMode::block));
  v.push_back(resnet18(true, DType::f32, 1, nn::CheckpointMode::sqrt));
  v.push_back(resnet18(true, DType::f32, 1, nn::CheckpointMode::selective));
  v.push_back(inplace(resnet18(true)));  // against resnet18-cpu-f32
  // Smaller models (docs/smaller-models.md): the pruned CNN and the separable net against the CNN.
  v.push_back(fashion_cnn(false));
  v.push_back(fashion_cnn(false, 0.5));
  v.push_back(fashion_cnn(true));
  // Several devices in one process: the 4-block GPT whole, in pipeline stages and split by
  // tensor parallelism; the MLP under DataParallel; the bubble of K = 4 stages of equal cost
  // for M = 1, 4, 16 (issue 15's table in bench/RESULTS.md).
  v.push_back(gpt_deep());
  v.push_back(gpt_deep(2, nn::PipelineSchedule::one_f_one_b, 4));
  v.push_back(gpt_deep(4, nn::PipelineSchedule::gpipe, 8));
  v.push_back(gpt_deep(4, nn::PipelineSchedule::one_f_one_b, 8));
  v.push_back(gpt_deep(1, nn::PipelineSchedule::one_f_one_b, 1, 2));
  v.push_back(gpt_deep(1, nn::PipelineSchedule::one_f_one_b, 1, 4));
  v.push_back(mlp_data_parallel(2));
  v.push_back(mlp_data_parallel(4));
  for (int64_t m : {1, 4, 16}) v.push_back(timed_stages(4, nn::PipelineSchedule::gpipe, m));
  for (int64_t m : {4, 16}) v.push_back(timed_stages(4, nn::PipelineSchedule::one_f_one_b, m));
  return v;
}

}  // namespace

const std::vector<Preset>& all_presets() {
  static const std::vector<Preset> presets = build_presets();
  return presets;
}

std::vector<std::string> preset_groups() { return {"cpu", "gpu", "gpt2-small", "all"}; }

std::vector<Preset> select_presets(const std::vector<std::string>& names) {
  std::vector<Preset> out;
  std::set<std::string> taken;
  auto take = [&](const Preset& p) {
    if (taken.insert(p.name).second) out.push_back(p);
  };
  for (const std::string& name : names) {
    bool found = false;
    for (const Preset& p : all_presets()) {
      const bool match = p.name == name || name == "all" || (name == "cpu" && p.cpu_sized) ||
                         (name == "gpu" && !p.cpu_sized) || (name == "gpt2-small" && p.model == "gpt2-small");
      if (match) {
        take(p);
        found = true;
      }
    }
    if (!found) {
      std::string known;
      for (const Preset& p : all_presets()) known += (known.empty() ? "" : ", ") + p.name;
      for (const std::string& g : preset_groups()) known += ", " + g;
      HR_CHECK(false, ValueError, "unknown preset '", name, "'; the presets are: ", known);
    }
  }
  return out;
}

// ---- ResNet-18 ----

BasicBlock::BasicBlock(int64_t in_channels, int64_t out_channels, int64_t stride, bool inplace)
    : inplace_relu(inplace) {
  conv1 = register_module("conv1", std::make_shared<nn::Conv2d>(in_channels, out_channels, 3, stride, 1, 1, false));
  bn1 = register_module("bn1", std::make_shared<nn::BatchNorm2d>(out_channels));
  conv2 = register_module("conv2", std::make_shared<nn::Conv2d>(out_channels, out_channels, 3, 1, 1, 1, false));
  bn2 = register_module("bn2", std::make_shared<nn::BatchNorm2d>(out_channels));
  if (stride != 1 || in_channels != out_channels) {
    down_conv =
        register_module("down_conv", std::make_shared<nn::Conv2d>(in_channels, out_channels, 1, stride, 0, 1, false));
    down_bn = register_module("down_bn", std::make_shared<nn::BatchNorm2d>(out_channels));
  }
}

Tensor BasicBlock::forward(const Tensor& x) {
  // In place (Note [differentiable in-place]): BatchNorm saves its input, not its output, and the
  // sum is saved by nothing, so both ReLUs may overwrite what they read.
  auto act = [this](Tensor t) { return inplace_relu ? relu_(t) : relu(t); };
  Tensor y = act(bn1->forward(conv1->forward(x)));
  y = bn2->forward(conv2->forward(y));
  Tensor shortcut = down_conv ? down_bn->forward(down_conv->forward(x)) : x;
  return act(y + shortcut);
}

ResNet18::ResNet18(int64_t base_width, int64_t image_size, int64_t classes, nn::CheckpointMode mode, bool inplace)
    : checkpoint(mode), inplace_relu(inplace) {
  HR_CHECK(image_size % 8 == 0, ValueError, "ResNet18: image size ", image_size, " must be a multiple of 8");
  stem = register_module("stem", std::make_shared<nn::Conv2d>(3, base_width, 3, 1, 1, 1, false));
  stem_bn = register_module("stem_bn", std::make_shared<nn::BatchNorm2d>(base_width));
  int64_t in = base_width;
  for (int64_t stage = 0; stage < 4; ++stage) {  // "layer1".."layer4", each a Sequential of two blocks
    const int64_t out = base_width << stage;
    auto seq = register_module(str_cat("layer", stage + 1), std::make_shared<nn::Sequential>());
    for (int64_t i = 0; i < 2; ++i) {
      const int64_t stride = (stage > 0 && i == 0) ? 2 : 1;
      seq->push_back(std::make_shared<BasicBlock>(in, out, stride, inplace));
      in = out;
    }
    stages.push_back(seq);
    stage_modules_.push_back(seq);
  }
  fc = register_module("fc", std::make_shared<nn::Linear>(in, classes));
  pool_kernel = image_size / 8;
}

Tensor ResNet18::forward(const Tensor& x) {
  Tensor y = stem_bn->forward(stem->forward(x));
  y = inplace_relu ? relu_(y) : relu(y);
  y = nn::run_checkpointed(stage_modules_, y, checkpoint);  // mode none: the stages in order
  y = avg_pool2d(y, pool_kernel);                           // [N, 8w, 1, 1]
  return fc->forward(y.flatten(1));
}

// ---- workloads ----

namespace {

Tensor random_labels(int64_t n, int64_t range, std::mt19937_64& rng, Shape shape, Device device) {
  std::uniform_int_distribution<int64_t> pick(0, range - 1);
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = pick(rng);
  return Tensor::from_vector(v, shape, DType::i64).to(device);
}

// The step every workload runs: through the splitter (one micro-batch is the plain step), the
// forward under autocast for f16/bf16, each weight cast once per step, f16 losses scaled.
void set_step(Workload* w, const Preset& p, Device device,
              std::function<Tensor(const Tensor& x, const Tensor& y)> loss_of) {
  optim::BatchSplitter::Options options;
  if (p.dtype == DType::f16) {
    w->scaler = std::make_unique<optim::GradScaler>();
    options.scaler = w->scaler.get();  // scaled losses, scaler->step + update, abandon_step on failure
  }
  options.ddp = w->ddp.get();  // a split step communicates once
  w->splitter = std::make_unique<optim::BatchSplitter>(
      *w->optimizer, p.micro_batches, w->ddp ? static_cast<nn::Module*>(w->ddp.get()) : w->model.get(), options);
  const bool amp = p.dtype != DType::f32;
  const DType low = amp ? p.dtype : DType::bf16;
  const bool offload = p.offload_activations;
  w->step = [w, device, amp, low, offload, loss_of = std::move(loss_of)] {
    AutocastCacheScope cache;
    optim::SplitStepResult r = w->splitter->step(w->input, w->target, [&](const Tensor& x, const Tensor& y) {
      AutocastGuard guard(device, low, amp);
      std::optional<ActivationOffload> offloaded;  // Preset::offload_activations
      if (offload) offloaded.emplace(ActivationOffloadOptions{.min_bytes = 64 << 10});
      return optim::MicroBatchOutput{loss_of(x, y)};
    });
    return Tensor::scalar(r.loss);
  };
}

}  // namespace

namespace {
// Data-parallel presets: the model wrapped, the optimizer over the ranks' shards under ZeRO,
// and this rank's rows of the batch (Preset::ddp).
void distribute(Workload* w, const Preset& p, dist::ProcessGroup* group,
                const std::function<std::unique_ptr<optim::Optimizer>(std::vector<Tensor>)>& make_optimizer) {
  if (!p.ddp) {
    w->optimizer = make_optimizer(w->model->parameters());
    return;
  }
  dist::ProcessGroup& g = group ? *group : dist::world();
  HR_CHECK(p.batch % g.size() == 0, ValueError, "preset ", p.name, ": the batch of ", p.batch,
           " does not divide among ", g.size(), " ranks");
  nn::DDPOptions o;
  o.zero_stage = p.zero_stage;
  o.bucket_cap_bytes = static_cast<size_t>(p.bucket_cap_mib) << 20;
  w->ddp = std::make_shared<nn::DistributedDataParallel>(w->model, g, o);
  if (p.zero_stage > 0) w->optimizer = std::make_unique<optim::ZeroRedundancyOptimizer>(*w->ddp, make_optimizer);
  else w->optimizer = make_optimizer(w->ddp->parameters());
  const int64_t share = p.batch / g.size(), first = g.rank() * share;
  w->input = w->input.slice(0, first, first + share).contiguous();
  w->target = w->target.slice(0, first, first + share).contiguous();
}
}  // namespace

std::vector<Device> preset_devices(const Preset& p, Device device) {
  if (!p.several_devices()) return {device};
  const int n = static_cast<int>(p.device_count());
  const int have = headroom::device_count(device.type);
  // A prediction (Note [meta execution]) needs no device to exist: devices 0..N-1 stand for the
  // target's.
  HR_CHECK(have >= n || meta_active(), DeviceError, "preset ", p.name, " runs on ", n, " ",
           device_type_name(device.type), " devices, but there are ", have,
           device.is_cpu() ? " (HEADROOM_CPU_DEVICES=N makes up to 8)" : "");
  std::vector<Device> out;
  for (int k = 0; k < n; ++k) out.push_back(device.is_cpu() ? Device::cpu(k) : Device::cuda(k));
  return out;
}

namespace {

// A stage of fixed cost (ModelKind::timed_stages): waits ms_per_row per row in forward and twice
// that in backward, as a device's kernels would, without using the host's cores. Under a
// MetaScope it does not wait.
class FixedCost final : public nn::Module {
 public:
  explicit FixedCost(double ms_per_row) : ms_per_row_(ms_per_row) {}
  Tensor forward(const Tensor& x) override {
    const double ms = ms_per_row_ * static_cast<double>(x.size(0));
    wait(ms);
    Tensor y = x * 1.0;  // a node, for the backward wait
    if (y.requires_grad())
      register_hook(y, [ms](const Tensor&) -> Tensor {
        wait(2 * ms);
        return Tensor();
      });
    return y;
  }
  std::string name() const override { return "FixedCost"; }

 private:
  static void wait(double ms) {
    if (!meta_active()) std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ms));
  }
  double ms_per_row_;
};

// Several devices in one process: the pipeline, tensor-parallel and DataParallel workloads (f32;
// Preset::several_devices).
void build_several_devices(Workload* w, const Preset& p, std::mt19937_64& rng) {
  const std::vector<Device>& devs = w->devices;
  const Device first = devs.front(), last = devs.back();
  if (p.kind == ModelKind::gpt && p.pipeline_stages > 1) {
    auto model = std::make_shared<nn::GPT>(p.gpt);
    model->to(first);
    w->parameters = model->num_parameters();
    auto stages = nn::GPTStage::split(*model, devs);
    nn::PipelineOptions o;
    o.schedule = p.schedule;
    if (p.dtype != DType::f32) o.autocast = p.dtype;
    if (p.dtype == DType::f16) {  // one scaler over every stage's gradients
      w->scaler = std::make_unique<optim::GradScaler>();
      o.scale_loss = [w](const Tensor& loss) { return w->scaler->scale(loss); };
    }
    w->pipeline = std::make_shared<nn::Pipeline>(nn::GPTStage::pipeline_stages(stages), o);
    w->model = model;
    w->optimizer = std::make_unique<optim::AdamW>(w->pipeline->parameters(), 6e-4, 0.9, 0.95, 1e-8, 0.1);
    w->input = random_labels(p.batch * p.seq_len, p.token_range, rng, {p.batch, p.seq_len}, first);
    w->target = random_labels(p.batch * p.seq_len, p.token_range, rng, {p.batch, p.seq_len}, last);
    const int64_t m = p.micro_batches;
    w->step = [w, stages, m] {
      w->optimizer->zero_grad();
      const double loss = w->pipeline->run(w->input, w->target, m, nn::GPTStage::loss_fn(stages));
      nn::GPTStage::tie_gradients(stages);
      if (w->scaler) {
        w->scaler->step(*w->optimizer);
        w->scaler->update();
      } else {
        w->optimizer->step();
      }
      return Tensor::scalar(loss);
    };
    return;
  }
  if (p.kind == ModelKind::gpt && p.tensor_parallel > 1) {
    HR_CHECK(p.dtype != DType::f16, ValueError, "preset ", p.name,
             ": f16 with tensor parallelism is not built (its ranks would have to agree on skipping a step); "
             "bf16 or f32");
    auto groups = std::make_shared<std::vector<std::unique_ptr<dist::ProcessGroup>>>(dist::make_local_groups(devs));
    auto ranks = std::make_shared<std::vector<std::shared_ptr<nn::TensorParallelGPT>>>();
    auto opts = std::make_shared<std::vector<std::unique_ptr<optim::Optimizer>>>();
    auto inputs = std::make_shared<std::vector<std::pair<Tensor, Tensor>>>();
    {
      nn::GPT full(p.gpt);  // on the host, gone once split
      w->parameters = full.num_parameters();
      for (size_t r = 0; r < devs.size(); ++r) {
        ranks->push_back(nn::TensorParallelGPT::from(full, *(*groups)[r], devs[r]));
        opts->push_back(std::make_unique<optim::AdamW>(ranks->back()->parameters(), 6e-4, 0.9, 0.95, 1e-8, 0.1));
        opts->back()->set_step_agreement(dist::step_agreement(*(*groups)[r], devs[r]));  // Note [agreed failure]
      }
    }
    w->input = random_labels(p.batch * p.seq_len, p.token_range, rng, {p.batch, p.seq_len}, first);
    w->target = random_labels(p.batch * p.seq_len, p.token_range, rng, {p.batch, p.seq_len}, first);
    for (const Device& d : devs) inputs->emplace_back(w->input.to(d), w->target.to(d));  // every rank the batch
    w->model = ranks->front();
    w->keep = {groups, ranks, opts, inputs};
    const DType low = p.dtype;
    const int64_t m = std::min(p.micro_batches, p.batch);  // gradient accumulation, as BatchSplitter's
    w->step = [groups, ranks, opts, inputs, low, devs, m] {
      std::vector<double> losses(ranks->size());
      dist::run_on_groups(*groups, [&](int r, dist::ProcessGroup&) {
        const size_t i = static_cast<size_t>(r);
        (*opts)[i]->zero_grad();
        const Tensor& x = (*inputs)[i].first;
        const Tensor& y = (*inputs)[i].second;
        const int64_t n = x.size(0);
        for (int64_t k = 0; k < m; ++k) {
          const int64_t begin = k * n / m, end = (k + 1) * n / m;
          Tensor loss;
          {
            AutocastGuard amp(devs[i], low == DType::f32 ? DType::bf16 : low, low != DType::f32);
            loss = (*ranks)[i]->loss(m == 1 ? x : x.slice(0, begin, end), m == 1 ? y : y.slice(0, begin, end));
          }
          losses[i] += loss.item<double>() * static_cast<double>(end - begin) / static_cast<double>(n);
          if (m > 1) loss = loss * (static_cast<double>(end - begin) / static_cast<double>(n));
          loss.backward();
        }
        (*opts)[i]->step();
      });
      return Tensor::scalar(losses[0]);
    };
    return;
  }
  HR_CHECK(p.dtype == DType::f32, ValueError, "preset ", p.name, ": this several-device workload runs in f32");
  if (p.kind == ModelKind::mlp && p.replicas > 1) {
    auto make = [widths = p.widths]() -> std::shared_ptr<nn::Module> {
      auto seq = std::make_shared<nn::Sequential>();
      for (size_t i = 0; i + 1 < widths.size(); ++i) {
        seq->push_back(std::make_shared<nn::Linear>(widths[i], widths[i + 1]));
        if (i + 2 < widths.size()) seq->push_back(std::make_shared<nn::ReLU>());
      }
      return seq;
    };
    auto master = make();
    master->to(first);
    auto dp = std::make_shared<nn::DataParallel>(master, devs, make);
    w->model = dp;
    w->optimizer = std::make_unique<optim::SGD>(dp->parameters(), 0.01, 0.9);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> pixels(static_cast<size_t>(p.batch * p.widths.front()));
    for (auto& v : pixels) v = normal(rng);
    w->input = Tensor::from_vector(pixels, {p.batch, p.widths.front()}).to(first);
    w->target = random_labels(p.batch, p.widths.back(), rng, {p.batch}, first);
    w->step = [w, dp] {
      w->optimizer->zero_grad();
      Tensor loss = cross_entropy((*dp)(w->input), w->target);
      loss.backward();
      w->optimizer->step();
      return loss.detach();
    };
    return;
  }
  if (p.kind == ModelKind::timed_stages) {
    std::vector<nn::PipelineStage> stages;
    const int64_t width = p.widths.front();
    for (const Device& d : devs) {
      auto part = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
          std::make_shared<nn::Linear>(width, width), std::make_shared<FixedCost>(p.stage_ms_per_row)});
      part->to(d);
      stages.push_back({part, d});
    }
    nn::PipelineOptions o;
    o.schedule = p.schedule;
    w->pipeline = std::make_shared<nn::Pipeline>(stages, o);
    w->model = stages.front().module;
    w->parameters = 0;
    for (const auto& st : stages) w->parameters += st.module->num_parameters();
    w->optimizer = std::make_unique<optim::SGD>(w->pipeline->parameters(), 0.01, 0.9);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> rows(static_cast<size_t>(p.batch * width));
    for (auto& v : rows) v = normal(rng);
    w->input = Tensor::from_vector(rows, {p.batch, width}).to(first);
    w->target = random_labels(p.batch, width, rng, {p.batch}, last);
    const int64_t m = p.micro_batches;
    w->step = [w, m] {
      w->optimizer->zero_grad();
      const double loss = w->pipeline->run(w->input, w->target, m,
                                           [](const Tensor& out, const Tensor& t) { return cross_entropy(out, t); });
      w->optimizer->step();
      return Tensor::scalar(loss);
    };
    return;
  }
  HR_CHECK(false, ValueError, "preset ", p.name, ": no several-device workload for this model");
}

}  // namespace

std::unique_ptr<Workload> make_workload(const Preset& p, Device device, uint64_t seed, dist::ProcessGroup* group) {
  auto w = std::make_unique<Workload>();
  std::mt19937_64 rng(seed);
  Workload* wp = w.get();
  if (p.several_devices() || p.kind == ModelKind::timed_stages) {
    HR_CHECK(!p.ddp, ValueError, "preset ", p.name, ": several devices of one process run as one rank");
    w->devices = preset_devices(p, device);
    build_several_devices(wp, p, rng);
    if (w->parameters == 0) w->parameters = w->model->num_parameters();
    return w;
  }
  switch (p.kind) {
    case ModelKind::gpt: {
      auto model = std::make_shared<nn::GPT>(p.gpt);
      model->to(device);
      w->model = model;
      w->input = random_labels(p.batch * p.seq_len, p.token_range, rng, {p.batch, p.seq_len}, device);
      w->target = random_labels(p.batch * p.seq_len, p.token_range, rng, {p.batch, p.seq_len}, device);
      distribute(wp, p, group,
                 [offload = p.offload_optimizer](std::vector<Tensor> ps) -> std::unique_ptr<optim::Optimizer> {
                   if (offload)
                     return std::make_unique<optim::OffloadedAdamW>(std::move(ps), 6e-4, 0.9, 0.95, 1e-8, 0.1);
                   return std::make_unique<optim::AdamW>(std::move(ps), 6e-4, 0.9, 0.95, 1e-8, 0.1);
                 });
      nn::GPT* m = model.get();
      set_step(wp, p, device, [m](const Tensor& x, const Tensor& y) { return m->loss(x, y); });
      break;
    }
    case ModelKind::timed_stages: break;  // above
    case ModelKind::mlp:
    case ModelKind::resnet18:
    case ModelKind::cnn: {
      std::shared_ptr<nn::Module> model;
      Shape input_shape;
      int64_t classes = 10;
      if (p.kind == ModelKind::mlp) {
        auto seq = std::make_shared<nn::Sequential>();
        for (size_t i = 0; i + 1 < p.widths.size(); ++i) {
          seq->push_back(std::make_shared<nn::Linear>(p.widths[i], p.widths[i + 1]));
          if (i + 2 < p.widths.size()) seq->push_back(std::make_shared<nn::ReLU>());
        }
        model = seq;
        input_shape = {p.batch, p.widths.front()};
        classes = p.widths.back();
      } else if (p.kind == ModelKind::cnn) {
        model = make_fashion_model(p);
        input_shape = {p.batch, 1, p.image_size, p.image_size};
        classes = p.classes;
      } else {
        model = std::make_shared<ResNet18>(p.base_width, p.image_size, p.classes, p.checkpoint, p.inplace_relu);
        input_shape = {p.batch, 3, p.image_size, p.image_size};
        classes = p.classes;
      }
      model->to(device);
      w->model = model;
      // N(0, 1) images from the host generator (independent of the model's init).
      std::normal_distribution<float> normal(0.0f, 1.0f);
      std::vector<float> pixels(static_cast<size_t>(shape_numel(input_shape)));
      for (auto& v : pixels) v = normal(rng);
      w->input = Tensor::from_vector(pixels, input_shape).to(device);
      w->target = random_labels(p.batch, classes, rng, {p.batch}, device);
      distribute(wp, p, group,
                 [](std::vector<Tensor> ps) { return std::make_unique<optim::SGD>(std::move(ps), 0.01, 0.9); });
      nn::Module* m = model.get();
      set_step(wp, p, device, [m](const Tensor& x, const Tensor& y) { return cross_entropy(m->forward(x), y); });
      break;
    }
  }
  w->parameters = w->model->num_parameters();
  return w;
}

}  // namespace headroom::bench
