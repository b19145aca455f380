// headroom-bench: the memory-versus-throughput benchmark every technique reports into.
//
//   headroom-bench --list
//   headroom-bench --preset cpu --steps 10 --out results/            # the small presets, here
//   headroom-bench --preset gpt2-small-bf16-fused,mlp-f32 --device cuda --out results/
//
// A preset is one configuration (model x batch x precision x technique; bench_models.h). For
// each, the program builds the workload, runs --warmup untimed steps (the first steps allocate
// optimizer state and fill the allocator's cache), resets the allocator's peak statistics, and
// runs --steps timed steps. The peaks reported are the allocator's own (caching_allocator(device)
// .stats() after reset_peak_stats()): total, by category, and reserved -- so they are exactly
// what a memory technique changes. Time is measured with timing Events at each step boundary:
// on cuda they are recorded on the stream and the host waits on the last one, so the step times
// are the GPU's; on cpu they read the host clock. An out-of-memory error ends only its own
// configuration (a row with status "oom" and the size asked for); the others go on.
//
// Output: progress on stderr; on stdout a Markdown table; in --out, results.json (the schema
// in bench_report.h, shared with bench/pytorch_reference.py), results.csv, results.md and
// memory_vs_throughput.svg. Exit codes: 0 when every configuration ran or ran out of memory,
// 1 when one failed otherwise (or the device is unusable), 2 for a bad command line or an
// unknown preset.
#include <ctime>
#include <filesystem>

#include "bench/bench_models.h"
#include "engine/meta.h"
#include "bench/bench_report.h"
#include "examples/common.h"

using namespace headroom;
using namespace headroom::bench;

namespace {

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string device_name(Device device) {
  const DeviceProperties p = device_properties(device);
  if (device.is_cpu()) return str_cat("cpu, ", p.threads_per_op, " threads");
  return str_cat(p.name, ", ", p.total_memory >> 20, " MiB");
}

// The name column of --list: the longest preset name (gpt-tiny-cpu-f32-fused-ckpt-block, 33) and
// room to spare. bench/check_presets_in_sync.py and pytorch_reference.py --list use the same width.
constexpr int kNameWidth = 40;

void print_list(std::ostream& os) {
  os << "presets (model x batch x precision x technique):\n";
  for (const Preset& p : all_presets())
    os << "  " << std::left << std::setw(kNameWidth) << p.name << p.description << "\n";
  os << "groups:\n"
     << "  " << std::setw(kNameWidth) << "cpu"
     << "the small presets (names with 'cpu'), seconds each on a CPU\n"
     << "  " << std::setw(kNameWidth) << "gpu"
     << "the reference workloads of DESIGN.md (GPT-2 small, MLP, ResNet-18)\n"
     << "  " << std::setw(kNameWidth) << "gpt2-small"
     << "GPT-2 small in f32, f16 and bf16, naive and fused attention\n"
     << "  " << std::setw(kNameWidth) << "all"
     << "every preset\n"
     << "precision: f16 and bf16 are mixed precision (autocast, f32 master weights; f16 with dynamic loss\n"
     << "scaling); -mbK presets run each batch as K micro-batches with gradient accumulation; -ckpt-block\n"
     << "and -ckpt-sqrt presets recompute activations in backward (per block or stage, or sqrt(n)\n"
     << "segments), and when their base preset (the name without the suffix) runs too, the report\n"
     << "gives the step-time and activation-peak ratios of the two. -ppK-SCHEDULE-mbM, -tpT and -dpR presets\n"
     << "run on devices 0..N-1 of --device's kind (cpu:0..cpu:N-1 here): pipeline stages, tensor parallelism\n"
     << "and DataParallel (docs/model-parallel.md); the report gives each device's peak and the bubble.\n";
}

// The same run as run_preset inside a MetaScope (Note [meta execution]): the allocator's stats
// it would end with, without computing anything. Never throws for what the workload does.
void predict_preset(const Preset& p, Device device, int64_t steps, int64_t warmup, uint64_t seed, Result& r) {
  r.predicted = true;
  examples::Timer t;
  try {
    const std::vector<Device> devices = preset_devices(p, device);
    MetaScope meta;
    for (const Device& d : devices)
      if (size_t limit = caching_allocator(d).memory_limit()) meta.allocator(d).set_memory_limit(limit);
    manual_seed(seed);
    std::unique_ptr<Workload> w = make_workload(p, device, seed);
    for (int64_t i = 0; i < warmup; ++i) (void)w->step().item<double>();
    for (const Device& d : devices) meta.allocator(d).reset_peak_stats();
    for (int64_t i = 0; i < steps; ++i) (void)w->step();
    r.predicted_stats = meta.allocator(devices.front()).stats();
    if (p.several_devices())
      for (const Device& d : devices) r.predicted_device_stats.emplace_back(d, meta.allocator(d).stats());
    r.predict_status = "ok";
  } catch (const OutOfMemoryError&) {
    r.predict_status = "oom";
  } catch (const std::exception& e) {
    r.predict_status = str_cat("error: ", first_line(e.what()));
  }
  r.predict_seconds = t.seconds();
}

// Runs one configuration; never throws for what the workload does.
Result run_preset(const Preset& p, Device device, int64_t steps, int64_t warmup, uint64_t seed, bool profile) {
  Result r;
  r.preset = p;
  std::vector<Device> devices{device};
  try {
    devices = preset_devices(p, device);
  } catch (const std::exception& e) {
    r.status = "error";
    r.error = first_line(e.what());
    return r;
  }
  CachingAllocator& alloc = caching_allocator(devices.front());
  for (const Device& d : devices) {
    caching_allocator(d).empty_cache();  // the previous configuration's cached segments are not this one's
    caching_allocator(d).reset_peak_stats();
  }
  reset_process_peak_rss();  // the OS's measure of this configuration alone
  r.start_rss_bytes = process_rss_bytes();
  try {
    manual_seed(seed);
    std::unique_ptr<Workload> w = make_workload(p, device, seed);
    r.parameters = w->parameters;
    for (int64_t i = 0; i < warmup; ++i) (void)w->step().item<double>();
    for (const Device& d : devices) {
      synchronize(d);
      caching_allocator(d).reset_peak_stats();
    }
    const bool offload = p.offload_activations || p.offload_optimizer;
    if (offload) host_pool().reset_peak_stats();  // Note [host pool]: what the timed steps keep there

    std::vector<Event> marks;
    marks.reserve(static_cast<size_t>(steps + 1));
    marks.emplace_back(true);
    marks.back().record(devices.front());
    Tensor loss;
    for (int64_t i = 0; i < steps; ++i) {
      loss = Tensor();  // the last step's loss is not held through this one (the prediction holds none)
      loss = w->step();
      for (size_t k = 1; k < devices.size(); ++k) synchronize(devices[k]);  // the step ends on every device
      marks.emplace_back(true);
      marks.back().record(devices.front());
      if (w->pipeline) r.bubble_fraction += w->pipeline->last_stats().bubble_fraction() / static_cast<double>(steps);
      if (w->ddp) {  // what this step's synchronisation cost (Note [overlapped all-reduce])
        const nn::DDPSyncStats& s = w->ddp->last_sync();
        r.communication_ms += s.communication_seconds * 1e3 / static_cast<double>(steps);
        r.exposed_ms += s.exposed_seconds * 1e3 / static_cast<double>(steps);
        r.communication_bytes = s.bytes;
      }
    }
    if (w->ddp) {
      r.world_size = w->ddp->group().size();
      r.buckets = static_cast<int64_t>(w->ddp->buckets().size());
    }
    marks.back().synchronize();
    r.stats = alloc.stats();
    if (offload) r.host_stats = host_pool().stats();
    if (p.several_devices())
      for (const Device& d : devices) r.device_stats.emplace_back(d, caching_allocator(d).stats());

    const double total_ms = marks.front().elapsed_ms(marks.back());
    r.step_ms = total_ms / static_cast<double>(steps);
    r.step_ms_min = r.step_ms_max = marks[0].elapsed_ms(marks[1]);
    for (size_t i = 1; i + 1 < marks.size(); ++i) {
      const double ms = marks[i].elapsed_ms(marks[i + 1]);
      r.step_ms_min = std::min(r.step_ms_min, ms);
      r.step_ms_max = std::max(r.step_ms_max, ms);
    }
    r.items_per_second = total_ms > 0 ? static_cast<double>(p.items_per_step() * steps) / (total_ms / 1000.0) : 0;
    r.final_loss = loss.item<double>();
    if (w->ddp) {  // each rank's loss is its share's: the batch's is their mean (equal shares)
      Tensor l = Tensor::full({1}, r.final_loss, DType::f64);
      w->ddp->group().all_reduce(l, dist::ReduceOp::average)->wait();
      r.final_loss = l.item<double>();
    }
    r.measured = true;
    if (profile && device.is_cuda()) {  // one more step, after the peaks were read
      Backend& be = backend_for(device);
      Event start(true), stop(true);
      be.start_op_profile();
      start.record(device);
      (void)w->step();
      stop.record(device);
      const std::vector<OpTime> ops = be.stop_op_profile();
      stop.synchronize();
      r.profile_step_ms = start.elapsed_ms(stop);
      for (const OpTime& op : ops) r.profile.push_back({op.name, op.calls, op.ms});
    }
  } catch (const OutOfMemoryError& e) {
    r.stats = alloc.stats();
    r.status = "oom";
    r.oom_requested_bytes = static_cast<int64_t>(e.requested_bytes());
    r.error = first_line(e.what());
  } catch (const std::exception& e) {
    r.stats = alloc.stats();
    r.status = "error";
    r.error = first_line(e.what());
  }
  r.peak_rss_bytes = process_peak_rss_bytes();
  if (r.status != "ok" && p.several_devices())
    for (const Device& d : devices) r.device_stats.emplace_back(d, caching_allocator(d).stats());
  for (const Device& d : devices) caching_allocator(d).empty_cache();
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  bool list = false;
  std::vector<std::string> preset_names;
  std::string preset_arg;  // the last --preset; every one is collected into preset_names by its check
  int64_t steps = 10, warmup = 2, seed = 1;
  bool profile = false, predict = false;
  std::string device_arg = "cpu", out_dir = "headroom-bench-results", memory_limit;

  examples::Flags flags("headroom-bench",
                        "Runs benchmark presets and reports peak memory (total, by category, reserved), step time,\n"
                        "items/s and final loss as a Markdown table, results.json, results.csv and an SVG plot.");
  flags.add("list", &list, "print the presets and exit");
  flags.add("preset", &preset_arg, "preset or group to run; repeat or separate by commas (see --list)",
            examples::Flags::Check<std::string>([&preset_names](const std::string& v) {
              std::stringstream ss(v);
              std::string name;
              bool any = false;
              while (std::getline(ss, name, ','))
                if (!name.empty()) {
                  preset_names.push_back(name);
                  any = true;
                }
              return any ? std::string() : std::string("expected a preset name");
            }));
  flags.add("steps", &steps, "timed steps per configuration", examples::at_least<int64_t>(1));
  flags.add("warmup", &warmup, "untimed steps before them", examples::at_least<int64_t>(0));
  flags.add("device", &device_arg, "cpu or cuda[:N]", examples::device_name());
  flags.add("out", &out_dir, "folder for results.json, results.csv, results.md and memory_vs_throughput.svg");
  flags.add("seed", &seed, "seed of weights and synthetic data", examples::at_least<int64_t>(0));
  flags.add("predict", &predict,
            "first predict each configuration's memory by meta execution (docs/planning.md) and report it against "
            "the measurement; exit status 3 when a prediction is off");
  flags.add("profile", &profile,
            "cuda: after the timed steps, one more with GPU time by op (kernels/cuda/op_profile.h)");
  flags.add("memory-limit", &memory_limit, "cap on the device's memory, e.g. 24GiB (default: HEADROOM_MEMORY_LIMIT)",
            examples::Flags::Check<std::string>([](const std::string& v) {
              try {
                parse_memory_size(v, "--memory-limit");
                return std::string();
              } catch (const Error& e) {
                return std::string(e.what());
              }
            }));
  if (auto code = flags.parse(argc, argv)) return *code;
  if (list) {
    print_list(std::cout);
    return 0;
  }
  if (preset_names.empty()) {
    std::cerr << "headroom-bench: no preset given: --preset NAME (--list shows them)\n";
    return 2;
  }
  std::vector<Preset> presets;
  try {
    presets = select_presets(preset_names);
  } catch (const ValueError& e) {
    std::cerr << "headroom-bench: " << e.what() << "\n";
    return 2;
  }

  return examples::run_reporting_errors([&] {
    const Device device = Device::parse(device_arg);
    try {
      (void)Tensor::zeros({1}, TensorOptions().device(device));
    } catch (const std::exception& e) {
      throw DeviceError(str_cat("headroom-bench: device ", device.str(), " cannot be used: ", first_line(e.what())));
    }
    if (!memory_limit.empty())
      caching_allocator(device).set_memory_limit(parse_memory_size(memory_limit, "--memory-limit"));
    // Data-parallel presets run over mpirun's ranks (alone: one rank); every rank runs every
    // preset in the same order, and rank 0 alone prints and writes the results.
    bool any_parallel = false;
    for (const Preset& p : presets) any_parallel = any_parallel || p.ddp;
    const bool writer = !any_parallel || dist::world().rank() == 0;
    if (!writer) {
      std::cout.setstate(std::ios::failbit);
      std::cerr.setstate(std::ios::failbit);
    }
    if (writer) std::filesystem::create_directories(out_dir);

    RunInfo info;
    info.device = device.str();
    info.device_name = device_name(device) + (any_parallel ? str_cat(", ", dist::world().size(), " ranks (",
                                                                     dist::world().backend_name(), ")")
                                                           : std::string());
    info.date = utc_now();
    info.steps = steps;
    info.warmup_steps = warmup;

    std::vector<Result> results;
    bool failed = false;
    for (size_t i = 0; i < presets.size(); ++i) {
      const Preset& p = presets[i];
      std::cerr << "[" << i + 1 << "/" << presets.size() << "] " << p.name << ": " << p.description << "\n"
                << std::flush;
      examples::Timer t;
      Result predicted;
      if (predict) predict_preset(p, device, steps, warmup, static_cast<uint64_t>(seed), predicted);
      Result r = run_preset(p, device, steps, warmup, static_cast<uint64_t>(seed), profile);
      r.predicted = predicted.predicted;
      r.predict_status = predicted.predict_status;
      r.predicted_stats = predicted.predicted_stats;
      r.predict_seconds = predicted.predict_seconds;
      if (r.measured)
        std::cerr << "  peak allocated " << format_bytes(r.peak_allocated()) << ", reserved "
                  << format_bytes(r.peak_reserved()) << ", " << std::fixed << std::setprecision(2) << r.step_ms
                  << " ms/step, " << std::setprecision(0) << r.items_per_second << " " << p.item_unit() << "/s, loss "
                  << std::setprecision(4) << r.final_loss;
      else std::cerr << "  " << (r.status == "oom" ? "out of memory: " : "error: ") << r.error;
      std::cerr << " (" << std::fixed << std::setprecision(1) << t.seconds() << " s)\n" << std::flush;
      failed = failed || r.status == "error";
      results.push_back(std::move(r));
    }

    bool predictions_exact = true;
    const std::string table = markdown_table(results) + profile_tables(results) +
                              (predict ? prediction_table(results, &predictions_exact) : std::string());
    std::cout << table << std::flush;
    if (!writer) return failed ? 1 : 0;
    namespace fs = std::filesystem;
    const fs::path dir(out_dir);
    write_text_file((dir / "results.json").string(), results_json(results, info));
    write_text_file((dir / "results.csv").string(), results_csv(results, info));
    write_text_file((dir / "results.md").string(), table);
    write_text_file((dir / "memory_vs_throughput.svg").string(), memory_throughput_svg(results, info));
    std::cerr << "wrote " << (dir / "results.json").string()
              << ", results.csv, results.md and memory_vs_throughput.svg\n";
    if (failed) return 1;
    if (!predictions_exact) {
      std::cerr << "headroom-bench: a prediction differs from its measurement (table above)\n";
      return 3;
    }
    return 0;
  });
}
