// headroom-plan: which mix of memory techniques is fastest for a budget, predicted before
// anything runs (optim/plan.h, docs/planning.md).
//
//   headroom-plan --preset gpt-tiny-cpu-f32-fused --budget 12MiB              # here, calibrated
//   headroom-plan --preset gpt-tiny-cpu-f32-fused --budget 12MiB --verify     # and checked for real
//   headroom-plan --preset gpt2-small-bf16-fused --device cuda --gpu h200 --budget 16GiB --capacity
//   headroom-plan --preset gpt-4l-cpu-f32-fused --budget 16MiB --pipeline 1,2,4 --tensor-parallel 1,2
//
// The preset names the model and the batch (--batch overrides it); its own precision,
// attention, checkpointing and micro-batches are what the planner varies: every mix of
// precision (f32, f16, bf16), attention (naive, fused; GPT only), checkpoint (none, block, sqrt,
// selective; not the MLP, which has no blocks) and micro-batches (1, 2, 4, ... dividing the
// batch), and with --world-size/--zero, --pipeline/--schedule and --tensor-parallel the ranks,
// stages and splits (docs/planning.md). Each mix runs two steps under meta execution against
// the target device's allocator (every device's, for several) with the budget as its limit:
// fits or not, peak allocated and reserved by category. Its step
// time comes from the cost model: on the cpu fitted to a short measured run of one mix per
// precision and attention (--no-calibrate: none, mixes ordered by flops); on cuda the roofline of
// the --gpu datasheet, scaled to a measured run when a GPU is here. --capacity: the largest
// batch each mix runs as one micro-batch in the budget. --verify: the chosen mix and two others
// run for real; predicted against measured peak and step time.
//
// Output: Markdown on stdout; plan.json, plan.md and plan.svg (predicted peak reserved against
// predicted step time, the budget drawn) in --out. Exit codes: 0 when a mix fits, 4 when none
// does, 3 when --verify measured a peak other than predicted (allocated to the byte, reserved
// within 2%) or a verified mix ran out of memory, 1 for a failure, 2 for a bad command line.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "bench/bench_models.h"
#include "engine/meta.h"
#include "bench/bench_report.h"
#include "examples/common.h"
#include "optim/plan.h"

using namespace headroom;
using namespace headroom::bench;

namespace {

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

Preset with_mix(const Preset& base, const optim::Mix& mix, int64_t batch) {
  Preset p = base;
  p.batch = batch;
  p.dtype = mix.precision;
  p.micro_batches = mix.micro_batches;
  p.checkpoint = mix.checkpoint;
  p.ddp = mix.world_size > 1 || mix.zero_stage > 0;
  p.zero_stage = mix.zero_stage;
  p.pipeline_stages = mix.pipeline_stages;
  p.schedule = mix.one_f_one_b ? nn::PipelineSchedule::one_f_one_b : nn::PipelineSchedule::gpipe;
  p.tensor_parallel = mix.tensor_parallel;
  p.replicas = 1;
  p.offload_activations = mix.offload_activations;
  p.offload_optimizer = mix.offload_optimizer;
  if (p.kind == ModelKind::gpt) {
    p.gpt.attention = mix.attention;
    p.gpt.checkpoint = mix.checkpoint;
  }
  p.name = str_cat(base.model, " B=", batch, " ", mix.str(base.kind == ModelKind::gpt));
  return p;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}
std::string num(double v) {
  if (!std::isfinite(v)) return "null";
  std::ostringstream os;
  os << std::setprecision(9) << v;
  return os.str();
}

std::string ms_text(double seconds) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(seconds * 1e3 >= 100 ? 0 : 2) << seconds * 1e3 << " ms";
  return os.str();
}

struct Verified {
  optim::Mix mix;
  int64_t predicted_allocated = 0, predicted_reserved = 0;
  double predicted_seconds = 0;
  int64_t measured_allocated = 0, measured_reserved = 0;
  double measured_seconds = 0;
  std::string status = "ok";
};

// Runs one mix for real: the predicted steps, whose peaks are compared, then `steps` timed ones.
Verified verify_mix(const optim::StepFactory& make, const optim::MixPrediction& m, const optim::PlanOptions& opt,
                    size_t budget, int steps) {
  Verified v;
  v.mix = m.mix;
  v.predicted_allocated = m.peak_allocated();
  v.predicted_reserved = m.peak_reserved();
  v.predicted_seconds = m.seconds;
  // Several devices: each has the budget, and the fullest one is compared (as predicted).
  std::vector<Device> devices{opt.device};
  for (int k = 1; k < m.mix.device_count(); ++k) devices.push_back(Device{opt.device.type, k});
  if (m.mix.device_count() > 1) devices.front() = Device{opt.device.type, 0};
  std::vector<size_t> old_limits;
  for (const Device& d : devices) {
    CachingAllocator& a = caching_allocator(d);
    old_limits.push_back(a.memory_limit());
    a.empty_cache();
    a.reset_peak_stats();
    a.set_memory_limit(budget);
  }
  try {
    std::function<void()> step = make(m.mix, opt.batch);
    for (int i = 0; i < opt.steps; ++i) step();
    MemoryStats s;
    for (const Device& d : devices) {
      synchronize(d);
      const MemoryStats st = caching_allocator(d).stats();
      if (st.reserved_bytes.peak > s.reserved_bytes.peak || s.reserved_bytes.peak == 0) s = st;
    }
    v.measured_allocated = s.allocated_bytes.peak;
    v.measured_reserved = s.reserved_bytes.peak;
    std::vector<double> times;  // the median step: a step the machine interrupted does not move it
    for (int i = 0; i < steps; ++i) {
      Event begin(true), end(true);
      begin.record(opt.device);
      step();
      end.record(opt.device);
      end.synchronize();
      times.push_back(begin.elapsed_ms(end) / 1000.0);
    }
    std::sort(times.begin(), times.end());
    v.measured_seconds =
        times.size() % 2 ? times[times.size() / 2] : (times[times.size() / 2 - 1] + times[times.size() / 2]) / 2;
  } catch (const OutOfMemoryError& e) {
    v.status = str_cat("oom: ", first_line(e.what()));
  }
  for (size_t k = 0; k < devices.size(); ++k) {
    caching_allocator(devices[k]).set_memory_limit(old_limits[k]);
    caching_allocator(devices[k]).empty_cache();
  }
  return v;
}

std::string plan_svg(const optim::Plan& p, bool with_attention, const std::string& title) {
  const double W = 760, H = 460, left = 80, right = 20, top = 40, bottom = 60;
  double tmax = 0, mmax = static_cast<double>(p.budget);
  for (const auto& m : p.mixes)
    if (m.fits()) {
      tmax = std::max(tmax, m.seconds > 0 ? m.seconds : m.flops);
      mmax = std::max(mmax, static_cast<double>(m.peak_reserved()));
    }
  if (tmax <= 0) tmax = 1;
  if (mmax <= 0) mmax = 1;
  tmax *= 1.08;
  mmax *= 1.12;
  auto x = [&](double t) { return left + (W - left - right) * t / tmax; };
  auto y = [&](double b) { return H - bottom - (H - top - bottom) * b / mmax; };
  const bool timed = p.mixes.empty() || p.mixes.front().seconds > 0;
  std::ostringstream os;
  os << std::fixed << std::setprecision(1);
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
     << "\" font-family=\"sans-serif\" font-size=\"11\">\n"
     << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
     << "<text x=\"" << left << "\" y=\"22\" font-size=\"14\">" << title << "</text>\n"
     << "<line x1=\"" << left << "\" y1=\"" << H - bottom << "\" x2=\"" << W - right << "\" y2=\"" << H - bottom
     << "\" stroke=\"black\"/>\n"
     << "<line x1=\"" << left << "\" y1=\"" << top << "\" x2=\"" << left << "\" y2=\"" << H - bottom
     << "\" stroke=\"black\"/>\n"
     << "<text x=\"" << (left + W - right) / 2 << "\" y=\"" << H - 20 << "\" text-anchor=\"middle\">"
     << (timed ? "predicted step time (ms)" : "predicted flops per step") << "</text>\n"
     << "<text x=\"18\" y=\"" << (top + H - bottom) / 2 << "\" transform=\"rotate(-90 18 " << (top + H - bottom) / 2
     << ")\" text-anchor=\"middle\">predicted peak reserved (MiB)</text>\n";
  for (int i = 0; i <= 4; ++i) {
    const double t = tmax * i / 4, b = mmax * i / 4;
    os << "<text x=\"" << x(t) << "\" y=\"" << H - bottom + 16 << "\" text-anchor=\"middle\">"
       << (timed ? num(std::round(t * 1e5) / 100) : num(std::round(t / 1e6) * 1e6)) << "</text>\n"
       << "<text x=\"" << left - 6 << "\" y=\"" << y(b) + 4 << "\" text-anchor=\"end\">"
       << num(std::round(b / 1048576.0 * 10) / 10) << "</text>\n";
  }
  if (p.budget > 0)
    os << "<line x1=\"" << left << "\" y1=\"" << y(static_cast<double>(p.budget)) << "\" x2=\"" << W - right
       << "\" y2=\"" << y(static_cast<double>(p.budget)) << "\" stroke=\"#c00\" stroke-dasharray=\"6 4\"/>\n"
       << "<text x=\"" << W - right - 4 << "\" y=\"" << y(static_cast<double>(p.budget)) - 5
       << "\" text-anchor=\"end\" fill=\"#c00\">budget " << format_bytes(static_cast<int64_t>(p.budget)) << "</text>\n";
  for (size_t i = 0; i < p.mixes.size(); ++i) {
    const auto& m = p.mixes[i];
    if (!m.fits()) continue;
    const double cx = x(timed ? m.seconds : m.flops), cy = y(static_cast<double>(m.peak_reserved()));
    const bool chosen = static_cast<int>(i) == p.chosen;
    os << "<circle cx=\"" << cx << "\" cy=\"" << cy << "\" r=\"" << (chosen ? 6 : 3.5) << "\" fill=\""
       << (chosen ? "#0a0" : "#36c") << "\"><title>" << m.mix.str(with_attention) << "</title></circle>\n";
    if (chosen)
      os << "<text x=\"" << cx + 8 << "\" y=\"" << cy - 8 << "\">chosen: " << m.mix.str(with_attention) << "</text>\n";
  }
  os << "</svg>\n";
  return os.str();
}

}  // namespace

// "1,2,4" -> {1, 2, 4}; what_is_ok checks each value (ValueError naming the flag otherwise).
std::vector<int> int_list(const std::string& text, const std::string& flag, int lo, int hi) {
  std::vector<int> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    int v = 0;
    try {
      v = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    HR_CHECK(used == item.size() && !item.empty() && v >= lo && v <= hi, ValueError, flag, ": '", item,
             "' is not a whole number from ", lo, " to ", hi);
    out.push_back(v);
  }
  HR_CHECK(!out.empty(), ValueError, flag, ": expected a comma-separated list, got '", text, "'");
  return out;
}

// "activations,optimizer" -> {"activations", "optimizer"}; "" -> {}.
std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

// A mix as eleven numbers, and back: --verify under mpirun takes rank 0's picks (every rank must
// run the same mixes, in the same order: their collectives pair up).
constexpr size_t kMixCode = 11;
std::vector<int64_t> encode(const optim::Mix& m) {
  return {static_cast<int64_t>(m.precision),
          static_cast<int64_t>(m.attention),
          static_cast<int64_t>(m.checkpoint),
          m.micro_batches,
          m.world_size,
          m.zero_stage,
          m.pipeline_stages,
          m.one_f_one_b ? 1 : 0,
          m.tensor_parallel,
          m.offload_activations ? 1 : 0,
          m.offload_optimizer ? 1 : 0};
}
bool same(const optim::Mix& m, const std::vector<int64_t>& v, size_t at) {
  const std::vector<int64_t> e = encode(m);
  return std::equal(e.begin(), e.end(), v.begin() + static_cast<std::ptrdiff_t>(at));
}

int main(int argc, char** argv) {
  std::string preset_name, device_arg = "cpu", gpu = "h100", budget_arg, out_dir = "headroom-plan-results";
  std::string world_sizes_arg = "1", zero_arg = "0", pipeline_arg = "1", schedule_arg = "1f1b",
              tensor_parallel_arg = "1";
  std::string offload_arg;
  int64_t batch = 0, seed = 1, max_batch = 1024, verify_steps = 5;
  bool capacity_mode = false, verify = false, no_calibrate = false;

  examples::Flags flags("headroom-plan",
                        "Predicts, for a model and a memory budget, every mix of precision, attention, checkpointing "
                        "and micro-batches -- fits or not, peak memory, step time -- and chooses the fastest that "
                        "fits.");
  flags.add("preset", &preset_name, "the model and batch (headroom-bench --list); its techniques are varied");
  flags.add("batch", &batch, "items per step (0: the preset's)", examples::at_least<int64_t>(0));
  flags.add("device", &device_arg, "the device planned for: cpu or cuda[:N] (predicted on any machine)",
            examples::device_name());
  flags.add("gpu", &gpu, "cuda: the datasheet rates, h100 or h200",
            examples::Flags::Check<std::string>([](const std::string& v) {
              return optim::datasheet_rates(v) ? std::string() : std::string("expected h100 or h200");
            }));
  flags.add("budget", &budget_arg, "the memory there is, e.g. 256MiB or 16GiB",
            examples::Flags::Check<std::string>([](const std::string& v) {
              try {
                parse_memory_size(v, "--budget");
                return std::string();
              } catch (const Error& e) {
                return std::string(e.what());
              }
            }));
  flags.add("world-size", &world_sizes_arg,
            "data parallelism: the rank counts to plan for, e.g. 1,2,8 (each rank takes batch / N; the memory "
            "predicted is one rank's)");
  flags.add("zero", &zero_arg, "with more than one rank: the ZeRO stages to plan for, e.g. 0,1,2");
  flags.add("pipeline", &pipeline_arg,
            "pipeline stages to plan for on devices 0..K-1 of --device's kind, e.g. 1,2,4 (GPT presets; a pipeline's "
            "micro-batches are its M); every device's memory is predicted, each must fit --budget");
  flags.add("schedule", &schedule_arg, "--pipeline's schedules: 1f1b, gpipe or both (1f1b,gpipe)",
            examples::Flags::Check<std::string>([](const std::string& v) {
              return v == "1f1b" || v == "gpipe" || v == "1f1b,gpipe" || v == "gpipe,1f1b"
                         ? std::string()
                         : std::string("expected 1f1b, gpipe or 1f1b,gpipe");
            }));
  flags.add("tensor-parallel", &tensor_parallel_arg,
            "tensor-parallel degrees to plan for on devices 0..T-1, e.g. 1,2,4 (GPT presets); each device must fit "
            "--budget");
  flags.add("offload", &offload_arg,
            "also plan offload to the pinned host pool (docs/offload.md): activations, optimizer (GPT presets: "
            "AdamW's state) or both (activations,optimizer); each mix with and without it");
  flags.add("capacity", &capacity_mode, "print the largest batch each mix runs as one micro-batch in the budget");
  flags.add("max-batch", &max_batch, "--capacity: the largest batch tried", examples::at_least<int64_t>(1));
  flags.add("verify", &verify, "run the chosen mix and two others for real: predicted against measured");
  flags.add("verify-steps", &verify_steps, "--verify: timed steps per mix", examples::at_least<int64_t>(1));
  flags.add("no-calibrate", &no_calibrate, "no measured run: the cpu orders mixes by flops, cuda uses the datasheet");
  flags.add("seed", &seed, "seed of weights and synthetic data", examples::at_least<int64_t>(0));
  flags.add("out", &out_dir, "folder for plan.json, plan.md and plan.svg");
  if (auto code = flags.parse(argc, argv)) return *code;
  if (preset_name.empty() || budget_arg.empty()) {
    std::cerr << "headroom-plan: --preset and --budget are required (headroom-plan --help)\n";
    return 2;
  }
  Preset base;
  try {
    std::vector<Preset> ps = select_presets({preset_name});
    if (ps.size() != 1) throw ValueError(str_cat("'", preset_name, "' is a group; give one preset"));
    base = ps.front();
  } catch (const ValueError& e) {
    std::cerr << "headroom-plan: " << e.what() << "\n";
    return 2;
  }
  const size_t budget = parse_memory_size(budget_arg, "--budget");
  if (batch == 0) batch = base.batch;

  return examples::run_reporting_errors([&]() -> int {
    const Device device = Device::parse(device_arg);
    const bool runnable = device.is_cpu() || device_count(DeviceType::cuda) > device.index;
    if (verify && !runnable)
      throw DeviceError(str_cat("headroom-plan: --verify runs mixes for real, and ", device.str(), " is not here"));
    const bool gpt = base.kind == ModelKind::gpt;

    const std::vector<int> world_sizes = int_list(world_sizes_arg, "--world-size", 1, 1 << 20);
    const std::vector<int> zero_stages = int_list(zero_arg, "--zero", 0, 2);
    const std::vector<int> pipeline_stages = int_list(pipeline_arg, "--pipeline", 1, 8);
    const std::vector<int> tensor_parallel = int_list(tensor_parallel_arg, "--tensor-parallel", 1, 8);
    const bool several = std::any_of(pipeline_stages.begin(), pipeline_stages.end(), [](int k) { return k > 1; }) ||
                         std::any_of(tensor_parallel.begin(), tensor_parallel.end(), [](int t) { return t > 1; });
    HR_CHECK(!several || gpt, ValueError, "headroom-plan: --pipeline and --tensor-parallel plan GPT presets (",
             base.name, " is not one)");
    // Under mpirun, rank 0 prints and writes; every rank plans and verifies alike.
    dist::ProcessGroup* world = nullptr;
    for (int w : world_sizes)
      if (w > 1) world = &dist::world();
    if (!world && std::getenv("OMPI_COMM_WORLD_SIZE")) world = &dist::world();
    const bool writer = !world || world->rank() == 0;
    if (!writer) std::cout.setstate(std::ios::failbit);

    // A data-parallel mix runs over the world when it is that big and the step is real, else as
    // rank 0 of a MetaGroup of its size (Note [meta groups]): inside a MetaScope nothing moves
    // either way; for real (calibration), compute without communication.
    optim::StepFactory make = [&](const optim::Mix& mix, int64_t b) -> std::function<void()> {
      const Preset p = with_mix(base, mix, b);
      std::shared_ptr<dist::ProcessGroup> group;
      if (p.ddp) {
        if (!meta_active() && world && world->size() == mix.world_size)
          group = std::shared_ptr<dist::ProcessGroup>(world, [](dist::ProcessGroup*) {});
        else group = std::make_shared<dist::MetaGroup>(0, mix.world_size, device.type);
      }
      manual_seed(static_cast<uint64_t>(seed));
      std::shared_ptr<Workload> w = make_workload(p, device, static_cast<uint64_t>(seed), group.get());
      return [w, group] { (void)w->step(); };
    };
    optim::PlanSpace space = optim::PlanSpace::for_batch(batch);
    space.world_sizes = world_sizes;
    space.zero_stages = zero_stages;
    space.pipeline_stages = pipeline_stages;
    space.tensor_parallel = tensor_parallel;
    space.schedules.clear();
    if (schedule_arg.find("1f1b") != std::string::npos) space.schedules.push_back(true);
    if (schedule_arg.find("gpipe") != std::string::npos) space.schedules.push_back(false);
    space.has_attention = gpt;
    // --offload: each mix with and without (Note [planning offload]).
    for (const std::string& what : split_list(offload_arg)) {
      if (what == "activations") space.offload_activations = {false, true};
      else if (what == "optimizer") space.offload_optimizer = {false, true};
      else throw ValueError(str_cat("headroom-plan: --offload takes activations, optimizer or both, got '", what, "'"));
    }
    HR_CHECK(space.offload_optimizer.size() == 1 || gpt, ValueError,
             "headroom-plan: --offload optimizer offloads "
             "AdamW's state, and ",
             base.name, " trains with SGD (GPT presets use AdamW)");
    if (base.kind == ModelKind::mlp) space.checkpoints = {nn::CheckpointMode::none};
    optim::PlanOptions opt;
    opt.device = device;
    opt.batch = batch;
    opt.gpu = gpu;
    opt.calibrate = !no_calibrate && runnable;
    if (device.is_cpu()) {  // the cpu devices share the host's cores
      const DeviceProperties props = device_properties(device);
      opt.concurrent_devices = std::max(1, props.compute_units / std::max(1, props.threads_per_op));
    }

    std::ostringstream md;
    md << "# headroom-plan: " << base.model << ", batch " << batch << ", " << device.str()
       << (device.is_cuda() ? str_cat(" (", gpu, ")") : std::string()) << ", budget "
       << format_bytes(static_cast<int64_t>(budget)) << "\n\n";
    examples::Timer timer;
    const optim::Plan p = optim::plan(make, budget, space, opt);
    double predict_seconds = 0;
    for (const auto& m : p.mixes) predict_seconds += m.predict_wall_seconds;
    md << p.table(gpt);
    if (std::any_of(world_sizes.begin(), world_sizes.end(), [](int w) { return w > 1; }))
      md << "\nMixes with xN run on N ranks, each on batch / N: their memory is one rank's (Note [meta groups]); their "
            "time is one rank's compute, without the communication (not priced yet; docs/distributed.md measures "
            "how much of it backward hides).\n";
    if (several)
      md << "\nMixes with ppK run in K pipeline stages, with tpT over T devices (devices 0..N-1 of " << device.str()
         << "'s kind, docs/model-parallel.md): every device's memory is predicted and must fit the budget, and the "
            "peaks shown are the fullest device's. Their time is priced per device -- the slowest rank, or the "
            "pipeline's fill, drain and slowest stage (Note [planning]) -- without the copies between devices"
         << (opt.concurrent_devices > 0 ? str_cat("; the cpu devices share the host's cores, so no more than ",
                                                  opt.concurrent_devices, " compute at once")
                                        : std::string())
         << ".\n";
    md << std::fixed << std::setprecision(2) << "\n"
       << p.mixes.size() << " mixes predicted in " << predict_seconds << " s";
    if (!p.calibrated_on.empty()) {
      md << "; calibrated on";
      for (const auto& m : p.calibrated_on) md << " [" << m.str(gpt) << "]";
    }
    md << " (" << timer.seconds() << " s in all)\n";

    // --capacity: the largest batch of each mix as one micro-batch.
    std::vector<std::pair<optim::Mix, int64_t>> capacities;
    if (capacity_mode) {
      optim::PlanSpace cs = space;
      cs.micro_batches = {1};
      cs.batch = 0;
      // Per rank: a data-parallel mix's batch is N times what each rank runs.
      optim::StepFactory per_rank = [&](const optim::Mix& mix, int64_t b) { return make(mix, b * mix.world_size); };
      md << "\n## Capacity: largest batch as one micro-batch in " << format_bytes(static_cast<int64_t>(budget))
         << " (per rank)\n\n| mix | largest batch per rank | " << base.item_unit()
         << " per rank and step |\n|---|---:|---:|\n";
      for (const optim::Mix& mix : cs.mixes()) {
        const int64_t c = optim::capacity(per_rank, mix, budget, opt, max_batch);
        capacities.emplace_back(mix, c);
        md << "| " << mix.str(gpt) << " | " << (c >= max_batch ? str_cat(">= ", c) : std::to_string(c)) << " | "
           << (gpt ? c * base.seq_len : c) << " |\n";
      }
    }

    // --verify: the chosen mix, the slowest that fits and the one in the middle, for real.
    std::vector<Verified> verified;
    bool memory_mismatch = false;  // a verified peak allocated off by a byte, or reserved by more than 2%
    if (verify && p.choice()) {
      // What can run here for real: one rank, or exactly the world's size.
      const int here = world ? world->size() : 1;
      std::vector<size_t> fitting;
      for (size_t i = 0; i < p.mixes.size(); ++i)
        if (p.mixes[i].fits() && (p.mixes[i].mix.world_size == 1 || p.mixes[i].mix.world_size == here))
          fitting.push_back(i);
      std::vector<size_t> picks;
      if (!fitting.empty()) picks.push_back(fitting.front());
      if (fitting.size() > 2) picks.push_back(fitting[fitting.size() / 2]);
      if (fitting.size() > 1) picks.push_back(fitting.back());
      // Under mpirun, also the fastest of each ZeRO stage over the whole world: one rank's
      // predicted memory checked against that rank's allocator.
      if (here > 1)
        for (int z : zero_stages)
          for (size_t i : fitting)
            if (p.mixes[i].mix.world_size == here && p.mixes[i].mix.zero_stage == z) {
              if (std::find(picks.begin(), picks.end(), i) == picks.end()) picks.push_back(i);
              break;
            }
      // And the fastest pipeline and the fastest tensor-parallel mix: every device's predicted
      // peak checked against its own allocator (the fullest's compared).
      for (int kind = 0; kind < 2; ++kind)
        for (size_t i : fitting) {
          const optim::Mix& m = p.mixes[i].mix;
          if ((kind == 0 ? m.pipeline_stages : m.tensor_parallel) > 1) {
            if (std::find(picks.begin(), picks.end(), i) == picks.end()) picks.push_back(i);
            break;
          }
        }
      if (world && world->size() > 1) {  // rank 0's picks, on every rank
        std::vector<int64_t> codes(1 + kMixCode * 8, 0);
        codes[0] = static_cast<int64_t>(std::min<size_t>(picks.size(), 8));
        for (size_t k = 0; k < picks.size() && k < 8; ++k) {
          const std::vector<int64_t> e = encode(p.mixes[picks[k]].mix);
          std::copy(e.begin(), e.end(), codes.begin() + static_cast<std::ptrdiff_t>(1 + kMixCode * k));
        }
        Tensor t = Tensor::from_vector(codes, {static_cast<int64_t>(codes.size())}, DType::i64);
        world->broadcast(t, 0)->wait();
        codes = t.to_vector<int64_t>();
        picks.clear();
        for (int64_t k = 0; k < codes[0]; ++k)
          for (size_t i = 0; i < p.mixes.size(); ++i)
            if (same(p.mixes[i].mix, codes, static_cast<size_t>(1 + kMixCode * k))) {
              picks.push_back(i);
              break;
            }
      }
      for (size_t i : picks) {
        std::cerr << "verifying " << p.mixes[i].mix.str(gpt) << "\n" << std::flush;
        verified.push_back(verify_mix(make, p.mixes[i], opt, budget, static_cast<int>(verify_steps)));
      }
      md << "\n## Verified: predicted against measured (median of " << verify_steps << " timed steps each)\n\n"
         << "| mix | peak allocated predicted | measured | peak reserved predicted | measured | step predicted | "
            "measured | error |\n|---|---:|---:|---:|---:|---:|---:|---:|\n";
      for (const Verified& v : verified) {
        md << "| " << v.mix.str(gpt) << " | " << format_bytes(v.predicted_allocated) << " | ";
        if (v.status != "ok") {
          md << v.status << " | | | | | |\n";
          continue;
        }
        md << format_bytes(v.measured_allocated) << " | " << format_bytes(v.predicted_reserved) << " | "
           << format_bytes(v.measured_reserved) << " | " << ms_text(v.predicted_seconds) << " | "
           << ms_text(v.measured_seconds) << " | ";
        if (v.predicted_seconds > 0)
          md << std::showpos << std::setprecision(0) << 100 * (v.predicted_seconds / v.measured_seconds - 1)
             << std::noshowpos << "% |\n";
        else md << "- |\n";
      }
      int pairs = 0, ordered = 0;
      for (size_t i = 0; i < verified.size(); ++i)
        for (size_t j = i + 1; j < verified.size(); ++j) {
          if (verified[i].status != "ok" || verified[j].status != "ok") continue;
          ++pairs;
          const bool pred = verified[i].predicted_seconds < verified[j].predicted_seconds;
          const bool meas = verified[i].measured_seconds < verified[j].measured_seconds;
          ordered += pred == meas;
        }
      md << "\nranking: " << ordered << " of " << pairs << " pairs in the measured order\n";
      for (const Verified& v : verified) {
        // ZeRO-2 among several ranks: the prediction keeps the gradient buckets to backward's
        // end (Note [ZeRO stages]), an upper bound a real run may stay under.
        const bool bound = v.mix.zero_stage == 2 && v.mix.world_size > 1;
        // A pipeline's stages run on threads: their copies between devices land when the
        // threads' timing decides (Note [meta in worker threads]): 5% or 64 KiB.
        const bool threaded = v.mix.pipeline_stages > 1;
        const bool allocated_ok = bound      ? v.measured_allocated <= v.predicted_allocated
                                  : threaded ? std::llabs(v.measured_allocated - v.predicted_allocated) <=
                                                   std::max<int64_t>(v.measured_allocated / 20, 64 << 10)
                                             : v.measured_allocated == v.predicted_allocated;
        // The threaded pipeline's segments likewise: within 5% or one 2 MiB segment.
        const double reserved_off = std::abs(static_cast<double>(v.measured_reserved - v.predicted_reserved));
        const bool reserved_ok =
            (bound && v.measured_reserved <= v.predicted_reserved) ||
            reserved_off <= 0.02 * static_cast<double>(v.measured_reserved) ||
            (threaded && reserved_off <= std::max(0.05 * static_cast<double>(v.measured_reserved), 2.0 * 1048576));
        if (v.status != "ok" || !allocated_ok || !reserved_ok) memory_mismatch = true;
      }
    }

    const std::string text = md.str();
    std::cout << text << std::flush;
    if (!writer) return memory_mismatch ? 3 : (p.choice() ? 0 : 4);
    namespace fs = std::filesystem;
    fs::create_directories(out_dir);
    const fs::path dir(out_dir);
    write_text_file((dir / "plan.md").string(), text);
    std::ostringstream js;
    js << "{\n  \"model\": " << json_string(base.model) << ",\n  \"batch\": " << batch
       << ",\n  \"device\": " << json_string(device.str())
       << ",\n  \"gpu\": " << json_string(device.is_cuda() ? gpu : "") << ",\n  \"budget_bytes\": " << budget
       << ",\n  \"cost_model\": " << json_string(p.cost_model)
       << ",\n  \"chosen\": " << (p.choice() ? json_string(p.choice()->mix.str(gpt)) : "null") << ",\n  \"mixes\": [";
    for (size_t i = 0; i < p.mixes.size(); ++i) {
      const auto& m = p.mixes[i];
      js << (i ? "," : "") << "\n    {\"mix\": " << json_string(m.mix.str(gpt)) << ", \"precision\": \""
         << dtype_name(m.mix.precision) << "\", \"attention\": \"" << attention_impl_name(m.mix.attention)
         << "\", \"checkpoint\": \"" << nn::checkpoint_mode_name(m.mix.checkpoint)
         << "\", \"micro_batches\": " << m.mix.micro_batches << ", \"world_size\": " << m.mix.world_size
         << ", \"zero_stage\": " << m.mix.zero_stage << ", \"pipeline_stages\": " << m.mix.pipeline_stages
         << ", \"schedule\": " << (m.mix.pipeline_stages > 1 ? (m.mix.one_f_one_b ? "\"1f1b\"" : "\"gpipe\"") : "null")
         << ", \"tensor_parallel\": " << m.mix.tensor_parallel;
      js << ", \"devices\": [";
      for (size_t k = 0; k < m.device_stats.size(); ++k)
        js << (k ? ", " : "") << "{\"device\": " << json_string(m.device_stats[k].first.str())
           << ", \"peak_allocated_bytes\": " << m.device_stats[k].second.allocated_bytes.peak
           << ", \"peak_reserved_bytes\": " << m.device_stats[k].second.reserved_bytes.peak << "}";
      js << "], \"status\": " << json_string(m.status) << ", \"fits\": " << (m.fits() ? "true" : "false")
         << ", \"peak_allocated_bytes\": " << m.peak_allocated() << ", \"peak_reserved_bytes\": " << m.peak_reserved()
         << ", \"peak_by_category\": {";
      for (int c = 0; c < kNumMemoryCategories; ++c)
        js << (c ? ", " : "") << "\"" << category_name(static_cast<MemoryCategory>(c))
           << "\": " << m.stats.category(static_cast<MemoryCategory>(c)).peak;
      js << "}, \"predicted_step_seconds\": " << num(m.seconds) << ", \"ops\": " << m.ops
         << ", \"flops\": " << num(m.flops) << ", \"bytes\": " << num(m.bytes) << "}";
    }
    js << "\n  ],\n  \"capacity\": [";
    for (size_t i = 0; i < capacities.size(); ++i)
      js << (i ? "," : "") << "\n    {\"mix\": " << json_string(capacities[i].first.str(gpt))
         << ", \"largest_batch\": " << capacities[i].second << "}";
    js << "\n  ],\n  \"verified\": [";
    for (size_t i = 0; i < verified.size(); ++i) {
      const Verified& v = verified[i];
      js << (i ? "," : "") << "\n    {\"mix\": " << json_string(v.mix.str(gpt))
         << ", \"status\": " << json_string(v.status)
         << ", \"predicted_peak_allocated_bytes\": " << v.predicted_allocated
         << ", \"measured_peak_allocated_bytes\": " << v.measured_allocated
         << ", \"predicted_peak_reserved_bytes\": " << v.predicted_reserved
         << ", \"measured_peak_reserved_bytes\": " << v.measured_reserved
         << ", \"predicted_step_seconds\": " << num(v.predicted_seconds)
         << ", \"measured_step_seconds\": " << num(v.measured_seconds) << "}";
    }
    js << "\n  ]\n}\n";
    write_text_file((dir / "plan.json").string(), js.str());
    write_text_file(
        (dir / "plan.svg").string(),
        plan_svg(p, gpt, str_cat(base.model, " B=", batch, " on ", device.str(), ": predicted memory against time")));
    std::cerr << "wrote " << (dir / "plan.json").string() << ", plan.md and plan.svg\n";
    if (memory_mismatch) {
      std::cerr << "headroom-plan: a verified mix's memory differs from its prediction (table above)\n";
      return 3;
    }
    return p.choice() ? 0 : 4;
  });
}
