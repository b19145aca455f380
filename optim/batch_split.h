// BatchSplitter: one optimizer step over a batch run as several micro-batches (gradient
// accumulation), and automatic splitting when a step runs out of memory.
//
// Activation memory grows with the batch, parameter, gradient and optimizer memory do not, so
// running a batch of N as k micro-batches of about N/k divides the activation peak by about k
// and leaves the step's result unchanged: micro-batch i (n_i samples) computes its mean loss
// L_i, backward runs on L_i * n_i / N, and the gradients that accumulate in .grad are those of
// the whole batch's mean loss -- exactly, also for an uneven last micro-batch. The optimizer
// then steps once. (Not so for layers with batch statistics: see docs/batch-splitting.md.)
//
// Note [all-or-nothing split step]: a step either completes or changes nothing -- parameters,
// optimizer state, the loss scaler, the model's buffers and the global RNG are as before it, and
// the partial gradients are dropped -- whatever throws inside it, in both modes. An
// OutOfMemoryError in the optimizer step (all-or-nothing itself, Note [all-or-nothing step] in
// optimizer.h) is retried once after the allocator's cache is emptied, with the gradients kept;
// if it fails again the step is given up: splitting the batch cannot shrink the optimizer's
// memory.
//
// Note [automatic splitting]: with micro_batches = kAuto the first step tries the whole batch.
// When an attempt throws OutOfMemoryError, the splitter releases everything it held -- the
// partial graph and tensors are dropped as the exception unwinds, the partial gradients are
// dropped (zero_grad), the model's buffers (BatchNorm running statistics) and the global RNG
// are put back to their state before the attempt, and the allocator's cache is emptied so that
// reserved memory returns to its steady level -- then halves the micro-batch size and tries
// again from that clean state. The optimizer is not touched before an attempt has succeeded.
// The size that fitted is kept for later steps. Optionally (grow_after > 0) it tries twice the
// size after that many clean steps; if that runs out of memory it goes back and waits twice as
// long before the next try. A micro-batch of one sample that does not fit ends the step with an
// OutOfMemoryError saying so, carrying the allocator's report.
//
//   optim::Adam opt(model->parameters(), 1e-3);
//   optim::BatchSplitter splitter(opt, optim::BatchSplitter::kAuto, model.get());
//   auto r = splitter.step(images, labels, [&](const Tensor& x, const Tensor& y) {
//     Tensor logits = (*model)(x);
//     return optim::MicroBatchOutput{cross_entropy(logits, y), logits};  // or just the loss
//   });
//   // r.loss: the whole batch's mean loss; r.output: the logits of all N samples (detached)
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "optim/grad_scaler.h"
#include "optim/optimizer.h"

namespace headroom::nn {
class Module;
class DistributedDataParallel;
}  // namespace headroom::nn

namespace headroom::optim {

// What the step function returns for one micro-batch: its mean loss (a scalar with history)
// and, optionally, an output to hand back for the whole batch (e.g. logits for accuracy).
struct MicroBatchOutput {
  MicroBatchOutput(Tensor loss_in, Tensor output_in = {}) : loss(std::move(loss_in)), output(std::move(output_in)) {}
  Tensor loss;
  Tensor output;
};

struct SplitStepResult {
  double loss = 0;               // the whole batch's mean loss (micro-batch losses weighted by n_i / N)
  Tensor output;                 // outputs of all micro-batches concatenated on dim 0, detached; or undefined
  int64_t micro_batch_size = 0;  // of the attempt that succeeded (the last micro-batch may be smaller)
  int64_t micro_batches = 0;
  int64_t ooms_recovered = 0;  // out-of-memory errors recovered from during this step
};

// Parses a --micro-batches value: a positive count, or "auto" (BatchSplitter::kAuto). Throws
// ValueError naming `what` and the text.
int64_t parse_micro_batches(const std::string& text, const std::string& what = "micro-batches");

class BatchSplitter {
 public:
  static constexpr int64_t kAuto = 0;

  struct Options {
    // Automatic mode: after this many clean steps at a size, try twice the size (0: never).
    int64_t grow_after = 0;
    // Where the line announcing each split or growth goes (nullptr: nowhere).
    std::ostream* log = nullptr;
    // Hooks for loss scaling (a GradScaler): the tensor backward runs on, given a micro-batch's
    // loss already weighted by n_i / N (default: itself), and what steps the optimizer once the
    // gradients are complete (default: optimizer.step()). One scale serves the whole step.
    std::function<Tensor(const Tensor& weighted_loss)> scale_loss;
    std::function<void(Optimizer&)> optimizer_step;
    // A loss scaler in one line: when set, the loss is scaled by it, the optimizer steps through
    // scaler->step then scaler->update (unless the hooks above are set), and a step given up
    // calls scaler->abandon_step(). The scaler must outlive the splitter.
    GradScaler* scaler = nullptr;
    // Data parallelism (nn/parallel/ddp.h): every micro-batch but the last runs under
    // ddp->no_sync(), so a split step all-reduces each bucket once (Note [no_sync]); every
    // attempt, and the optimizer's step, ends in an agreement of the ranks, so that an
    // out-of-memory error on one rank is retried (or refused) by all of them (Note [agreed
    // failure]; the splitter sets the optimizer's step agreement). Must outlive the splitter.
    nn::DistributedDataParallel* ddp = nullptr;
  };

  using StepFn = std::function<MicroBatchOutput(const Tensor& inputs, const Tensor& targets)>;

  // micro_batches: k >= 1 splits every batch into micro-batches of ceil(N / k) samples (the last
  // smaller; a batch with fewer than k samples runs one sample each); kAuto starts with the
  // whole batch and splits on out-of-memory errors. model, if given, has its .grad dropped with
  // the optimizer's parameters and its buffers restored after a failed attempt. Throws
  // ValueError for a negative count or grow_after.
  BatchSplitter(Optimizer& optimizer, int64_t micro_batches, nn::Module* model = nullptr);
  BatchSplitter(Optimizer& optimizer, int64_t micro_batches, nn::Module* model, Options options);

  // zero_grad, forward and backward of each micro-batch (inputs and targets split on dim 0,
  // which must have the same size N > 0), optimizer.step(). fn must return the micro-batch's
  // *mean* loss. In automatic mode an OutOfMemoryError from fn or backward is recovered from
  // (Note [automatic splitting]); one from optimizer.step() is retried once (Note
  // [all-or-nothing split step]). Whatever it throws, the step has changed nothing. Throws
  // ShapeError for mismatched or empty batches and ValueError for a loss that is not a scalar
  // with history.
  SplitStepResult step(const Tensor& inputs, const Tensor& targets, const StepFn& fn);

  bool automatic() const { return automatic_; }
  int64_t micro_batches() const { return micro_batches_; }  // kAuto in automatic mode
  // Automatic mode: the micro-batch size that will be tried first on the next step (0 before
  // the first step: the whole batch). Fixed mode: the size of the last step's micro-batches.
  int64_t micro_batch_size() const { return micro_batch_size_; }

  // What a training checkpoint keeps of the splitter (optim/checkpoint.h): the learned size and
  // the counters that decide growth. restore() checks the values (ValueError, nothing changed).
  struct Learned {
    int64_t micro_batch_size = 0, steps = 0, clean_steps = 0, grow_wait = 0;
    int64_t ooms_recovered = 0, grow_attempts = 0, grow_failures = 0;
  };
  Learned learned() const;
  void restore(const Learned& learned);
  int64_t ooms_recovered() const { return ooms_recovered_; }  // over all steps
  int64_t grow_attempts() const { return grow_attempts_; }
  int64_t grow_failures() const { return grow_failures_; }
  int64_t steps() const { return steps_; }
  // Every recovery so far, oldest first (a few per split or growth attempt).
  struct Recovery {
    int64_t step = 0;             // 0-based index of the step
    int64_t failed_size = 0;      // the micro-batch size that ran out of memory
    int64_t next_size = 0;        // the size tried next
    int64_t requested_bytes = 0;  // the request that failed
    // Memory in use (allocated bytes of the batch's device) just before the failed attempt and
    // just after its release: Note [automatic splitting] promises they are equal.
    int64_t allocated_before = 0;
    int64_t allocated_after = 0;
    // Reserved bytes likewise: after the release the cache holds only the segments of what is
    // still in use, so reserved_after <= reserved_before.
    int64_t reserved_before = 0;
    int64_t reserved_after = 0;
    // The optimizer step ran out of memory (and was retried at the same size), rather than a
    // micro-batch's forward or backward.
    bool in_optimizer_step = false;
  };
  const std::vector<Recovery>& recoveries() const { return recoveries_; }

 private:
  // One attempt at micro-batch size m; throws what fn/backward throw.
  SplitStepResult attempt(const Tensor& inputs, const Tensor& targets, const StepFn& fn, int64_t m);
  void drop_grads();
  void step_optimizer();
  void abandon_scaler();

  Optimizer& optimizer_;
  nn::Module* model_;
  Options options_;
  int64_t micro_batches_;
  bool automatic_;
  int64_t micro_batch_size_ = 0;
  int64_t ooms_recovered_ = 0;
  int64_t steps_ = 0;
  int64_t clean_steps_ = 0;  // steps at the current size without an OOM
  int64_t grow_wait_ = 0;    // clean steps needed before the next growth attempt
  int64_t grow_attempts_ = 0;
  int64_t grow_failures_ = 0;
  std::vector<Recovery> recoveries_;
};

}  // namespace headroom::optim
