// What the example programs share: command-line flags, a per-epoch progress line, a timer, and
// the train / evaluate loops for image classifiers -- so each example's main() only says what
// it builds and in what order.
//
// Header-only on purpose: every examples/*.cpp becomes its own program, so shared code lives
// here, inline. This is program code, not library code: it prints, and main() turns errors
// into exit codes (2 for a bad command line, 1 for a failure such as missing data).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "engine/caching_allocator.h"
#include "engine/leak_check.h"
#include "report/memory_report.h"
#include "headroom.h"
#include "nn/data/data.h"
#include "nn/nn.h"
#include "optim/batch_split.h"
#include "dist/process_group.h"
#include "optim/optim.h"

namespace headroom::examples {

// ---- flags ----

// A small command-line parser: --name value, --name=value, and bare --name for booleans.
// parse() returns an exit code when the program should stop (0 after --help, 2 for a bad
// command line, with the message on stderr) and nothing when it should go on.
//
//   int64_t epochs = 5;
//   Flags flags("mlp", "Trains an MLP.");
//   flags.add("epochs", &epochs, "passes over the training set", at_least<int64_t>(1));
//   if (auto code = flags.parse(argc, argv)) return *code;
class Flags {
 public:
  Flags(std::string program, std::string about) : program_(std::move(program)), about_(std::move(about)) {}

  // A check returns an empty string for a good value, else what is wrong with it.
  template <typename T>
  using Check = std::function<std::string(const T&)>;

  template <typename T>
  void add(const std::string& name, T* value, const std::string& help, Check<T> check = {}) {
    Flag f;
    f.name = name;
    f.help = help;
    f.default_text = to_text(*value);
    f.is_bool = std::is_same_v<T, bool>;
    f.set = [value, check](const std::string& text) -> std::string {
      T parsed{};
      std::string err = from_text(text, parsed);
      if (err.empty() && check) err = check(parsed);
      if (err.empty()) *value = parsed;
      return err;
    };
    flags_.push_back(std::move(f));
  }

  std::optional<int> parse(int argc, char** argv) const {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        std::cout << usage();
        return 0;
      }
      if (arg.rfind("--", 0) != 0 || arg.size() == 2) return fail("unexpected argument '" + arg + "'");
      std::string name = arg.substr(2), text;
      bool has_value = false;
      if (auto eq = name.find('='); eq != std::string::npos) {
        text = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_value = true;
      }
      const Flag* flag = find(name);
      if (!flag) return fail("unknown flag --" + name);
      if (!has_value) {
        if (flag->is_bool) {
          text = "true";
        } else if (i + 1 < argc) {
          text = argv[++i];
        } else {
          return fail("--" + name + " needs a value");
        }
      }
      if (std::string err = flag->set(text); !err.empty())
        return fail("bad value '" + text + "' for --" + name + ": " + err);
    }
    return std::nullopt;
  }

  std::string usage() const {
    std::ostringstream os;
    os << "usage: " << program_ << " [flags]\n" << about_ << "\n\nflags:\n";
    for (const Flag& f : flags_) {
      std::string left = "  --" + f.name + (f.is_bool ? "" : " VALUE");
      os << std::left << std::setw(26) << left << f.help << " (default: " << f.default_text << ")\n";
    }
    os << std::left << std::setw(26) << "  --help"
       << "print this and exit\n";
    return os.str();
  }

 private:
  struct Flag {
    std::string name, help, default_text;
    bool is_bool = false;
    std::function<std::string(const std::string&)> set;
  };

  const Flag* find(const std::string& name) const {
    for (const Flag& f : flags_)
      if (f.name == name) return &f;
    return nullptr;
  }
  std::optional<int> fail(const std::string& message) const {
    std::cerr << program_ << ": " << message << " (see --help)\n";
    return 2;
  }

  static std::string from_text(const std::string& text, int64_t& out) {
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
    return (ec != std::errc() || end != text.data() + text.size() || text.empty()) ? "expected an integer" : "";
  }
  static std::string from_text(const std::string& text, double& out) {
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
    return (ec != std::errc() || end != text.data() + text.size() || text.empty() || !std::isfinite(out))
               ? "expected a number"
               : "";
  }
  static std::string from_text(const std::string& text, std::string& out) {
    out = text;
    return "";
  }
  static std::string from_text(const std::string& text, bool& out) {
    if (text == "true" || text == "1" || text == "yes") out = true;
    else if (text == "false" || text == "0" || text == "no") out = false;
    else return "expected true or false";
    return "";
  }
  static std::string to_text(int64_t v) { return std::to_string(v); }
  static std::string to_text(double v) {
    std::ostringstream os;
    os << v;
    return os.str();
  }
  static std::string to_text(const std::string& v) { return v.empty() ? "\"\"" : v; }
  static std::string to_text(bool v) { return v ? "true" : "false"; }

  std::string program_, about_;
  std::vector<Flag> flags_;
};

template <typename T>
Flags::Check<T> at_least(T lo) {
  return [lo](const T& v) { return v >= lo ? std::string() : "must be at least " + std::to_string(lo); };
}
inline Flags::Check<double> positive() {
  return [](const double& v) { return v > 0 ? std::string() : std::string("must be positive"); };
}
// A value that parse(value) takes without throwing; else what it threw says what is wrong.
inline Flags::Check<std::string> parsed_by(std::function<void(const std::string&)> parse) {
  return [parse = std::move(parse)](const std::string& v) {
    try {
      parse(v);
      return std::string();
    } catch (const Error& e) {
      return std::string(e.what());
    }
  };
}
inline Flags::Check<std::string> device_name() {
  return parsed_by([](const std::string& v) { (void)Device::parse(v); });
}

// A memory size such as 256MiB (parse_memory_size), for --flag.
inline Flags::Check<std::string> memory_size(const std::string& flag) {
  return parsed_by([flag](const std::string& v) { (void)parse_memory_size(v, flag); });
}

// The flags every training example takes, with each example's own defaults.
struct TrainConfig {
  int64_t epochs = 5;
  int64_t batch_size = 128;
  double lr = 1e-3;
  int64_t seed = 1;
  std::string device = "cpu";
  std::string data_dir = data::kFashionMnistDir;
  int64_t train_limit = 0;                          // 0: all training images
  std::string lr_schedule = "cosine";               // or "constant"
  std::string memory_limit;                         // "" : HEADROOM_MEMORY_LIMIT or none
  std::string memory_report;                        // "" : no report
  std::string micro_batches = "1";                  // a count, or "auto" (optim/batch_split.h)
  std::string precision = "f32";                    // f32, f16 or bf16 (docs/mixed-precision.md)
  int64_t save_every = 0;                           // optimizer steps between training checkpoints (0: none)
  std::string checkpoint_file = "checkpoint.hrck";  // where --save-every writes
  std::string resume;                               // a training checkpoint to resume from ("" : start afresh)
  std::string save_model;                           // the trained model's state dict, written at the end ("" : none)
  std::string recompute = "none";                   // --checkpoint: none, block, sqrt or selective (nn/checkpoint.h)
  std::string memory_budget;                        // --memory-budget: the run's memory ("" : none)
  bool plan = false;                                // --plan: choose the techniques for the budget (optim/plan.h)
  bool ddp = false;                                 // --ddp: data parallel over mpirun's ranks (nn/parallel/ddp.h)
  int64_t zero = 0;                                 // --zero 1|2: ZeRO stage (implies --ddp; optim/zero.h)
  std::string bucket_cap = "25MiB";                 // --bucket-cap: DDP's gradient bucket size
  bool leak_check = false;                          // --leak-check: engine/leak_check.h at every step boundary
  std::string offload = "none";                     // --offload: none, activations, optimizer or all (docs/offload.md)
  std::string offload_min = "1MiB";                 // --offload-min: saved tensors smaller than this stay on the device
};

// --offload (docs/offload.md): activations through ActivationOffload around each forward,
// Adam's state on the host through OffloadedAdam.
inline bool offload_activations(const TrainConfig& cfg) { return cfg.offload == "activations" || cfg.offload == "all"; }
inline bool offload_optimizer(const TrainConfig& cfg) { return cfg.offload == "optimizer" || cfg.offload == "all"; }
inline std::optional<ActivationOffloadOptions> activation_offload(const TrainConfig& cfg) {
  if (!offload_activations(cfg)) return std::nullopt;
  ActivationOffloadOptions o;
  o.min_bytes = parse_memory_size(cfg.offload_min, "--offload-min");
  return o;
}
// Adam over `params`, its state on the host under --offload optimizer|all.
inline std::unique_ptr<optim::Optimizer> make_adam(const TrainConfig& cfg, std::vector<Tensor> params, double lr) {
  if (offload_optimizer(cfg)) return std::make_unique<optim::OffloadedAdam>(std::move(params), lr);
  return std::make_unique<optim::Adam>(std::move(params), lr);
}

inline void add_offload_flags(Flags& flags, TrainConfig& cfg) {
  flags.add("offload", &cfg.offload,
            "offload to the pinned host pool: none, activations (saved tensors of --offload-min or more, brought "
            "back ahead of use in backward), optimizer (Adam's moments and master weights, updated on the host) or "
            "all (docs/offload.md)",
            Flags::Check<std::string>([](const std::string& v) {
              return v == "none" || v == "activations" || v == "optimizer" || v == "all"
                         ? std::string()
                         : std::string("expected none, activations, optimizer or all");
            }));
  flags.add("offload-min", &cfg.offload_min, "with --offload activations|all: the smallest saved tensor offloaded",
            memory_size("--offload-min"));
}

// --leak-check (engine/leak_check.h, Note [leak check]): a LeakCheck on the run's device, a
// boundary after every optimizer step, the report printed the first time memory grows.
class LeakChecking {
 public:
  LeakChecking(bool on, Device device) {
    if (on) check_.emplace(device);
  }
  void step() {
    if (!check_) return;
    ++steps_;
    const LeakReport r = check_->step();
    if (r.leaking && !reported_) {
      std::cout << "\n" << r.str() << std::flush;
      reported_ = true;
    }
  }
  // "leak check: no growth over 600 steps" (nothing when off, or once a leak was reported).
  void print_summary() const {
    if (check_ && !reported_) std::cout << "leak check: no growth over " << steps_ << " steps\n";
  }
  bool on() const { return check_.has_value(); }

 private:
  std::optional<LeakCheck> check_;
  int64_t steps_ = 0;
  bool reported_ = false;
};

inline void add_leak_check_flag(Flags& flags, bool& on) {
  flags.add("leak-check", &on,
            "check at every step boundary that memory does not grow, and name what grows by the op that made it "
            "(docs/leak-check.md)");
}

// --ddp, --zero, --bucket-cap (docs/distributed.md).
inline void add_distributed_flags(Flags& flags, TrainConfig& cfg) {
  flags.add("ddp", &cfg.ddp,
            "data parallel over the ranks of mpirun (mpirun -np N ...): each rank trains on 1/N of every batch, "
            "gradients averaged in buckets overlapped with backward; rank 0 prints");
  flags.add("zero", &cfg.zero,
            "ZeRO stage with --ddp: 1 shards the optimizer state over the ranks, 2 the gradients too",
            Flags::Check<int64_t>([](const int64_t& v) {
              return v >= 0 && v <= 2 ? std::string() : str_cat("must be 0, 1 or 2, got ", v);
            }));
  flags.add("bucket-cap", &cfg.bucket_cap, "--ddp: the size of a gradient bucket (the first is 1 MiB)",
            memory_size("--bucket-cap"));
}

// --checkpoint none|block|sqrt|selective: recompute checkpointing (nn/checkpoint.h, docs/checkpointing.md).
inline void add_checkpoint_flag(Flags& flags, std::string& mode) {
  flags.add("checkpoint", &mode,
            "recompute checkpointing: none, block (each block's activations recomputed in backward), sqrt "
            "(checkpoint_sequential, sqrt(n) segments) or selective (per block, keeping the outputs of linear, "
            "conv2d and attention)",
            parsed_by([](const std::string& v) { (void)nn::parse_checkpoint_mode(v, "--checkpoint"); }));
}

// --memory-budget SIZE and --plan (optim/plan.h, docs/planning.md).
inline void add_plan_flags(Flags& flags, TrainConfig& cfg) {
  flags.add("memory-budget", &cfg.memory_budget,
            "the memory this run may use, e.g. 256MiB: the device allocator's limit (unless --memory-limit says "
            "otherwise) and, with --plan, what the planner fits",
            memory_size("--memory-budget"));
  flags.add("plan", &cfg.plan,
            "before the first step, choose the fastest mix of precision, checkpointing and micro-batches that fits "
            "--memory-budget (predicted by meta execution, timed by a short calibration run); overrides those flags");
}

inline Flags::Check<std::string> lr_schedule_name() {
  return [](const std::string& v) {
    return v == "cosine" || v == "constant" ? std::string() : std::string("expected cosine or constant");
  };
}

// The training flags of every example that trains, whatever it trains on: the memory limit and
// report, --precision, training checkpoints, --checkpoint, planning, data parallelism, the leak
// check, offload and --micro-batches. (Its length, batch, learning rate, seed, device and data
// each program adds itself, with its own words: add_training_flags for Fashion-MNIST.)
inline void add_common_training_flags(Flags& flags, TrainConfig& cfg) {
  flags.add("memory-limit", &cfg.memory_limit,
            "cap on the device's memory, e.g. 256MiB (default: HEADROOM_MEMORY_LIMIT)", memory_size("--memory-limit"));
  flags.add("memory-report", &cfg.memory_report,
            "write stats.json, snapshot.json, trace.json, trace.chrome.json and timeline.html to this folder");
  flags.add("precision", &cfg.precision,
            "f32, f16 (autocast + dynamic loss scaling) or bf16 (autocast); master weights stay f32",
            Flags::Check<std::string>([](const std::string& v) {
              return v == "f32" || v == "f16" || v == "bf16" ? std::string() : std::string("expected f32, f16 or bf16");
            }));
  flags.add("save-every", &cfg.save_every,
            "write a training checkpoint to --checkpoint-file every N optimizer steps (0: never); a killed run resumes "
            "from it with --resume",
            at_least<int64_t>(0));
  flags.add("checkpoint-file", &cfg.checkpoint_file, "the training checkpoint --save-every writes");
  flags.add("resume", &cfg.resume,
            "resume from this training checkpoint (same flags as the run that wrote it): model, optimizer, loss "
            "scaler, batch splitting, schedule, RNG and the position in the data");
  flags.add("save-model", &cfg.save_model, "write the trained model's state dict here at the end");
  add_checkpoint_flag(flags, cfg.recompute);
  add_plan_flags(flags, cfg);
  add_distributed_flags(flags, cfg);
  add_leak_check_flag(flags, cfg.leak_check);
  add_offload_flags(flags, cfg);
  flags.add("micro-batches", &cfg.micro_batches,
            "run each batch as N micro-batches (gradient accumulation), or auto: split when out of memory",
            parsed_by([](const std::string& v) { (void)optim::parse_micro_batches(v, "--micro-batches"); }));
}

// The flags of the Fashion-MNIST programs: the run's length, batch, rate, seed, device and data,
// then the common ones.
inline void add_training_flags(Flags& flags, TrainConfig& cfg) {
  flags.add("epochs", &cfg.epochs, "passes over the training set", at_least<int64_t>(1));
  flags.add("batch-size", &cfg.batch_size, "images per step", at_least<int64_t>(1));
  flags.add("lr", &cfg.lr, "learning rate", positive());
  flags.add("seed", &cfg.seed, "seed of weight init and shuffling", at_least<int64_t>(0));
  flags.add("device", &cfg.device, "cpu or cuda[:N]", device_name());
  flags.add("data-dir", &cfg.data_dir, "folder of the Fashion-MNIST IDX .gz files");
  flags.add("train-limit", &cfg.train_limit, "use only the first N training images (0: all)", at_least<int64_t>(0));
  flags.add("lr-schedule", &cfg.lr_schedule, "cosine (decay to 0 over the run, per step) or constant",
            lr_schedule_name());
  add_common_training_flags(flags, cfg);
}

// ---- memory ----

// Applies --memory-limit and --memory-report for the run's device, prints the peak memory by
// category at the end, and writes the report -- also when the run dies of an out-of-memory
// error, so the timeline shows how it got there.
class MemoryReporting {
 public:
  MemoryReporting(const TrainConfig& cfg, Device device, std::string title)
      : allocator_(caching_allocator(device)), device_(device), dir_(cfg.memory_report), title_(std::move(title)) {
    if (!cfg.memory_limit.empty()) allocator_.set_memory_limit(parse_memory_size(cfg.memory_limit, "--memory-limit"));
    if (!dir_.empty()) {
      allocator_.clear_trace();
      allocator_.set_trace_enabled(true);
      if (cfg.offload != "none") host_pool().set_trace_enabled(true);  // its report goes to DIR/host_pool
    }
    allocator_.reset_peak_stats();
    if (cfg.offload != "none") host_pool().reset_peak_stats();
  }
  ~MemoryReporting() {
    if (dir_.empty()) return;
    try {
      write_memory_report(dir_, device_, title_);
      std::cout << "memory report: " << dir_ << "/timeline.html (and stats, snapshot, trace JSON)\n";
    } catch (const std::exception& e) {
      std::cerr << "could not write the memory report: " << e.what() << "\n";
    }
  }
  MemoryReporting(const MemoryReporting&) = delete;
  MemoryReporting& operator=(const MemoryReporting&) = delete;

  void print_peaks() const {
    MemoryStats s = allocator_.stats();
    std::cout << "peak memory on " << device_.str() << ": allocated " << format_bytes(s.allocated_bytes.peak)
              << ", reserved " << format_bytes(s.reserved_bytes.peak);
    if (size_t limit = allocator_.memory_limit())
      std::cout << " (limit " << format_bytes(static_cast<int64_t>(limit)) << ")";
    std::cout << "\n  by category:";
    for (int c = 0; c < kNumMemoryCategories; ++c) {
      auto cat = static_cast<MemoryCategory>(c);
      if (s.category(cat).peak > 0)
        std::cout << " " << category_name(cat) << " " << format_bytes(s.category(cat).peak) << ";";
    }
    std::cout << "\n";
    // What --offload put on the host (Note [host pool]).
    if (const CachingAllocator* pool = host_pool_if_made(); pool && pool->stats().allocated_bytes.peak > 0) {
      const MemoryStats p = pool->stats();
      std::cout << "peak in the pinned host pool: allocated " << format_bytes(p.allocated_bytes.peak) << ", reserved "
                << format_bytes(p.reserved_bytes.peak) << "\n  by category:";
      for (int c = 0; c < kNumMemoryCategories; ++c) {
        auto cat = static_cast<MemoryCategory>(c);
        if (p.category(cat).peak > 0)
          std::cout << " " << category_name(cat) << " " << format_bytes(p.category(cat).peak) << ";";
      }
      std::cout << "\n";
    }
    // What --checkpoint kept and dropped over the run (autograd/checkpoint.h).
    if (const CheckpointStats c = checkpoint_stats(); c.segments > 0)
      std::cout << "recompute checkpointing over the run: " << describe(c) << "\n";
  }

 private:
  CachingAllocator& allocator_;
  Device device_;
  std::string dir_;
  std::string title_;
};

// The per-step learning-rate schedule cfg asks for, or nullptr for a constant rate.
inline std::unique_ptr<optim::LRScheduler> make_schedule(const TrainConfig& cfg, optim::Optimizer& optimizer,
                                                         int64_t steps_per_epoch) {
  if (cfg.lr_schedule == "constant") return nullptr;
  return std::make_unique<optim::CosineWithWarmup>(optimizer, /*warmup_steps=*/0, cfg.epochs * steps_per_epoch);
}

// ---- mixed precision ----

// --precision: the autocast dtype (none for f32) and, for f16, the loss scaler. bf16 has f32's
// exponent range and needs no scaling (docs/mixed-precision.md).
struct Precision {
  std::optional<DType> autocast;
  std::unique_ptr<optim::GradScaler> scaler;  // f16 only
};

inline Precision make_precision(const TrainConfig& cfg) {
  Precision p;
  if (cfg.precision == "f16") p.autocast = DType::f16;
  if (cfg.precision == "bf16") p.autocast = DType::bf16;
  if (cfg.precision == "f16") p.scaler = std::make_unique<optim::GradScaler>();
  return p;
}

// "precision: f16 autocast, loss scale 32768, 1 step skipped on overflow"
inline void print_precision(const TrainConfig& cfg, const Precision& p) {
  if (!p.autocast) return;
  std::cout << "precision: " << cfg.precision << " autocast, f32 master weights";
  if (p.scaler)
    std::cout << ", loss scale " << p.scaler->scale() << ", " << p.scaler->skipped_steps()
              << (p.scaler->skipped_steps() == 1 ? " step" : " steps") << " skipped on overflow";
  std::cout << "\n";
}

// ---- data parallelism (nn/parallel/ddp.h, optim/zero.h, docs/distributed.md) ----

// With --ddp (or --zero): the world of mpirun's ranks (dist::init; alone, one rank), the model
// wrapped in DistributedDataParallel, the optimizer sharded under ZeRO, each rank's share of a
// batch, and sums over the ranks for what rank 0 prints. Every rank runs the same program on the
// same data order and takes rows [r*B/N, (r+1)*B/N) of each batch, so N ranks train as one
// process on the whole batch would (docs/distributed.md). Only rank 0 writes to stdout.
class DataParallel {
 public:
  DataParallel(TrainConfig& cfg, const std::string& program) {
    if (cfg.zero > 0) cfg.ddp = true;
    offload_optimizer_ = offload_optimizer(cfg);
    if (!cfg.ddp) return;
    group_ = &dist::init();
    HR_CHECK(cfg.batch_size % group_->size() == 0, ValueError, program, ": --batch-size ", cfg.batch_size,
             " does not divide among ", group_->size(), " ranks (each rank takes an equal share)");
    HR_CHECK(cfg.save_every == 0 && cfg.resume.empty(), ValueError, program,
             ": --save-every and --resume are not supported with --ddp yet");
    HR_CHECK(!cfg.plan, ValueError, program,
             ": --plan is not supported with --ddp yet (headroom-plan --world-size "
             "predicts per-rank memory)");
    if (group_->rank() != 0) std::cout.setstate(std::ios::failbit);  // rank 0 prints
    options_.zero_stage = static_cast<int>(cfg.zero);
    options_.bucket_cap_bytes = parse_memory_size(cfg.bucket_cap, "--bucket-cap");
  }
  bool on() const { return group_ != nullptr; }
  int rank() const { return group_ ? group_->rank() : 0; }
  int size() const { return group_ ? group_->size() : 1; }
  nn::DistributedDataParallel* ddp() const { return ddp_.get(); }

  // The module to train: model itself, or its DistributedDataParallel (a collective: rank 0's
  // parameters are broadcast).
  std::shared_ptr<nn::Module> wrap(std::shared_ptr<nn::Module> model) {
    if (!on()) return model;
    ddp_ = std::make_shared<nn::DistributedDataParallel>(model, *group_, options_);
    std::cout << "data parallel: " << size() << (size() == 1 ? " rank" : " ranks") << " (" << group_->backend_name()
              << "), " << ddp_->buckets().size()
              << (ddp_->buckets().size() == 1 ? " gradient bucket" : " gradient buckets")
              << (options_.zero_stage ? str_cat(", ZeRO stage ", options_.zero_stage) : std::string()) << "\n";
    return ddp_;
  }
  // The optimizer over the trained module's parameters, or ZeRO's over this rank's shard.
  std::unique_ptr<optim::Optimizer> make_optimizer(
      const std::function<std::unique_ptr<optim::Optimizer>(std::vector<Tensor>)>& make, nn::Module& trained) {
    if (ddp_ && options_.zero_stage > 0 && offload_optimizer_)
      throw ValueError(
          "--offload optimizer|all with --zero: the sharded optimizer keeps its shard on the device; "
          "use one of them");
    if (ddp_ && options_.zero_stage > 0) return std::make_unique<optim::ZeroRedundancyOptimizer>(*ddp_, make);
    return make(trained.parameters());
  }
  // Clipping by the global norm: over every rank's shard under ZeRO.
  double clip_grad_norm_(optim::Optimizer& optimizer, const std::vector<Tensor>& params, double max_norm) {
    if (auto* z = dynamic_cast<optim::ZeroRedundancyOptimizer*>(&optimizer)) return z->clip_grad_norm_(max_norm);
    return optim::clip_grad_norm_(params, max_norm);
  }
  // This rank's rows of a batch.
  Tensor shard(const Tensor& batch) const {
    if (!on() || size() == 1) return batch;
    const int64_t n = batch.size(0);
    return batch.slice(0, rank() * n / size(), (rank() + 1) * n / size());
  }
  // Sums over the ranks (one all-reduce).
  std::vector<double> sum(std::vector<double> values) const {
    if (!on() || size() == 1) return values;
    Tensor t = Tensor::from_vector(values, {static_cast<int64_t>(values.size())}, DType::f64);
    group_->all_reduce(t)->wait();
    return t.to_vector<double>();
  }
  // Every rank's peak memory by category, gathered on rank 0 and printed there (a collective).
  void print_per_rank_memory(Device device) const {
    if (!on()) return;
    const MemoryStats s = caching_allocator(device).stats();
    std::vector<double> mine{static_cast<double>(s.allocated_bytes.peak), static_cast<double>(s.reserved_bytes.peak)};
    for (int c = 0; c < kNumMemoryCategories; ++c)
      mine.push_back(static_cast<double>(s.category(static_cast<MemoryCategory>(c)).peak));
    const int64_t k = static_cast<int64_t>(mine.size());
    Tensor all = Tensor::zeros({size(), k}, DType::f64);
    group_->all_gather(all, Tensor::from_vector(mine, {k}, DType::f64))->wait();
    const std::vector<double> v = all.to_vector<double>();
    std::cout << "per-rank peak memory (" << device.str() << "):\n  rank  allocated   reserved";
    for (int c = 0; c < kNumMemoryCategories; ++c) std::cout << "  " << category_name(static_cast<MemoryCategory>(c));
    std::cout << "\n";
    for (int r = 0; r < size(); ++r) {
      std::cout << "  " << std::setw(4) << r;
      for (int64_t j = 0; j < k; ++j) {
        const std::string name = j < 2 ? "reserved" : category_name(static_cast<MemoryCategory>(j - 2));
        std::cout << "  " << std::setw(static_cast<int>(std::max<size_t>(9, name.size())))
                  << format_bytes(static_cast<int64_t>(v[static_cast<size_t>(r * k + j)]));
      }
      std::cout << "\n";
    }
  }
  // "communication: 2 buckets all-reduced per step, 3.10 MiB; last step 4.2 ms of it, 71% hidden behind backward"
  void print_communication() const {
    if (!ddp_) return;
    const nn::DDPSyncStats& s = ddp_->last_sync();
    std::cout << "communication: " << s.buckets << (s.buckets == 1 ? " bucket" : " buckets")
              << (options_.zero_stage ? " reduce-scattered" : " all-reduced") << " per step (" << format_bytes(s.bytes)
              << "); last step " << std::fixed << std::setprecision(1) << s.communication_seconds * 1e3 << " ms of it, "
              << std::setprecision(0) << s.hidden_fraction() * 100 << "% hidden behind backward\n";
  }

 private:
  dist::ProcessGroup* group_ = nullptr;
  nn::DDPOptions options_;
  bool offload_optimizer_ = false;
  std::shared_ptr<nn::DistributedDataParallel> ddp_;
};

// ---- batch splitting ----

// The step runner for --micro-batches: every training step goes through it (one micro-batch is
// the plain step). Automatic splitting announces each split on stdout. With a loss scaler, every
// micro-batch's loss is scaled by the step's one scale and the optimizer step goes through the
// scaler (skipped on inf/NaN, then the scale is updated).
inline std::unique_ptr<optim::BatchSplitter> make_splitter(const TrainConfig& cfg, optim::Optimizer& optimizer,
                                                           nn::Module& model, optim::GradScaler* scaler = nullptr,
                                                           nn::DistributedDataParallel* ddp = nullptr) {
  optim::BatchSplitter::Options options;
  options.log = &std::cout;
  options.ddp = ddp;  // one all-reduce per bucket per step, however many micro-batches
  if (scaler) {
    options.scaler = scaler;  // scaled losses, scaler->step + update, abandon_step on failure
  }
  return std::make_unique<optim::BatchSplitter>(optimizer, optim::parse_micro_batches(cfg.micro_batches), &model,
                                                options);
}

// "batch splitting (auto): micro-batches of 256 samples (4 per batch of 1024), 2 out-of-memory
// errors recovered" -- printed when --micro-batches asked for splitting.
inline void print_batch_splitting(const TrainConfig& cfg, const optim::BatchSplitter& splitter) {
  if (cfg.micro_batches == "1") return;
  // A fixed count splits every batch alike; auto remembers the size that fitted. (The last
  // batch of an epoch may be smaller: its micro-batches are not the ones to report.)
  const int64_t k = cfg.micro_batches == "auto" ? 0 : optim::parse_micro_batches(cfg.micro_batches);
  const int64_t m = k > 0 ? (cfg.batch_size + k - 1) / k
                          : (splitter.micro_batch_size() > 0 ? splitter.micro_batch_size() : cfg.batch_size);
  std::cout << "batch splitting (" << cfg.micro_batches << "): micro-batches of " << m << " samples ("
            << (cfg.batch_size + m - 1) / m << " per batch of " << cfg.batch_size << "), " << splitter.ooms_recovered()
            << " out-of-memory errors recovered\n";
}

// Runs a program body, turning an escaping exception into "error: <message>" and exit code 1.
// What an out-of-memory error's report gains when the program registered its training step
// (plan_techniques does): a line from meta execution. Returns "" when it has nothing to say.
inline std::function<std::string()>& oom_remedy_line() {
  static std::function<std::string()> line;
  return line;
}

inline int run_reporting_errors(const std::function<int()>& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    std::cout.flush();
    std::cerr << "error: " << e.what() << "\n";
    if (dynamic_cast<const OutOfMemoryError*>(&e) && oom_remedy_line()) {
      try {
        const std::string line = oom_remedy_line()();
        if (!line.empty()) std::cerr << line << "\n";
      } catch (const std::exception& inner) {
        std::cerr << "  (meta execution could not predict a remedy: " << inner.what() << ")\n";
      }
    }
    return 1;
  }
}

// ---- timing and progress ----

class Timer {
 public:
  Timer() { reset(); }
  void reset() { start_ = std::chrono::steady_clock::now(); }
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

 private:
  std::chrono::steady_clock::time_point start_;
};

inline bool stdout_is_terminal() { return isatty(STDOUT_FILENO) == 1; }

// "epoch 1/5 [=====>    ] 234/469 loss 0.4321 acc 0.8412 1234 img/s". On a terminal the line
// is redrawn in place (\r) a few times a second; otherwise (a log file, CI) only the finished
// line of each epoch is printed, so logs stay one line an epoch.
class ProgressBar {
 public:
  ProgressBar(int64_t epoch, int64_t epochs, int64_t total_batches)
      : epoch_(epoch), epochs_(epochs), total_(total_batches), live_(stdout_is_terminal()) {}

  void update(int64_t batches_done, int64_t images_done, double mean_loss, double accuracy) {
    if (!live_ || (last_draw_.seconds() < 0.1 && batches_done < total_)) return;
    last_draw_.reset();
    std::cout << "\r" << line(batches_done, images_done, mean_loss, accuracy) << std::flush;
  }
  void finish(int64_t batches_done, int64_t images_done, double mean_loss, double accuracy) {
    std::cout << (live_ ? "\r" : "") << line(batches_done, images_done, mean_loss, accuracy) << " " << std::fixed
              << std::setprecision(1) << timer_.seconds() << " s\n"
              << std::flush;
  }

 private:
  std::string line(int64_t done, int64_t images, double loss, double acc) const {
    constexpr int64_t kWidth = 24;
    const int64_t filled = total_ > 0 ? kWidth * done / total_ : kWidth;
    std::string bar(static_cast<size_t>(kWidth), ' ');
    for (int64_t i = 0; i < filled; ++i) bar[static_cast<size_t>(i)] = '=';
    if (filled < kWidth) bar[static_cast<size_t>(filled)] = '>';
    const double secs = timer_.seconds();
    std::ostringstream os;
    os << "epoch " << epoch_ << "/" << epochs_ << " [" << bar << "] " << done << "/" << total_ << std::fixed << " loss "
       << std::setprecision(4) << loss << " acc " << acc << " " << std::setprecision(0)
       << (secs > 0 ? static_cast<double>(images) / secs : 0.0) << " img/s";
    return os.str();
  }

  int64_t epoch_, epochs_, total_;
  bool live_;
  Timer timer_, last_draw_;
};

// ---- data ----

struct FashionMnistSplits {
  data::Dataset train, test;
};

// Both splits from cfg.data_dir, the training set cut to cfg.train_limit images if set.
inline FashionMnistSplits load_data(const TrainConfig& cfg) {
  Timer t;
  FashionMnistSplits s{data::load_fashion_mnist(cfg.data_dir, true), data::load_fashion_mnist(cfg.data_dir, false)};
  if (cfg.train_limit > 0 && cfg.train_limit < s.train.size()) s.train = data::subset(s.train, 0, cfg.train_limit);
  std::cout << "data: " << s.train.size() << " training and " << s.test.size() << " test images from " << cfg.data_dir
            << " (" << std::fixed << std::setprecision(1) << t.seconds() << " s)\n";
  return s;
}

// ---- training and evaluation ----

inline int64_t count_correct(const Tensor& logits, const Tensor& labels) {
  std::vector<int64_t> predicted = argmax(logits.detach(), 1).to_vector<int64_t>();
  std::vector<int64_t> truth = labels.to_vector<int64_t>();
  int64_t correct = 0;
  for (size_t i = 0; i < truth.size(); ++i) correct += predicted[i] == truth[i];
  return correct;
}

struct EpochStats {
  double loss = 0;      // mean training loss over the epoch's samples
  double accuracy = 0;  // training accuracy, measured on the fly (the model changes as it goes)
  double seconds = 0;
  int64_t images = 0;
  // From an epoch's sums: `seen` samples, their summed loss and the correct predictions.
  static EpochStats of(int64_t seen, double loss_sum, int64_t correct, double seconds) {
    EpochStats s;
    s.images = seen;
    s.loss = seen ? loss_sum / static_cast<double>(seen) : 0;
    s.accuracy = seen ? static_cast<double>(correct) / static_cast<double>(seen) : 0;
    s.seconds = seconds;
    return s;
  }
};

// ---- training checkpoints (optim/checkpoint.h) ----

// --save-every, --checkpoint and --resume for a training loop over epochs of a BatchLoader: the
// optim::TrainingState of the run's objects, the loop position it keeps up to date, and the
// epoch's running sums (so a resumed epoch prints the same totals as an uninterrupted one).
class Checkpointing {
 public:
  Checkpointing(const TrainConfig& cfg, optim::TrainingState state) : cfg_(cfg), state_(std::move(state)) {}

  // Loads --resume, if given; returns the epoch to start at.
  int64_t resume() {
    if (cfg_.resume.empty()) return 0;
    optim::load_training_checkpoint(cfg_.resume, state_);
    resuming_ = true;
    std::cout << "resumed from " << cfg_.resume << ": step " << state_.step << ", epoch " << state_.epoch + 1
              << ", batch " << state_.next_batch << "\n";
    return state_.epoch;
  }
  // Positions the loader at the start of `epoch`, or where the checkpoint left it.
  void start_epoch(data::BatchLoader& loader, int64_t epoch, double& loss_sum, int64_t& correct, int64_t& seen,
                   int64_t& batches) {
    if (resuming_ && epoch == state_.epoch) {
      loader.resume(epoch, state_.data_order, state_.next_batch);
      loss_sum = state_.extra.at("loss_sum").item<double>();
      correct = state_.extra.at("correct").item<int64_t>();
      seen = state_.extra.at("seen").item<int64_t>();
      batches = state_.next_batch;
      resuming_ = false;
      return;
    }
    loader.start_epoch(epoch);
  }
  // After each optimizer step: counts it and writes a checkpoint every --save-every steps.
  void after_step(const data::BatchLoader& loader, int64_t epoch, double loss_sum, int64_t correct, int64_t seen) {
    ++state_.step;
    if (cfg_.save_every == 0 || state_.step % cfg_.save_every != 0) return;
    state_.epoch = epoch;
    state_.next_batch = loader.next_batch();
    state_.data_order = loader.order();
    state_.extra["loss_sum"] = Tensor::scalar(loss_sum, DType::f64);
    state_.extra["correct"] = Tensor::from_vector(std::vector<int64_t>{correct}, {}, DType::i64);
    state_.extra["seen"] = Tensor::from_vector(std::vector<int64_t>{seen}, {}, DType::i64);
    optim::save_training_checkpoint(cfg_.checkpoint_file, state_);
    std::cout << "checkpoint: step " << state_.step << " saved to " << cfg_.checkpoint_file << "\n" << std::flush;
  }

 private:
  const TrainConfig& cfg_;
  optim::TrainingState state_;
  bool resuming_ = false;
};

// One pass over the loader: cross-entropy, backward, optimizer step per batch (through the
// splitter, which may run a batch as micro-batches), with a progress line; a schedule, if given,
// steps after each optimizer step. epoch is 0-based (it seeds the loader's shuffle). after_step,
// if given, runs after every optimizer step (e.g. nn::MagnitudePruner::apply, nn/prune.h).
inline EpochStats train_one_epoch(nn::Module& model, optim::BatchSplitter& splitter, optim::LRScheduler* schedule,
                                  data::BatchLoader& loader, Device device, int64_t epoch, int64_t epochs,
                                  std::optional<DType> autocast = std::nullopt, Checkpointing* checkpoints = nullptr,
                                  const DataParallel* parallel = nullptr, LeakChecking* leaks = nullptr,
                                  const std::function<void()>& after_step = {},
                                  std::optional<ActivationOffloadOptions> offload = std::nullopt) {
  model.train();
  double loss_sum = 0;
  int64_t correct = 0, seen = 0, batches = 0;
  if (checkpoints) checkpoints->start_epoch(loader, epoch, loss_sum, correct, seen, batches);
  else loader.start_epoch(epoch);
  ProgressBar progress(epoch + 1, epochs, loader.num_batches());
  Timer timer;
  Tensor images, labels;
  while (loader.next(images, labels)) {
    if (parallel) {  // this rank's share of the batch
      images = parallel->shard(images);
      labels = parallel->shard(labels);
    }
    images = images.to(device);
    labels = labels.to(device);
    AutocastCacheScope step_cache;  // each weight cast to 16 bits once per step, over all micro-batches
    optim::SplitStepResult step = splitter.step(images, labels, [&](const Tensor& x, const Tensor& y) {
      AutocastGuard amp(device, autocast.value_or(DType::f16), autocast.has_value());  // forward only
      std::optional<ActivationOffload> offloaded;  // --offload activations: what forward saves goes to the host
      if (offload) offloaded.emplace(*offload);
      Tensor logits = model(x);
      return optim::MicroBatchOutput{cross_entropy(logits, y), logits};
    });
    if (schedule) schedule->step();
    if (after_step) after_step();

    int64_t b = labels.size(0);
    double step_loss = step.loss * static_cast<double>(b);
    int64_t step_correct = count_correct(step.output, labels);
    if (parallel && parallel->on()) {  // what every rank did this step
      const std::vector<double> all =
          parallel->sum({step_loss, static_cast<double>(step_correct), static_cast<double>(b)});
      step_loss = all[0];
      step_correct = static_cast<int64_t>(all[1]);
      b = static_cast<int64_t>(all[2]);
    }
    loss_sum += step_loss;
    correct += step_correct;
    seen += b;
    ++batches;
    if (checkpoints) checkpoints->after_step(loader, epoch, loss_sum, correct, seen);
    progress.update(batches, seen, loss_sum / static_cast<double>(seen),
                    static_cast<double>(correct) / static_cast<double>(seen));
    // Let go of this batch before the loader makes the next, so two batches are never held.
    images = Tensor();
    labels = Tensor();
    step.output = Tensor();
    if (leaks) leaks->step();  // a step boundary: nothing of the step is held here
  }
  EpochStats stats = EpochStats::of(seen, loss_sum, correct, timer.seconds());
  progress.finish(batches, seen, stats.loss, stats.accuracy);
  return stats;
}

// Accuracy over a whole data set, in batches, in eval mode and without recording history; the
// model's training mode is restored afterwards. With halve_on_oom (--micro-batches auto), a pass
// that runs out of memory starts over with half the batch size (evaluation holds no state, so
// there is nothing to put back; the loader's batches shrink too).
inline double evaluate(nn::Module& model, const data::Dataset& dataset, int64_t batch_size, Device device,
                       bool halve_on_oom = false) {
  const bool was_training = model.is_training();
  model.eval();
  NoGradGuard no_grad;
  int64_t correct = 0, seen = 0;
  for (int64_t b = batch_size;; b = (b + 1) / 2) {
    correct = seen = 0;
    try {
      data::BatchLoader loader(dataset, b, /*shuffle=*/false, /*seed=*/0);
      Tensor images, labels;
      while (loader.next(images, labels)) {
        correct += count_correct(model(images.to(device)), labels);
        seen += labels.size(0);
      }
      break;
    } catch (const OutOfMemoryError&) {
      if (!halve_on_oom || b == 1) {
        model.train(was_training);
        throw;
      }
      caching_allocator(device).empty_cache();
      std::cout << "evaluation: batch of " << b << " ran out of memory, starting over with " << (b + 1) / 2 << "\n";
    }
  }
  model.train(was_training);
  return seen ? static_cast<double>(correct) / static_cast<double>(seen) : 0;
}

// ---- planning (optim/plan.h, docs/planning.md) ----

// --memory-budget / --plan, before anything is built: with --plan, predicts every mix of `space`
// for a batch of cfg.batch_size (make_step builds one, as the training loop will run it), prints
// the fastest that fit, and sets cfg.precision, cfg.recompute and cfg.micro_batches (and
// *attention, when given) to the choice. The budget becomes the allocator's limit unless
// --memory-limit was given. Returns the choice's prediction, for the comparison at the end
// (print_plan_check). ValueError when no mix fits, naming the one that comes closest.
inline std::optional<optim::MixPrediction> plan_techniques(TrainConfig& cfg, Device device,
                                                           const optim::StepFactory& make_step, optim::PlanSpace space,
                                                           std::string* attention = nullptr) {
  // An out-of-memory error later in the run: the mix of `space` with the fewest flops that fits
  // the allocator's limit, predicted for the batch that failed (Note [planning]).
  oom_remedy_line() = [make_step, space, device, &cfg, attention]() -> std::string {
    const size_t limit = caching_allocator(device).memory_limit();
    if (limit == 0 || cfg.micro_batches == "auto") return "";  // no budget to fit; auto splitting already reacted
    const DType precision = cfg.precision == "f16" ? DType::f16 : cfg.precision == "bf16" ? DType::bf16 : DType::f32;
    optim::Mix current{precision, attention ? parse_attention_impl(*attention) : optim::Mix{}.attention,
                       nn::parse_checkpoint_mode(cfg.recompute, "--checkpoint"),
                       optim::parse_micro_batches(cfg.micro_batches, "--micro-batches")};
    optim::PlanOptions options;
    options.device = device;
    options.batch = cfg.batch_size;
    const optim::Plan p = optim::plan(make_step, limit, space, options);
    for (const auto& m : p.mixes) {
      if (!m.fits()) break;
      if (m.mix == current) continue;
      // Only the flags this program has: the techniques its space varies.
      const optim::Mix& x = m.mix;
      std::string flags;
      if (space.precisions.size() > 1) flags += str_cat(" --precision ", dtype_name(x.precision));
      if (attention && space.attentions.size() > 1) flags += str_cat(" --attention ", attention_impl_name(x.attention));
      if (space.checkpoints.size() > 1) flags += str_cat(" --checkpoint ", nn::checkpoint_mode_name(x.checkpoint));
      if (space.micro_batches.size() > 1) flags += str_cat(" --micro-batches ", x.micro_batches);
      return str_cat("  predicted by meta execution: the mix with the fewest flops that fits ",
                     format_bytes(static_cast<int64_t>(limit)), " is", flags, ", peaking at ",
                     format_bytes(m.peak_allocated()), " allocated, ", format_bytes(m.peak_reserved()),
                     " reserved (or --memory-budget with --plan, to choose the fastest that fits)");
    }
    return str_cat("  predicted by meta execution: none of the ", p.mixes.size(), " mixes this program can run fits ",
                   format_bytes(static_cast<int64_t>(limit)), " at a batch of ", cfg.batch_size);
  };
  if (cfg.plan && cfg.memory_budget.empty()) throw ValueError("--plan needs --memory-budget (the memory to plan for)");
  if (cfg.plan && cfg.offload != "none")
    throw ValueError(
        "--plan chooses among precision, checkpointing and micro-batches here; run it without --offload "
        "(headroom-plan --offload predicts offload's memory and transfer time: docs/offload.md)");
  if (cfg.memory_budget.empty()) return std::nullopt;
  const size_t budget = parse_memory_size(cfg.memory_budget, "--memory-budget");
  if (cfg.memory_limit.empty()) cfg.memory_limit = cfg.memory_budget;
  if (!cfg.plan) return std::nullopt;
  optim::PlanOptions options;
  options.device = device;
  options.batch = cfg.batch_size;
  options.calibrate = true;
  caching_allocator(device).set_memory_limit(budget);  // the calibration runs in the budget too
  Timer timer;
  const optim::Plan p = optim::plan(make_step, budget, space, options);
  const bool with_attention = attention != nullptr;
  int fitting = 0;
  for (const auto& m : p.mixes) fitting += m.fits();
  std::cout << "plan: " << p.mixes.size() << " mixes for a batch of " << cfg.batch_size << " in "
            << format_bytes(static_cast<int64_t>(budget)) << " on " << device.str() << ", " << fitting << " fit ("
            << std::fixed << std::setprecision(1) << timer.seconds() << " s; cost model " << p.cost_model << ")\n";
  const optim::MixPrediction* choice = p.choice();
  if (!choice) {
    const optim::MixPrediction* least = nullptr;
    for (const auto& m : p.mixes)
      if (!least || m.peak_reserved() < least->peak_reserved()) least = &m;
    throw ValueError(str_cat("--plan: none of the ", p.mixes.size(), " mixes planned fits ",
                             format_bytes(static_cast<int64_t>(budget)), " for a batch of ", cfg.batch_size,
                             least ? str_cat(" (", least->mix.str(with_attention), " had reached ",
                                             format_bytes(least->peak_reserved()), " reserved when it ran out)")
                                   : ""));
  }
  for (size_t i = 0, shown = 0; i < p.mixes.size() && shown < 5; ++i) {
    const auto& m = p.mixes[i];
    if (!m.fits()) continue;
    ++shown;
    std::cout << (static_cast<int>(i) == p.chosen ? "  * " : "    ") << std::left << std::setw(28)
              << m.mix.str(with_attention) << std::right << " peak reserved " << std::setw(10)
              << format_bytes(m.peak_reserved()) << ", " << std::setprecision(2) << m.seconds * 1e3 << " ms/step\n";
  }
  cfg.precision = dtype_name(choice->mix.precision);
  cfg.recompute = nn::checkpoint_mode_name(choice->mix.checkpoint);
  cfg.micro_batches = std::to_string(choice->mix.micro_batches);
  if (attention) *attention = attention_impl_name(choice->mix.attention);
  std::cout << "plan: chose " << choice->mix.str(with_attention) << "\n" << std::flush;
  return *choice;
}

// "plan check: predicted peak allocated X, reserved Y; measured over the run: ..." -- the run's
// measured peaks cover evaluation too, which the plan's training steps do not.
inline void print_plan_check(const std::optional<optim::MixPrediction>& chosen, Device device) {
  if (!chosen) return;
  const MemoryStats s = caching_allocator(device).stats();
  std::cout << "plan check: predicted peak allocated " << format_bytes(chosen->peak_allocated()) << ", reserved "
            << format_bytes(chosen->peak_reserved()) << "; measured over the run "
            << format_bytes(s.allocated_bytes.peak) << ", " << format_bytes(s.reserved_bytes.peak) << "\n";
}

// The training step of an image classifier (Adam, cross-entropy, the logits kept for accuracy)
// as train_one_epoch runs it, for the planner: make_model(mode) builds the model with `mode`'s
// checkpointing; the batch is [batch, 1, 28, 28] images and their labels.
inline optim::StepFactory image_classifier_step(
    Device device, double lr, std::function<std::shared_ptr<nn::Module>(nn::CheckpointMode)> make_model) {
  return [device, lr, make_model](const optim::Mix& mix, int64_t batch) -> std::function<void()> {
    struct Training {
      std::shared_ptr<nn::Module> model;
      std::unique_ptr<optim::Adam> optimizer;
      std::unique_ptr<optim::GradScaler> scaler;
      std::unique_ptr<optim::BatchSplitter> splitter;
      Tensor images, labels;
    };
    auto t = std::make_shared<Training>();
    t->model = make_model(mix.checkpoint);
    t->model->to(device);
    t->model->train();
    t->optimizer = std::make_unique<optim::Adam>(t->model->parameters(), lr);
    optim::BatchSplitter::Options options;
    if (mix.precision == DType::f16) {
      t->scaler = std::make_unique<optim::GradScaler>();
      options.scaler = t->scaler.get();
    }
    t->splitter = std::make_unique<optim::BatchSplitter>(*t->optimizer, mix.micro_batches, t->model.get(), options);
    t->images = Tensor::zeros({batch, 1, 28, 28}, TensorOptions().device(device));
    t->labels = Tensor::zeros({batch}, TensorOptions().dtype(DType::i64).device(device));
    const bool amp = mix.precision != DType::f32;
    const DType low = amp ? mix.precision : DType::f16;
    return [t, device, amp, low] {
      AutocastCacheScope step_cache;
      optim::SplitStepResult step = t->splitter->step(t->images, t->labels, [&](const Tensor& x, const Tensor& y) {
        AutocastGuard guard(device, low, amp);
        Tensor logits = (*t->model)(x);
        return optim::MicroBatchOutput{cross_entropy(logits, y), logits};
      });
      (void)count_correct(step.output, t->labels);
    };
  };
}

// ---- reporting ----

inline void print_model(const nn::Module& model) {
  std::cout << "model: " << model.num_parameters() << " parameters\n" << model.summary();
  if (!model.summary().empty() && model.summary().back() != '\n') std::cout << "\n";
}

// The closing lines: time per epoch, and exactly one "test accuracy: 0.XXXX" line.
inline void print_results(const std::vector<EpochStats>& history, double test_accuracy) {
  double secs = 0;
  int64_t images = 0;
  for (const EpochStats& s : history) {
    secs += s.seconds;
    images += s.images;
  }
  const double n = static_cast<double>(std::max<size_t>(history.size(), 1));
  std::cout << std::fixed << std::setprecision(2) << "time per epoch: " << secs / n << " s (mean of " << history.size()
            << (history.size() == 1 ? " epoch, " : " epochs, ") << std::setprecision(0)
            << (secs > 0 ? static_cast<double>(images) / secs : 0.0) << " img/s)\n"
            << std::setprecision(4) << "test accuracy: " << test_accuracy << "\n";
}

// ---- a classifier's training run ----

// The training of a Fashion-MNIST classifier as the examples run it, built in this order: the
// data, the module trained (the model, or its DistributedDataParallel under --ddp), Adam (or
// ZeRO's shard of it), the shuffled loader, the --lr-schedule, --precision, the splitter of
// --micro-batches, --save-every / --resume (optim/checkpoint.h) and --leak-check. train() runs
// the epochs, evaluate() measures test accuracy, print_report() prints the closing lines.
class ClassifierTraining {
 public:
  ClassifierTraining(const TrainConfig& cfg, Device device, const std::shared_ptr<nn::Module>& model,
                     DataParallel& parallel)
      : data(load_data(cfg)),
        trained(parallel.wrap(model)),
        optimizer(parallel.make_optimizer(
            [&cfg](std::vector<Tensor> ps) { return make_adam(cfg, std::move(ps), cfg.lr); }, *trained)),
        // With --ddp every rank walks the same order and keeps its share; a short last batch is dropped.
        loader(data.train, cfg.batch_size, /*shuffle=*/true, static_cast<uint64_t>(cfg.seed),
               /*drop_last=*/parallel.on()),
        schedule(make_schedule(cfg, *optimizer, loader.num_batches())),
        precision(make_precision(cfg)),
        splitter(make_splitter(cfg, *optimizer, *trained, precision.scaler.get(), parallel.ddp())),
        checkpoints(cfg, {.model = model.get(),
                          .optimizer = optimizer.get(),
                          .scaler = precision.scaler.get(),
                          .splitter = splitter.get(),
                          .schedule = schedule.get()}),
        leaks(cfg.leak_check, device),
        cfg_(cfg),
        device_(device),
        parallel_(parallel) {}
  ClassifierTraining(const ClassifierTraining&) = delete;
  ClassifierTraining& operator=(const ClassifierTraining&) = delete;

  // The epochs from where --resume left off (or the first) up to `until` (of cfg.epochs), each
  // one's figures appended to `history`.
  void train(int64_t until) {
    for (int64_t epoch = checkpoints.resume(); epoch < until; ++epoch)
      history.push_back(train_one_epoch(*trained, *splitter, schedule.get(), loader, device_, epoch, cfg_.epochs,
                                        precision.autocast, &checkpoints, &parallel_, &leaks, {},
                                        activation_offload(cfg_)));
  }
  // Test accuracy; under --micro-batches auto or --plan a batch that runs out of memory is halved.
  double evaluate(nn::Module& model, int64_t batch_size) const {
    return examples::evaluate(model, data.test, batch_size, device_,
                              /*halve_on_oom=*/cfg_.micro_batches == "auto" || cfg_.plan);
  }
  // The closing lines: peak memory, leak check, the ranks' memory and communication, the plan's
  // prediction against the run, batch splitting, precision, and last the time per epoch and
  // "test accuracy: 0.XXXX".
  void print_report(const MemoryReporting& memory, const std::optional<optim::MixPrediction>& planned,
                    double accuracy) const {
    memory.print_peaks();
    leaks.print_summary();
    parallel_.print_per_rank_memory(device_);
    parallel_.print_communication();
    print_plan_check(planned, device_);
    print_batch_splitting(cfg_, *splitter);
    print_precision(cfg_, precision);
    print_results(history, accuracy);
  }

  FashionMnistSplits data;
  std::shared_ptr<nn::Module> trained;
  std::unique_ptr<optim::Optimizer> optimizer;
  data::BatchLoader loader;
  std::unique_ptr<optim::LRScheduler> schedule;
  Precision precision;
  std::unique_ptr<optim::BatchSplitter> splitter;
  Checkpointing checkpoints;
  LeakChecking leaks;
  std::vector<EpochStats> history;

 private:
  const TrainConfig& cfg_;
  Device device_;
  DataParallel& parallel_;
};

}  // namespace headroom::examples
