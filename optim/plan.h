// The planner: which mix of memory techniques is fastest for the memory there is, decided before
// the first step (docs/planning.md).
//
//   optim::StepFactory make = [&](const optim::Mix& mix, int64_t batch) {
//     auto w = std::make_shared<MyTraining>(mix, batch, device);   // model, optimizer, batch
//     return [w] { w->step(); };                                   // one training step
//   };
//   optim::PlanOptions opt;
//   opt.device = Device::cpu();
//   opt.batch = 64;
//   opt.cost = optim::calibrate(make, {optim::Mix{}}, opt);         // a short measured run
//   optim::Plan p = optim::plan(make, parse_memory_size("256MiB", "budget"), optim::PlanSpace::for_batch(64), opt);
//   if (const optim::MixPrediction* c = p.choice()) ... c->mix
//
// Note [planning]: every mix of the space (precision x attention x checkpoint x micro-batches)
// is built by the caller's factory and run for `steps` steps inside a MetaScope (Note [meta
// execution]) whose allocator stands in for the target device with the budget as its limit: a
// mix fits when those steps end without an out-of-memory error, and its predicted peaks are the
// meta allocator's, from the first step on (the first step also allocates the optimizer state).
// The last of those steps runs under an OpRecorder (Note [op costs]); its records, priced by a
// CostModel, are the mix's predicted step time. The mixes are sorted by that time, and the choice
// is the fastest that fits. What shapes decide is exact; the time is a model, as good as its
// calibration.
//
// Several devices of one process join as Mix::pipeline_stages and Mix::tensor_parallel: the
// factory builds the step on devices 0..N-1, each device's meta allocator has the budget as its
// limit, and the prediction keeps every device's stats (the one with the highest reserved peak
// as the mix's). Their time is priced per device (OpRecord::device_index): tensor parallelism
// takes the slowest rank's ops; a pipeline of K stages over M micro-batches takes the pipeline's
// time, the fill and drain through every stage once plus M-1 micro-batches of the slowest,
// sum_k(t_k/M) + (M-1) max_k(t_k/M), which is (M+K-1)/M of a stage's time when they are equal.
// Communication between devices is not priced.
//
// Data parallelism joins as two more dimensions (Mix::world_size, Mix::zero_stage): the
// factory builds one rank's step of a world of that size -- DistributedDataParallel over a
// MetaGroup (Note [meta groups]) with the rank's share of the batch -- so the memory predicted
// is one rank's, as exact as the rest. Its time is that rank's compute: the communication is not
// priced yet (docs/distributed.md measures how much of it backward hides).
//
// Note [planning offload]: offload is two more dimensions (Mix::offload_activations,
// Mix::offload_optimizer), one device and one rank. Meta execution predicts both sides exactly:
// the device's allocator and the scope's stand-in for the pinned host pool (MetaScope::host_pool),
// whose stats the prediction keeps (the budget is the device's; the host pool has none). On a
// GPU the copies are transfers over the host link, not ops, so their time is added from the
// bytes the host pool took in the predicted step and DeviceRates::host_link_bytes_per_second:
//   - activations go down as they are saved and come back ahead of use on a side stream, so they
//     cost only what compute cannot hide: max(0, 2 x bytes / link - the step's compute);
//   - Adam's state: the gradients go down during backward (hidden like the activations), the
//     update runs on the host (the ops recorded on host tensors, priced at the host's measured
//     update rate) and the parameters come back before the next forward: update + parameter
//     bytes / link are added in full.
// On the cpu devices the copies are ordinary copy ops of the step and the host's update its own
// adam_update ops: the cost model prices them like any op.
//
// Note [cost model]: a step's time is the sum over its ops of each op's time plus the framework's
// time between ops. Calibrated (fit_cpu, from the records of real steps timed op by op), each
// class of op -- (op, dtype, variant) -- gets a curve of time against work (the flops of a
// matmul, convolution or attention, the bytes of anything else): the mean time of its calls at
// each amount of work seen, interpolated in log-log between them (a small gemm does fewer flops
// per second than a big one, so no single rate fits both), in proportion above the largest, and
// the smallest's time below it. The time the steps took beyond their ops is spread over the ops
// as a per-op overhead. The calibration runs each precision and attention unsplit and split as
// far as the space splits it, so the split mixes' ops fall between sizes it saw. A class it never
// saw is priced by the same op in another dtype, or at the rate of its kind (compute or memory). Uncalibrated on a GPU, each op takes the roofline
// of a datasheet, max(flops / peak rate of its dtype, bytes / memory bandwidth): a lower bound;
// calibrated by real steps on that GPU (fit_scaled), the roofline is scaled by measured over
// predicted.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "autograd/functions/attention.h"
#include "engine/caching_allocator.h"
#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/op_cost.h"
#include "nn/checkpoint.h"

namespace headroom::optim {

// One choice of the techniques the planner weighs.
struct Mix {
  DType precision = DType::f32;                    // f32, or the autocast dtype (f16 with loss scaling, bf16)
  AttentionImpl attention = AttentionImpl::fused;  // for models with attention
  nn::CheckpointMode checkpoint = nn::CheckpointMode::none;
  int64_t micro_batches = 1;  // gradient accumulation over this many micro-batches (of a rank's share)
  // Data parallelism (docs/distributed.md): the batch spread over world_size ranks, each
  // running batch / world_size of it under DistributedDataParallel (world_size 1: no wrapper),
  // with ZeRO stage 0, 1 or 2. What is predicted is one rank's memory (Note [meta groups]).
  int world_size = 1;
  int zero_stage = 0;
  // Several devices of one process (docs/model-parallel.md), devices 0..N-1 of the planned
  // device's kind: the model cut into pipeline_stages stages (micro_batches is then the
  // pipeline's M; one_f_one_b or GPipe), or its blocks split over tensor_parallel devices.
  // What is predicted is every device's memory; a mix fits when each device fits the budget.
  int pipeline_stages = 1;
  bool one_f_one_b = true;
  int tensor_parallel = 1;
  // Offload to the pinned host pool (docs/offload.md), one device and one rank: saved
  // activations (ActivationOffload) and Adam's state (OffloadedAdam). Note [planning offload].
  bool offload_activations = false;
  bool offload_optimizer = false;

  int device_count() const { return pipeline_stages > tensor_parallel ? pipeline_stages : tensor_parallel; }
  // "bf16 fused ckpt-block mb2", then " x4" (4 ranks) and " zero1", " pp4-1f1b" or " tp2", and
  // " offload-act", " offload-opt"; without the attention for a space that has none.
  std::string str(bool with_attention = true) const;
  bool operator==(const Mix& o) const {
    return precision == o.precision && attention == o.attention && checkpoint == o.checkpoint &&
           micro_batches == o.micro_batches && world_size == o.world_size && zero_stage == o.zero_stage &&
           pipeline_stages == o.pipeline_stages && one_f_one_b == o.one_f_one_b &&
           tensor_parallel == o.tensor_parallel && offload_activations == o.offload_activations &&
           offload_optimizer == o.offload_optimizer;
  }
};

// The choices to enumerate. An empty list means "the default of Mix" for that technique.
struct PlanSpace {
  std::vector<DType> precisions{DType::f32, DType::f16, DType::bf16};
  std::vector<AttentionImpl> attentions{AttentionImpl::naive, AttentionImpl::fused};
  std::vector<nn::CheckpointMode> checkpoints{nn::CheckpointMode::none, nn::CheckpointMode::block,
                                              nn::CheckpointMode::sqrt, nn::CheckpointMode::selective};
  std::vector<int64_t> micro_batches{1};
  std::vector<int> world_sizes{1};
  std::vector<int> zero_stages{0};  // stages above 0 only with more than one rank
  // Pipeline stages and tensor-parallel degrees (1: none); with stages, the schedules (true:
  // 1F1B, false: GPipe). Combined with one rank only, and not with each other; a pipeline's
  // micro-batch counts are its M.
  std::vector<int> pipeline_stages{1};
  std::vector<bool> schedules{true};
  std::vector<int> tensor_parallel{1};
  // Offload (one device, one rank only): {false} plans without it, {false, true} with and without.
  std::vector<bool> offload_activations{false};
  std::vector<bool> offload_optimizer{false};
  bool has_attention = true;  // false: the attention list is ignored (and left out of names)
  // The global batch (for_batch sets it): a world size that does not divide it, and micro-batch
  // counts larger than a rank's share, are left out. 0: nothing left out.
  int64_t batch = 0;

  // The default space for a batch of `batch`: micro-batch counts 1, 2, 4, ... up to `batch`,
  // those that divide it (BatchSplitter splits unevenly too, but even splits compare cleanly).
  static PlanSpace for_batch(int64_t batch);
  std::vector<Mix> mixes() const;
};

// Builds one mix's training for a batch of `batch` items and returns a function that runs one
// step (zero_grad, forward, loss, backward, optimizer step). Called inside a MetaScope to
// predict, outside to calibrate and verify; what it makes must come from the allocator of the
// device being planned for.
using StepFactory = std::function<std::function<void()>(const Mix& mix, int64_t batch)>;

// Peak rates of one device, for the roofline.
struct DeviceRates {
  std::string name;                       // "H100 SXM (datasheet)"
  double matmul_flops_16 = 0;             // f16/bf16 dense tensor-core FLOP/s
  double matmul_flops_32 = 0;             // f32 FLOP/s of matmuls (no TF32: the CUDA cores)
  double vector_flops = 0;                // f32 FLOP/s of everything else
  double bytes_per_second = 0;            // memory bandwidth
  double host_link_bytes_per_second = 0;  // to and from the host, each way (PCIe)
};
// The datasheet rates of "h100" or "h200" (SXM parts); nullptr for another name.
const DeviceRates* datasheet_rates(const std::string& kind);

class CostModel {
 public:
  // Roofline over `rates` (Note [cost model]).
  static CostModel roofline(const DeviceRates& rates);
  // Per-class fit to timed records of real steps on the CPU: `runs` holds each step's records
  // (OpRecorder with time_ops) and the step's measured wall time.
  static CostModel fit_cpu(const std::vector<std::pair<std::vector<OpRecord>, double>>& runs);
  // The roofline scaled to measured steps on a GPU (their records need no times).
  static CostModel fit_scaled(const DeviceRates& rates,
                              const std::vector<std::pair<std::vector<OpRecord>, double>>& runs);

  double predict_seconds(const std::vector<OpRecord>& ops) const;
  bool calibrated() const { return calibrated_; }
  // One line: how it was made ("fitted to 3 timed steps: 14 op classes, 2.1 us overhead per op").
  const std::string& description() const { return description_; }

 private:
  // Seconds against work for one class of op, from the calls timed.
  struct Curve {
    std::vector<std::pair<double, double>> points;  // (work, mean seconds), by work
    double at(double work) const;
  };
  using Key = std::tuple<int, int, int>;  // op, dtype, variant
  double op_seconds(const OpRecord& r) const;
  double roofline_seconds(const OpRecord& r) const;

  bool calibrated_ = false;
  bool fitted_ = false;  // per-class curves (the CPU); else the roofline times scale_
  DeviceRates rates_;
  double scale_ = 1;
  std::map<Key, Curve> fits_;
  std::map<int, Curve> by_op_;                 // per op over its dtypes and variants: for a class never seen
  double compute_rate_ = 0, memory_rate_ = 0;  // seconds per flop / byte over everything: an op never seen
  double framework_per_op_ = 0;
  std::string description_;
};

// Whether the op's work is its flops (matmul, convolution, attention) rather than its bytes.
bool is_compute_op(OpId op);

struct PlanOptions {
  Device device = Device::cpu();  // the device planned for: its allocator's rules, its rates
  int64_t batch = 1;              // items per step, split by a mix's micro-batches
  int steps = 2;                  // steps predicted: the first allocates the optimizer state
  std::optional<CostModel> cost;  // none: the roofline of datasheet_rates(gpu) on cuda; on the cpu, no time
  std::string gpu = "h100";       // the datasheet for cuda when `cost` is not given
  // How many devices compute at once (Mix::device_count): 0, all of a mix's (GPUs); on the cpu
  // devices, which share the host's cores, cores / threads per op (device_properties). A mix on
  // more devices than that takes at least its devices' summed time over this many.
  int concurrent_devices = 0;
  // plan() without `cost`: first calibrate on the device at hand, with one mix per precision and
  // attention -- the fitting one with the least recompute, then the fewest micro-batches -- run
  // for real (`calibrate_warmup` + `calibrate_steps` steps each).
  bool calibrate = false;
  int calibrate_warmup = 1, calibrate_steps = 3;
  // Note [planning offload]: the host's rate for the offloaded optimizer's update, in bytes of
  // parameters, gradients and state read and written per second; 0: measured on this host
  // (measure_host_update_rate) the first time a mix with an offloaded optimizer is priced.
  double host_update_bytes_per_second = 0;
};

// Times the host's Adam update (Note [vectorised adam]) over `elements` f32 parameters: bytes
// of parameters, gradients and both moments read and written per second.
double measure_host_update_rate(int64_t elements = int64_t{1} << 22);

struct MixPrediction {
  Mix mix;
  int64_t batch = 0;
  std::string status;  // "ok", "oom" (does not fit the budget) or "error: ..."
  MemoryStats stats;   // the meta allocator's, from the first step on (several devices: the fullest's)
  std::vector<std::pair<Device, MemoryStats>> device_stats;  // several devices: each one's
  double seconds = 0;                                        // predicted step time (0 without a cost model)
  int64_t ops = 0;                                           // backend ops in one step
  double flops = 0, bytes = 0;
  double predict_wall_seconds = 0;  // how long predicting took
  std::vector<OpRecord> records;    // the ops of the predicted step, with their costs
  // Offload (Note [planning offload]): the pinned host pool's stats in the prediction, the bytes
  // a step moves to and from the host, and the seconds those moves and the host's update add to
  // the step (on a GPU; on the cpu devices the copies are ops the cost model prices).
  MemoryStats host_stats;
  int64_t host_transfer_bytes = 0;
  double transfer_seconds = 0, host_update_seconds = 0;
  bool fits() const { return status == "ok"; }
  int64_t peak_allocated() const { return stats.allocated_bytes.peak; }
  int64_t peak_reserved() const { return stats.reserved_bytes.peak; }
};

// One mix's prediction (Note [planning]); budget 0: no limit.
MixPrediction predict_mix(const StepFactory& make_step, const Mix& mix, size_t budget, const PlanOptions& options);

struct Plan {
  size_t budget = 0;
  Device device;
  std::string cost_model;            // CostModel::description()
  std::vector<Mix> calibrated_on;    // the mixes run for real to calibrate (PlanOptions::calibrate)
  std::vector<MixPrediction> mixes;  // by predicted time (ties: by predicted peak reserved)
  int chosen = -1;                   // index into mixes of the fastest that fits; -1: none fits
  const MixPrediction* choice() const { return chosen >= 0 ? &mixes[static_cast<size_t>(chosen)] : nullptr; }
  // Markdown: a row per mix (fits, predicted peak allocated/reserved, activations, time), the
  // choice marked; then one line naming it, or saying that nothing fits.
  std::string table(bool with_attention = true) const;
};

Plan plan(const StepFactory& make_step, size_t budget, const PlanSpace& space, const PlanOptions& options);

// The largest batch (up to max_batch) that `mix` runs in `budget` as it is (its micro-batches
// included), by meta execution: doubling, then bisecting. 0 when not even one item fits.
int64_t capacity(const StepFactory& make_step, const Mix& mix, size_t budget, const PlanOptions& options,
                 int64_t max_batch);

// A short measured run for the cost model: each mix runs `warmup` untimed and `steps` timed
// steps on options.device, op by op on the CPU. Mixes that run out of memory are skipped;
// ValueError when none ran.
CostModel calibrate(const StepFactory& make_step, const std::vector<Mix>& mixes, const PlanOptions& options,
                    int warmup = 1, int steps = 3);

}  // namespace headroom::optim
