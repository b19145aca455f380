#include "optim/plan.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <sstream>

#include "engine/backend.h"
#include "engine/event.h"
#include "engine/meta.h"

namespace headroom::optim {

namespace {

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

double wall_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The work an op's time is proportional to (Note [cost model]).
double work_of(const OpRecord& r) { return is_compute_op(r.op) ? r.cost.flops : r.cost.bytes; }

std::string format_seconds(double s) {
  std::ostringstream os;
  os << std::fixed;
  if (s >= 1) os << std::setprecision(2) << s << " s";
  else if (s >= 1e-3) os << std::setprecision(2) << s * 1e3 << " ms";
  else os << std::setprecision(1) << s * 1e6 << " us";
  return os.str();
}

}  // namespace

std::string Mix::str(bool with_attention) const {
  std::string s = dtype_name(precision);
  if (with_attention) s += str_cat(" ", attention_impl_name(attention));
  s += str_cat(" ckpt-", nn::checkpoint_mode_name(checkpoint));
  s += str_cat(" mb", micro_batches);
  if (world_size > 1) s += str_cat(" x", world_size);
  if (zero_stage > 0) s += str_cat(" zero", zero_stage);
  if (pipeline_stages > 1) s += str_cat(" pp", pipeline_stages, one_f_one_b ? "-1f1b" : "-gpipe");
  if (tensor_parallel > 1) s += str_cat(" tp", tensor_parallel);
  if (offload_activations) s += " offload-act";
  if (offload_optimizer) s += " offload-opt";
  return s;
}

PlanSpace PlanSpace::for_batch(int64_t batch) {
  HR_CHECK(batch >= 1, ValueError, "PlanSpace::for_batch: the batch must be at least 1, got ", batch);
  PlanSpace s;
  s.batch = batch;
  s.micro_batches.clear();
  for (int64_t k = 1; k <= batch; k *= 2)
    if (batch % k == 0) s.micro_batches.push_back(k);
  return s;
}

std::vector<Mix> PlanSpace::mixes() const {
  const std::vector<DType> ps = precisions.empty() ? std::vector<DType>{Mix{}.precision} : precisions;
  std::vector<AttentionImpl> as = attentions.empty() ? std::vector<AttentionImpl>{Mix{}.attention} : attentions;
  if (!has_attention) as = {Mix{}.attention};
  const std::vector<nn::CheckpointMode> cs =
      checkpoints.empty() ? std::vector<nn::CheckpointMode>{Mix{}.checkpoint} : checkpoints;
  const std::vector<int64_t> ms = micro_batches.empty() ? std::vector<int64_t>{1} : micro_batches;
  const std::vector<int> ws = world_sizes.empty() ? std::vector<int>{1} : world_sizes;
  const std::vector<int> zs = zero_stages.empty() ? std::vector<int>{0} : zero_stages;
  const std::vector<int> pps = pipeline_stages.empty() ? std::vector<int>{1} : pipeline_stages;
  const std::vector<bool> scheds = schedules.empty() ? std::vector<bool>{true} : schedules;
  const std::vector<int> tps = tensor_parallel.empty() ? std::vector<int>{1} : tensor_parallel;
  const std::vector<bool> oas = offload_activations.empty() ? std::vector<bool>{false} : offload_activations;
  const std::vector<bool> oos = offload_optimizer.empty() ? std::vector<bool>{false} : offload_optimizer;
  struct Split {
    int stages, tp;
    bool one_f_one_b;
  };
  std::vector<Split> splits;
  for (int k : pps)
    for (int t : tps) {
      HR_CHECK(k >= 1 && t >= 1, ValueError, "PlanSpace: pipeline stages and tensor-parallel devices are at least 1");
      if (k > 1 && t > 1) continue;  // not together
      if (k > 1)
        for (bool f : scheds) splits.push_back({k, t, f});
      else splits.push_back({k, t, true});
    }
  std::vector<Mix> out;
  for (const Split& sp : splits)
    for (int w : ws) {
      if ((sp.stages > 1 || sp.tp > 1) && w > 1) continue;  // several devices of one process, one rank
      HR_CHECK(w >= 1, ValueError, "PlanSpace: a world size must be at least 1, got ", w);
      if (batch > 0 && batch % w != 0) continue;  // every rank takes an equal share
      for (int z : zs) {
        HR_CHECK(z >= 0 && z <= 2, ValueError, "PlanSpace: a ZeRO stage is 0, 1 or 2, got ", z);
        if (z > 0 && w == 1) continue;  // sharding over one rank divides nothing
        for (DType p : ps)
          for (AttentionImpl a : as)
            for (nn::CheckpointMode c : cs)
              for (int64_t m : ms) {
                if (batch > 0 && m > batch / w) continue;  // a micro-batch holds one item at least
                for (bool oa : oas)
                  for (bool oo : oos) {
                    // Offload: one device, one rank (Note [planning offload]).
                    if ((oa || oo) && (w > 1 || sp.stages > 1 || sp.tp > 1)) continue;
                    Mix mix{p, a, c, m};
                    mix.world_size = w;
                    mix.zero_stage = z;
                    mix.pipeline_stages = sp.stages;
                    mix.one_f_one_b = sp.one_f_one_b;
                    mix.tensor_parallel = sp.tp;
                    mix.offload_activations = oa;
                    mix.offload_optimizer = oo;
                    out.push_back(mix);
                  }
              }
      }
    }
  return out;
}

// ---- rates and the cost model (Note [cost model]) ----

const DeviceRates* datasheet_rates(const std::string& kind) {
  // NVIDIA's H100 and H200 Tensor Core GPU datasheets, SXM parts, dense (no sparsity): bf16/f16
  // tensor cores 989 TFLOP/s, fp32 67 TFLOP/s; HBM3 3.35 TB/s (H100 80GB), HBM3e 4.8 TB/s (H200).
  // Both: PCIe Gen5 x16, 128 GB/s both ways together, so 64 GB/s each way to the host.
  static const DeviceRates h100{"H100 SXM (datasheet)", 989e12, 67e12, 67e12, 3.35e12, 64e9};
  static const DeviceRates h200{"H200 SXM (datasheet)", 989e12, 67e12, 67e12, 4.8e12, 64e9};
  if (kind == "h100") return &h100;
  if (kind == "h200") return &h200;
  return nullptr;
}

bool is_compute_op(OpId op) {
  switch (op) {
    case OpId::matmul:
    case OpId::conv2d_forward:
    case OpId::conv2d_backward_input:
    case OpId::conv2d_backward_weight:
    case OpId::attention_forward:
    case OpId::attention_backward: return true;
    default: return false;
  }
}

CostModel CostModel::roofline(const DeviceRates& rates) {
  CostModel m;
  m.rates_ = rates;
  m.description_ = str_cat("roofline of ", rates.name, ", uncalibrated (a lower bound)");
  return m;
}

double CostModel::roofline_seconds(const OpRecord& r) const {
  const bool half = r.dtype == DType::f16 || r.dtype == DType::bf16;
  const double flop_rate =
      is_compute_op(r.op) ? (half ? rates_.matmul_flops_16 : rates_.matmul_flops_32) : rates_.vector_flops;
  const double t_flops = flop_rate > 0 ? r.cost.flops / flop_rate : 0;
  const double t_bytes = rates_.bytes_per_second > 0 ? r.cost.bytes / rates_.bytes_per_second : 0;
  return std::max(t_flops, t_bytes);
}

CostModel CostModel::fit_scaled(const DeviceRates& rates,
                                const std::vector<std::pair<std::vector<OpRecord>, double>>& runs) {
  CostModel m = roofline(rates);
  double predicted = 0, measured = 0;
  for (const auto& [ops, seconds] : runs) {
    for (const OpRecord& r : ops) predicted += m.roofline_seconds(r);
    measured += seconds;
  }
  HR_CHECK(!runs.empty() && predicted > 0, ValueError, "CostModel::fit_scaled: no measured step with ops to fit to");
  m.scale_ = measured / predicted;
  m.calibrated_ = true;
  std::ostringstream os;
  os << "roofline of " << rates.name << " x " << std::fixed << std::setprecision(2) << m.scale_ << ", fitted to "
     << runs.size() << " measured steps";
  m.description_ = os.str();
  return m;
}

namespace {
// The calls of one class: their times at each distinct amount of work.
struct Samples {
  std::map<double, std::vector<double>> by_work;
  double total_w = 0, total_t = 0;
  void add(double w, double t) {
    by_work[w].push_back(t);
    total_w += w;
    total_t += t;
  }
};
}  // namespace

CostModel CostModel::fit_cpu(const std::vector<std::pair<std::vector<OpRecord>, double>>& runs) {
  CostModel m;
  m.fitted_ = true;
  m.calibrated_ = true;
  std::map<Key, Samples> classes;
  std::map<int, Samples> ops;
  Samples compute, memory;
  double op_time = 0, step_time = 0, calls = 0;
  for (const auto& [records, seconds] : runs) {
    for (const OpRecord& r : records) {
      const double w = work_of(r);
      classes[Key{static_cast<int>(r.op), static_cast<int>(r.dtype), r.cost.variant}].add(w, r.seconds);
      ops[static_cast<int>(r.op)].add(w, r.seconds);
      (is_compute_op(r.op) ? compute : memory).add(w, r.seconds);
      op_time += r.seconds;
      calls += 1;
    }
    step_time += seconds;
  }
  HR_CHECK(calls > 0, ValueError, "CostModel::fit_cpu: no timed op to fit to");
  auto curve = [](const Samples& s) {
    Curve c;
    // The mean of the calls at one size: the calibration steps are then reproduced exactly
    // (their ops' times plus the time between ops), interruptions included. With the median
    // they were left out: the chosen mixes of five cpu plans came out 18-35% short (2026-12-07).
    for (const auto& [w, ts] : s.by_work) {
      double sum = 0;
      for (double t : ts) sum += t;
      c.points.emplace_back(w, sum / static_cast<double>(ts.size()));
    }
    return c;
  };
  for (const auto& [key, s] : classes) m.fits_[key] = curve(s);
  for (const auto& [op, s] : ops) m.by_op_[op] = curve(s);
  m.compute_rate_ = compute.total_w > 0 ? compute.total_t / compute.total_w : 0;
  m.memory_rate_ = memory.total_w > 0 ? memory.total_t / memory.total_w : 0;
  m.framework_per_op_ = std::max(0.0, (step_time - op_time) / calls);
  std::ostringstream os;
  os << "fitted to " << runs.size() << " timed steps: " << classes.size() << " op classes, "
     << format_seconds(m.framework_per_op_) << " between ops";
  m.description_ = os.str();
  return m;
}

double CostModel::Curve::at(double w) const {
  // Between two sizes seen: interpolated in log-log (a call's efficiency changes with its size);
  // above the largest: in proportion to it; below the smallest: the smallest's time, which is
  // mostly the call's fixed cost.
  if (points.empty()) return 0;
  if (w <= points.front().first) return points.front().second;
  if (w >= points.back().first) {
    const auto& [w1, t1] = points.back();
    return w1 > 0 ? t1 * w / w1 : t1;
  }
  auto hi = std::lower_bound(points.begin(), points.end(), w,
                             [](const std::pair<double, double>& p, double v) { return p.first < v; });
  auto lo = hi - 1;
  const double w0 = lo->first, t0 = lo->second, w1 = hi->first, t1 = hi->second;
  if (w0 > 0 && t0 > 0 && t1 > 0) {
    const double f = std::log(w / w0) / std::log(w1 / w0);
    return std::exp(std::log(t0) + f * (std::log(t1) - std::log(t0)));
  }
  return t0 + (t1 - t0) * (w - w0) / (w1 - w0);
}

double CostModel::op_seconds(const OpRecord& r) const {
  if (!fitted_) return scale_ * roofline_seconds(r);
  const double w = work_of(r);
  auto it = fits_.find(Key{static_cast<int>(r.op), static_cast<int>(r.dtype), r.cost.variant});
  if (it != fits_.end()) return it->second.at(w);
  auto op = by_op_.find(static_cast<int>(r.op));
  if (op != by_op_.end()) return op->second.at(w);
  return w * (is_compute_op(r.op) ? compute_rate_ : memory_rate_);
}

double CostModel::predict_seconds(const std::vector<OpRecord>& ops) const {
  double t = 0;
  for (const OpRecord& r : ops) t += op_seconds(r);
  return t + framework_per_op_ * static_cast<double>(ops.size());
}

// ---- prediction (Note [planning]) ----

namespace {
std::optional<CostModel> default_cost(const PlanOptions& options) {
  if (options.cost) return options.cost;
  if (options.device.is_cuda()) {
    const DeviceRates* rates = datasheet_rates(options.gpu);
    HR_CHECK(rates, ValueError, "plan: no datasheet for gpu '", options.gpu, "' (h100, h200)");
    return CostModel::roofline(*rates);
  }
  return std::nullopt;
}

// A step's time from its ops (Note [planning]): one device's sum; several devices priced apart.
double step_seconds(const CostModel& cost, const Mix& mix, const std::vector<OpRecord>& all_records, int concurrent) {
  // Note [planning offload]: a GPU step's ops on host tensors (the offloaded optimizer's update)
  // are the host's work, priced by add_offload_seconds.
  std::vector<OpRecord> device_records;
  const bool gpu = std::any_of(all_records.begin(), all_records.end(),
                               [](const OpRecord& r) { return r.device == DeviceType::cuda; });
  if (gpu)
    for (const OpRecord& r : all_records)
      if (r.device == DeviceType::cuda) device_records.push_back(r);
  const std::vector<OpRecord>& records = gpu ? device_records : all_records;
  if (mix.device_count() == 1) return cost.predict_seconds(records);
  std::map<int, std::vector<OpRecord>> per;
  for (const OpRecord& r : records) per[r.device_index].push_back(r);
  double most = 0, total = 0;
  for (const auto& [d, ops] : per) {
    const double t = cost.predict_seconds(ops);
    most = std::max(most, t);
    total += t;
  }
  const auto m = static_cast<double>(mix.micro_batches);
  // Tensor parallel: the slowest rank; a pipeline: fill, drain and the slowest stage.
  const double apart = mix.pipeline_stages <= 1 ? most : total / m + (m - 1) * most / m;
  // Devices that share fewer cores than they are take at least their summed time over those.
  if (concurrent > 0 && concurrent < mix.device_count()) return std::max(apart, total / concurrent);
  return apart;
}

// Note [planning offload]: on a GPU, the host link's and the host's share of an offloaded step.
// r.seconds holds the device's compute (the host's ops were left out of it by step_seconds).
void add_offload_seconds(MixPrediction& r, const PlanOptions& options) {
  if (!options.device.is_cuda() || (!r.mix.offload_activations && !r.mix.offload_optimizer)) return;
  const DeviceRates* rates = datasheet_rates(options.gpu);
  const double link = rates && rates->host_link_bytes_per_second > 0 ? rates->host_link_bytes_per_second : 0;
  if (link <= 0) return;
  double host_bytes = 0;
  for (const OpRecord& op : r.records)
    if (op.device == DeviceType::cpu) host_bytes += op.cost.bytes;
  const double compute = r.seconds;
  double hidden = 0, exposed = 0;
  // Down and up, each way at the link's rate; the parameters' way back waits for the update.
  const double moved = static_cast<double>(r.host_transfer_bytes) / link;
  if (r.mix.offload_optimizer) {
    double rate = options.host_update_bytes_per_second;
    if (rate <= 0) {
      static const double measured = measure_host_update_rate();
      rate = measured;
    }
    r.host_update_seconds = host_bytes / rate;
    // The parameters come back after the update (one of the four tensors an update reads): those
    // bytes are exposed; the rest moved during forward and backward, hidden behind compute.
    int64_t grad_bytes = 0;
    for (const OpRecord& op : r.records)
      if (op.device == DeviceType::cpu && op.op == OpId::adam_update)
        grad_bytes += static_cast<int64_t>(op.cost.bytes / 4);
    exposed += static_cast<double>(grad_bytes) / link;
    hidden += moved - static_cast<double>(grad_bytes) / link;
  } else {
    hidden += moved;
  }
  r.transfer_seconds = std::max(0.0, hidden - compute) + exposed;
  r.seconds = compute + r.transfer_seconds + r.host_update_seconds;
}

MixPrediction predict_with(const StepFactory& make_step, const Mix& mix, int64_t batch, size_t budget,
                           const PlanOptions& options, const std::optional<CostModel>& cost) {
  HR_CHECK(options.steps >= 1, ValueError, "plan: steps must be at least 1, got ", options.steps);
  MixPrediction r;
  r.mix = mix;
  r.batch = batch;
  const double start = wall_seconds();
  std::vector<std::pair<Device, CachingAllocator*>> allocs;  // the mix's devices
  std::vector<OpRecord> records;
  CachingAllocator* host = nullptr;  // the scope's host pool (Note [planning offload])
  MemoryStats host_before_last;
  try {
    MetaScope meta;
    host = &meta.host_pool();
    for (int k = 0; k < mix.device_count(); ++k) {
      const Device d = mix.device_count() == 1 ? options.device : Device{options.device.type, k};
      allocs.emplace_back(d, &meta.allocator(d));
      if (budget > 0) allocs.back().second->set_memory_limit(budget);
    }
    std::function<void()> step = make_step(mix, batch);
    for (int i = 0; i + 1 < options.steps; ++i) step();
    {
      host_before_last = host->stats();
      OpRecorder rec(false);
      step();
      records = rec.records();
    }
    r.status = "ok";
  } catch (const OutOfMemoryError&) {
    r.status = "oom";
  } catch (const std::exception& e) {
    r.status = str_cat("error: ", first_line(e.what()));
  }
  // The meta allocators outlive their scope. Several devices: each one's, and the fullest's as the mix's.
  for (const auto& [d, a] : allocs) {
    const MemoryStats st = a->stats();
    if (allocs.size() > 1) r.device_stats.emplace_back(d, st);
    if (r.stats.reserved_bytes.peak < st.reserved_bytes.peak ||
        (d == allocs.front().first && r.stats.reserved_bytes.peak == 0))
      r.stats = st;
  }
  if (host != nullptr) {
    r.host_stats = host->stats();
    // What the predicted step moved to the host: activations down (and as much back up), the
    // gradients down (and as many parameter bytes back up).
    auto taken = [&](MemoryCategory c) {
      return r.host_stats.category(c).allocated - host_before_last.category(c).allocated;
    };
    if (r.fits()) r.host_transfer_bytes = 2 * (taken(MemoryCategory::activation) + taken(MemoryCategory::gradient));
  }
  r.ops = static_cast<int64_t>(records.size());
  r.records = records;
  for (const OpRecord& op : records) {
    r.flops += op.cost.flops;
    r.bytes += op.cost.bytes;
  }
  if (cost && r.fits()) {
    r.seconds = step_seconds(*cost, mix, records, options.concurrent_devices);
    add_offload_seconds(r, options);
  }
  r.predict_wall_seconds = wall_seconds() - start;
  return r;
}

// The records of each step of a mix run for real, and each step's measured time.
void measure_steps(const StepFactory& make_step, const Mix& mix, const PlanOptions& options, int warmup, int steps,
                   std::vector<std::pair<std::vector<OpRecord>, double>>& runs) {
  std::function<void()> step = make_step(mix, options.batch);
  for (int i = 0; i < warmup; ++i) step();
  synchronize(options.device);
  for (int i = 0; i < steps; ++i) {
    Event begin(true), end(true);
    OpRecorder rec(options.device.is_cpu());
    begin.record(options.device);
    step();
    end.record(options.device);
    end.synchronize();
    runs.emplace_back(rec.records(), begin.elapsed_ms(end) / 1000.0);
  }
}
}  // namespace

double measure_host_update_rate(int64_t elements) {
  HR_CHECK(elements >= 1024, ValueError, "measure_host_update_rate: at least 1024 elements, got ", elements);
  const Device host = Device::cpu();
  Tensor p = Tensor::zeros({elements}, TensorOptions().device(host)), g = Tensor::ones({elements}),
         m = Tensor::zeros({elements}), v = Tensor::zeros({elements});
  const AdamStep step = AdamStep::make(1e-3, 0.9, 0.999, 1e-8, 0.0, true, 0.1, 0.001);
  Backend& be = backend_for(host);
  be.adam_update(p, g, m, v, step);  // warm: pages touched, threads up
  double best = 1e30;
  for (int i = 0; i < 3; ++i) {
    const double t0 = wall_seconds();
    be.adam_update(p, g, m, v, step);
    best = std::min(best, wall_seconds() - t0);
  }
  return 4.0 * 4.0 * static_cast<double>(elements) / std::max(best, 1e-9);
}

MixPrediction predict_mix(const StepFactory& make_step, const Mix& mix, size_t budget, const PlanOptions& options) {
  return predict_with(make_step, mix, options.batch, budget, options, default_cost(options));
}

CostModel calibrate(const StepFactory& make_step, const std::vector<Mix>& mixes, const PlanOptions& options, int warmup,
                    int steps) {
  HR_CHECK(steps >= 1, ValueError, "calibrate: steps must be at least 1, got ", steps);
  std::vector<std::pair<std::vector<OpRecord>, double>> runs;
  std::string last_oom;
  for (const Mix& mix : mixes) {
    try {
      measure_steps(make_step, mix, options, warmup, steps, runs);
    } catch (const OutOfMemoryError& e) {
      last_oom = str_cat(mix.str(), ": ", first_line(e.what()));
    }
    caching_allocator(options.device).empty_cache();
  }
  HR_CHECK(!runs.empty(), ValueError, "calibrate: no mix could run on ", options.device.str(),
           last_oom.empty() ? std::string(" (none given)") : str_cat(" (out of memory; last: ", last_oom, ")"));
  if (options.device.is_cpu()) return CostModel::fit_cpu(runs);
  const DeviceRates* rates = datasheet_rates(options.gpu);
  HR_CHECK(rates, ValueError, "calibrate: no datasheet for gpu '", options.gpu, "' (h100, h200)");
  return CostModel::fit_scaled(*rates, runs);
}

namespace {
// How much a checkpoint mode recomputes, least first: the calibration's preference.
int recompute_rank(nn::CheckpointMode c) {
  switch (c) {
    case nn::CheckpointMode::none: return 0;
    case nn::CheckpointMode::selective: return 1;
    case nn::CheckpointMode::sqrt: return 2;
    case nn::CheckpointMode::block: return 3;
  }
  return 4;
}
}  // namespace

Plan plan(const StepFactory& make_step, size_t budget, const PlanSpace& space, const PlanOptions& options) {
  Plan p;
  p.budget = budget;
  p.device = options.device;
  std::optional<CostModel> cost = default_cost(options);
  for (const Mix& mix : space.mixes())
    p.mixes.push_back(predict_with(make_step, mix, options.batch, budget, options, cost));
  if (!cost && options.calibrate) {
    // One mix per (precision, attention): the fitting one with the fewest ranks (one alone runs
    // without peers), then the least recompute, then the fewest micro-batches (Note [cost
    // model]) -- the fastest mixes are those, so the fits are made where the choice will be.
    std::map<std::pair<int, int>, const MixPrediction*> pick;
    auto order = [](const Mix& x) {
      return std::make_tuple(x.world_size, recompute_rank(x.checkpoint), x.zero_stage, x.micro_batches);
    };
    for (const MixPrediction& m : p.mixes) {
      // Only one device's steps: a step's wall time is then the sum of its ops and the framework's.
      if (!m.fits() || m.mix.device_count() > 1) continue;
      const MixPrediction*& best = pick[{static_cast<int>(m.mix.precision), static_cast<int>(m.mix.attention)}];
      if (!best || order(m.mix) < order(best->mix)) best = &m;
    }
    // And the same mix split as far as the space splits it, when that fits: the fits then see
    // every op at two sizes, as the split mixes will run them.
    for (const auto& [key, m] : pick) {
      p.calibrated_on.push_back(m->mix);
      const MixPrediction* split = nullptr;
      for (const MixPrediction& o : p.mixes)
        if (o.fits() && o.mix.precision == m->mix.precision && o.mix.attention == m->mix.attention &&
            o.mix.checkpoint == m->mix.checkpoint && o.mix.world_size == m->mix.world_size &&
            o.mix.zero_stage == m->mix.zero_stage && o.mix.device_count() == 1 &&
            o.mix.micro_batches > m->mix.micro_batches && (!split || o.mix.micro_batches > split->mix.micro_batches))
          split = &o;
      if (split) p.calibrated_on.push_back(split->mix);
    }
    if (!p.calibrated_on.empty()) {
      cost = calibrate(make_step, p.calibrated_on, options, options.calibrate_warmup, options.calibrate_steps);
      for (MixPrediction& m : p.mixes)
        if (m.fits()) m.seconds = step_seconds(*cost, m.mix, m.records, options.concurrent_devices);
    }
  }
  p.cost_model = cost ? cost->description() : "none (ordered by predicted flops)";
  std::stable_sort(p.mixes.begin(), p.mixes.end(), [&](const MixPrediction& a, const MixPrediction& b) {
    if (a.fits() != b.fits()) return a.fits();
    const double ta = cost ? a.seconds : a.flops, tb = cost ? b.seconds : b.flops;
    if (ta != tb) return ta < tb;
    // Without a cost model equal flops are not equal time: fewer micro-batches are fewer, larger calls.
    if (!cost && a.mix.micro_batches != b.mix.micro_batches) return a.mix.micro_batches < b.mix.micro_batches;
    return a.peak_reserved() < b.peak_reserved();
  });
  if (!p.mixes.empty() && p.mixes.front().fits()) p.chosen = 0;
  return p;
}

int64_t capacity(const StepFactory& make_step, const Mix& mix, size_t budget, const PlanOptions& options,
                 int64_t max_batch) {
  HR_CHECK(max_batch >= 1, ValueError, "capacity: max_batch must be at least 1, got ", max_batch);
  auto fits = [&](int64_t batch) {
    if (batch < mix.micro_batches) return false;  // every micro-batch holds one item at least
    return predict_with(make_step, mix, batch, budget, options, std::nullopt).fits();
  };
  int64_t lo = 0, hi = 1;  // lo fits (0: trivially), hi is the next to try
  while (hi <= max_batch && fits(hi)) {
    lo = hi;
    hi *= 2;
  }
  if (hi > max_batch) {
    if (lo == max_batch || !fits(max_batch)) hi = max_batch + 1;
    else return max_batch;
  }
  while (hi - lo > 1) {  // lo fits, hi does not
    const int64_t mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo;
}

std::string Plan::table(bool with_attention) const {
  std::ostringstream os;
  // Offload (Note [planning offload]): the host pool's peak and, on a GPU, what the transfers and
  // the host's update add to the step.
  const bool offload = std::any_of(mixes.begin(), mixes.end(), [](const MixPrediction& m) {
    return m.mix.offload_activations || m.mix.offload_optimizer;
  });
  os << "| | mix | fits " << (budget ? format_bytes(static_cast<int64_t>(budget)) : std::string("(no budget)"))
     << " | peak allocated | peak reserved | activations | predicted step |"
     << (offload ? " host pool peak | transfers + host update |" : "") << "\n|---|---|---|---:|---:|---:|---:|"
     << (offload ? "---:|---:|" : "") << "\n";
  for (size_t i = 0; i < mixes.size(); ++i) {
    const MixPrediction& m = mixes[i];
    os << "| " << (static_cast<int>(i) == chosen ? "**chosen**" : "") << " | " << m.mix.str(with_attention) << " | "
       << (m.fits()            ? "yes"
           : m.status == "oom" ? "no"
                               : m.status)
       << " | ";
    if (m.fits()) {
      os << format_bytes(m.peak_allocated()) << " | " << format_bytes(m.peak_reserved()) << " | "
         << format_bytes(m.stats.category(MemoryCategory::activation).peak) << " | "
         << (m.seconds > 0 ? format_seconds(m.seconds) : std::string("-")) << " |";
      if (offload)
        os << " " << format_bytes(m.host_stats.allocated_bytes.peak) << " | "
           << (m.transfer_seconds + m.host_update_seconds > 0
                   ? format_seconds(m.transfer_seconds + m.host_update_seconds)
                   : std::string("-"))
           << " |";
      os << "\n";
    } else {
      os << "- | - | - | - |" << (offload ? " - | - |" : "") << "\n";
    }
  }
  os << "\ncost model: " << cost_model << "\n";
  if (const MixPrediction* c = choice())
    os << "choice: " << c->mix.str(with_attention) << " (predicted peak reserved " << format_bytes(c->peak_reserved())
       << (c->seconds > 0 ? str_cat(", ", format_seconds(c->seconds), " per step") : std::string()) << ")\n";
  else
    os << "choice: none -- no mix fits " << format_bytes(static_cast<int64_t>(budget)) << " on " << device.str()
       << "\n";
  return os.str();
}

}  // namespace headroom::optim
