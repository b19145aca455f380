// Pipeline parallelism in one process: a model cut into K stages, each on its own device
// (cpu:N or cuda:N), a batch cut into M micro-batches, and a schedule that keeps the stages
// busy at the same time.
//
//   std::vector<nn::PipelineStage> stages;
//   for (int k = 0; k < 4; ++k) {
//     parts[k]->to(Device::cpu(k));                          // model placement: stage k on cpu:k
//     stages.push_back({parts[k], Device::cpu(k)});
//   }
//   nn::Pipeline pipe(stages, {.schedule = nn::PipelineSchedule::one_f_one_b});
//   optim::AdamW opt(pipe.parameters(), 3e-4);
//   opt.zero_grad();
//   double loss = pipe.run(x, y, /*micro_batches=*/8, [](const Tensor& out, const Tensor& t) {
//     return cross_entropy(out, t);                          // a micro-batch's mean loss
//   });
//   opt.step();                                              // the gradients are the whole batch's
//
// Note [pipeline schedules]: each stage runs on a thread of its own (its device made current
// there), so stages on different devices compute at the same time; between neighbours,
// activations flow forward and their gradients backward through in-process channels, each a
// copy to the receiving device (counted by its allocator) and, for autograd, a cut: stage k
// runs on a detached input that requires grad, and its backward sends that input's gradient to
// stage k-1. The order in which a stage runs its forwards (F) and backwards (B):
//   - GPipe (Huang et al. 2019): all M forwards, then all M backwards. Stage k holds the
//     activations of all M micro-batches at once.
//   - 1F1B (PipeDream-flush, Narayanan et al. 2021): K-k-1 forwards to fill the pipe, then one
//     forward and one backward in turn, then the remaining backwards. Stage k holds at most K-k
//     micro-batches' activations, whatever M is.
// Both run the same micro-batches through the same ops, so the gradients are the same: each
// micro-batch's loss (its mean) is weighted by n_i / N before backward, as BatchSplitter does,
// and the gradients accumulate in .grad to the whole batch's. The idle time of a stage -- the
// bubble -- is (K-1)/(M+K-1) of the step for either schedule when the stages cost the same.
//
// Note [pipeline across processes]: given a process group, each process runs one stage -- rank
// r stage r -- and the channels become the group's send/recv (MPI for cpu stages, NCCL for
// cuda): an activation goes as a header (dtype and shape) and the tensor, a gradient as the
// tensor alone (the sender's output shape). Sends do not wait; the step waits for them at its
// end. The schedule is the same, and so are the gradients. A stage that fails here cannot close
// its neighbours' channels: they wait until the group's timeout (HEADROOM_DIST_TIMEOUT) ends
// their step with an error naming this rank.
//
// Note [pipeline failure]: an exception in one stage (out of memory on its device) closes every
// channel, so the other stages stop waiting and end; run() rethrows the first exception. The
// gradients of that step are partial: drop them (zero_grad).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dist/process_group.h"
#include "engine/device.h"
#include "engine/dtype.h"
#include "nn/module.h"

namespace headroom::nn {

enum class PipelineSchedule { gpipe, one_f_one_b };
const char* pipeline_schedule_name(PipelineSchedule s);  // "gpipe", "1f1b"
PipelineSchedule parse_pipeline_schedule(const std::string& text, const std::string& what = "schedule");

struct PipelineStage {
  std::shared_ptr<Module> module;  // already on `device`
  Device device;
  bool checkpoint = false;  // recompute the stage's activations in its backward (autograd/checkpoint.h)
};

struct PipelineOptions {
  PipelineSchedule schedule = PipelineSchedule::one_f_one_b;
  std::optional<DType> autocast;  // f16/bf16 autocast in every stage's forward
  // Applied to each weighted micro-batch loss before its backward (a GradScaler's scale()).
  std::function<Tensor(const Tensor&)> scale_loss;
  bool concurrent = true;  // false: one stage after another on the caller's thread (for debugging)
};

// What the last run() did, per stage.
struct PipelineStats {
  double seconds = 0;                   // the step's wall time
  std::vector<double> busy_seconds;     // each (local) stage's time in its forwards and backwards
  std::vector<int64_t> most_in_flight;  // micro-batches whose activations a stage held at once
  // Idle share of the step over all stages: 1 - sum(busy) / (K * seconds).
  double bubble_fraction() const;
};

class Pipeline {
 public:
  using LossFn = std::function<Tensor(const Tensor& output, const Tensor& targets)>;

  // Throws ValueError for no stages or a stage without a module; DeviceError when a stage's
  // parameters are not on its device.
  Pipeline(std::vector<PipelineStage> stages, PipelineOptions options = {});
  // Across processes (Note [pipeline across processes]): this process runs stage group.rank() of
  // group.size(), on stage.device (of the group's device type: cpu over MPI, cuda over NCCL).
  Pipeline(PipelineStage stage, dist::ProcessGroup& group, PipelineOptions options = {});

  // Forward and backward of every micro-batch (inputs and targets split on dim 0 into
  // `micro_batches` parts of ceil(N / M) rows, the last smaller), under the schedule. The
  // gradients accumulate into the stages' parameters; returns the batch's mean loss. Inputs
  // and targets may be on any device: micro-batch i's inputs are copied to stage 0's device,
  // its targets to the last stage's. Across processes every rank calls run() with tensors of
  // the same batch size (stage 0 reads the inputs, the last stage the targets) and every rank
  // gets the loss.
  double run(const Tensor& inputs, const Tensor& targets, int64_t micro_batches, const LossFn& loss_fn);

  std::vector<Tensor> parameters() const;  // this process's stages'
  size_t num_stages() const { return group_ ? static_cast<size_t>(group_->size()) : stages_.size(); }
  const PipelineStage& stage(size_t k) const { return stages_[k]; }  // k-th of this process's
  const PipelineStats& last_stats() const { return stats_; }
  const PipelineOptions& options() const { return options_; }

  // The order stage k of K runs micro-batches 0..M-1 in: +i+1 a forward, -(i+1) a backward.
  static std::vector<int64_t> stage_order(PipelineSchedule schedule, int64_t k, int64_t stages, int64_t micro_batches);

 private:
  std::vector<PipelineStage> stages_;
  PipelineOptions options_;
  PipelineStats stats_;
  dist::ProcessGroup* group_ = nullptr;  // across processes
};

}  // namespace headroom::nn
