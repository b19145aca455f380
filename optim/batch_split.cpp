// BatchSplitter: the accumulation loop, and the recovery of Note [automatic splitting] in
// batch_split.h. Everything an attempt allocates lives in attempt()'s frame (the micro-batch
// graphs, the collected outputs), so an exception unwinding out of it has released them by the
// time step() catches it; step() then only has to drop .grad, put the buffers and the RNG back,
// and empty the allocator's cache.
#include "optim/batch_split.h"

#include <algorithm>
#include <charconv>
#include <optional>
#include <ostream>
#include <vector>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "engine/caching_allocator.h"
#include "engine/error.h"
#include "engine/rng.h"
#include "nn/module.h"
#include "nn/parallel/ddp.h"

namespace headroom::optim {

namespace {

// What one recovered out-of-memory error left behind: memory before the attempt and after its
// release (Note [automatic splitting]).
BatchSplitter::Recovery make_recovery(int64_t step, int64_t failed_size, int64_t next_size, const OutOfMemoryError& e,
                                      const MemoryStats& before, const MemoryStats& after) {
  BatchSplitter::Recovery rec;
  rec.step = step;
  rec.failed_size = failed_size;
  rec.next_size = next_size;
  rec.requested_bytes = static_cast<int64_t>(e.requested_bytes());
  rec.allocated_before = before.allocated_bytes.current;
  rec.allocated_after = after.allocated_bytes.current;
  rec.reserved_before = before.reserved_bytes.current;
  rec.reserved_after = after.reserved_bytes.current;
  return rec;
}

}  // namespace

int64_t parse_micro_batches(const std::string& text, const std::string& what) {
  if (text == "auto") return BatchSplitter::kAuto;
  int64_t k = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), k);
  HR_CHECK(!text.empty() && ec == std::errc() && end == text.data() + text.size() && k >= 1, ValueError, what,
           ": expected a positive number of micro-batches or \"auto\", got '", text, "'");
  return k;
}

BatchSplitter::BatchSplitter(Optimizer& optimizer, int64_t micro_batches, nn::Module* model)
    : BatchSplitter(optimizer, micro_batches, model, Options{}) {}

BatchSplitter::BatchSplitter(Optimizer& optimizer, int64_t micro_batches, nn::Module* model, Options options)
    : optimizer_(optimizer),
      model_(model),
      options_(options),
      micro_batches_(micro_batches),
      automatic_(micro_batches == kAuto) {
  HR_CHECK(micro_batches >= 0, ValueError, "BatchSplitter: micro_batches must be >= 1 or kAuto (0), got ",
           micro_batches);
  HR_CHECK(options_.grow_after >= 0, ValueError, "BatchSplitter: grow_after must be >= 0, got ", options_.grow_after);
  grow_wait_ = options_.grow_after;
  // Note [agreed failure]: the optimizer commits on every rank or on none.
  if (nn::DistributedDataParallel* ddp = options_.ddp)
    optimizer_.set_step_agreement(
        [ddp](bool prepared) { return ddp->reduce_scalar(prepared ? 1.0 : 0.0, dist::ReduceOp::min) != 0.0; });
}

void BatchSplitter::step_optimizer() {
  if (options_.optimizer_step) {
    options_.optimizer_step(optimizer_);
  } else if (options_.scaler) {
    options_.scaler->step(optimizer_);
    options_.scaler->update();
  } else {
    optimizer_.step();
  }
}

void BatchSplitter::abandon_scaler() {
  if (options_.scaler) options_.scaler->abandon_step();
}

BatchSplitter::Learned BatchSplitter::learned() const {
  return {micro_batch_size_, steps_, clean_steps_, grow_wait_, ooms_recovered_, grow_attempts_, grow_failures_};
}

void BatchSplitter::restore(const Learned& l) {
  HR_CHECK(l.micro_batch_size >= 0 && l.steps >= 0 && l.clean_steps >= 0 && l.grow_wait >= 0 && l.ooms_recovered >= 0 &&
               l.grow_attempts >= 0 && l.grow_failures >= 0 && l.grow_failures <= l.grow_attempts,
           ValueError, "BatchSplitter::restore: negative or inconsistent counters (micro_batch_size ",
           l.micro_batch_size, ", steps ", l.steps, ", grow_attempts ", l.grow_attempts, ", grow_failures ",
           l.grow_failures, ")");
  micro_batch_size_ = l.micro_batch_size;
  steps_ = l.steps;
  clean_steps_ = l.clean_steps;
  grow_wait_ = l.grow_wait;
  ooms_recovered_ = l.ooms_recovered;
  grow_attempts_ = l.grow_attempts;
  grow_failures_ = l.grow_failures;
}

void BatchSplitter::drop_grads() {
  if (options_.ddp) options_.ddp->abandon_sync();
  optimizer_.zero_grad();
  if (model_) model_->zero_grad();
}

SplitStepResult BatchSplitter::attempt(const Tensor& inputs, const Tensor& targets, const StepFn& fn, int64_t m) {
  const int64_t n = inputs.size(0);
  SplitStepResult r;
  r.micro_batch_size = m;
  std::vector<Tensor> outputs;
  double loss_sum = 0;
  for (int64_t start = 0; start < n; start += m) {
    const int64_t end = std::min(n, start + m);
    const int64_t count = end - start;
    Tensor loss;
    // Note [no_sync]: the gradients of all but the last micro-batch stay on this rank.
    std::optional<nn::DistributedDataParallel::NoSync> local;
    if (options_.ddp && end < n) local.emplace(*options_.ddp);
    {
      MicroBatchOutput out =
          count == n ? fn(inputs, targets) : fn(inputs.slice(0, start, end), targets.slice(0, start, end));
      loss = std::move(out.loss);
      if (out.output.defined()) outputs.push_back(out.output.detach());
    }
    HR_CHECK(loss.defined() && loss.numel() == 1 && loss.requires_grad(), ValueError,
             "BatchSplitter::step: the step function must return the micro-batch's mean loss as a scalar with "
             "history, got ",
             loss.defined() ? shape_str(loss.shape()) : std::string("an undefined tensor"),
             loss.defined() && !loss.requires_grad() ? " without history" : "");
    loss_sum += loss.item<double>() * static_cast<double>(count);
    // The share n_i / N makes the accumulated gradient the whole batch's; skipped (not multiplied
    // by 1) for an unsplit batch so that it costs nothing and matches a plain step bit for bit.
    Tensor weighted = count == n ? loss : loss * (static_cast<double>(count) / static_cast<double>(n));
    if (options_.scale_loss) weighted = options_.scale_loss(weighted);
    else if (options_.scaler) weighted = options_.scaler->scale(weighted);
    weighted.backward();
    ++r.micro_batches;
  }
  r.loss = loss_sum / static_cast<double>(n);
  if (outputs.size() == static_cast<size_t>(r.micro_batches)) {
    NoGradGuard no_grad;
    r.output = outputs.size() == 1 ? outputs[0] : cat(outputs, 0);
  }
  return r;
}

SplitStepResult BatchSplitter::step(const Tensor& inputs, const Tensor& targets, const StepFn& fn) {
  HR_CHECK(inputs.defined() && targets.defined() && inputs.dim() >= 1 && targets.dim() >= 1, ShapeError,
           "BatchSplitter::step: inputs and targets must be tensors with a batch dim, got ",
           inputs.defined() ? shape_str(inputs.shape()) : std::string("undefined"), " and ",
           targets.defined() ? shape_str(targets.shape()) : std::string("undefined"));
  HR_CHECK(inputs.size(0) == targets.size(0) && inputs.size(0) > 0, ShapeError, "BatchSplitter::step: inputs ",
           shape_str(inputs.shape()), " and targets ", shape_str(targets.shape()),
           " must have the same non-empty batch dim 0");
  const int64_t n = inputs.size(0);

  CachingAllocator& allocator = caching_allocator(inputs.device());
  Generator& gen = default_generator();
  int64_t fitted = 0, m = 0;
  bool growing = false;
  if (!automatic_) {
    fitted = m = (n + micro_batches_ - 1) / micro_batches_;
  } else {
    fitted = m = micro_batch_size_ == 0 ? n : std::min(micro_batch_size_, n);
    if (options_.grow_after > 0 && micro_batch_size_ > 0 && micro_batch_size_ < n && clean_steps_ >= grow_wait_) {
      m = std::min(n, 2 * micro_batch_size_);
      growing = true;
      ++grow_attempts_;
    }
  }

  // Note [all-or-nothing split step]: the state a failed attempt must leave as it found it.
  drop_grads();
  const uint64_t seed = gen.seed(), offset = gen.offset();
  std::vector<Tensor> buffers, saved_buffers;
  if (model_) {
    NoGradGuard no_grad;
    buffers = model_->buffers();
    for (const Tensor& b : buffers) saved_buffers.push_back(b.clone());
  }
  // Puts it back: drops the partial gradients, rewinds the RNG, copies the buffers back (into
  // their own storage, so no allocation) and forgets the scaler's unscale of this step.
  auto restore_state = [&] {
    drop_grads();
    gen.manual_seed(seed);
    gen.set_offset(offset);
    if (model_) {
      NoGradGuard no_grad;
      for (size_t i = 0; i < buffers.size(); ++i) copy_tensor(buffers[i], saved_buffers[i]);
    }
    abandon_scaler();
  };

  int64_t recovered = 0;
  SplitStepResult r;
  nn::DistributedDataParallel* ddp = options_.ddp;
  for (;;) {
    const MemoryStats before = allocator.stats();
    try {
      // Note [agreed failure] (nn/parallel/ddp.h): 0 ok, 1 out of memory, 2 another error --
      // the ranks' maximum decides what every rank does with this attempt.
      int status = 0;
      std::optional<OutOfMemoryError> own;
      try {
        if (ddp) ddp->begin_attempt();
        // A micro-batch of one sample: the report must not suggest smaller batches or micro-batches
        // (Note [remedies already used]).
        std::optional<RemedyUsedScope> used;
        if (m == 1) used.emplace(std::initializer_list<Remedy>{Remedy::smaller_batch, Remedy::micro_batches});
        r = attempt(inputs, targets, fn, m);
      } catch (const OutOfMemoryError& e) {
        if (!ddp) throw;
        status = 1;
        own.emplace(e);
      } catch (...) {
        if (ddp) {
          ddp->fail_sync();
          (void)ddp->reduce_scalar(2, dist::ReduceOp::max);
        }
        throw;
      }
      if (ddp) {
        if (status != 0) {
          r = {};
          ddp->fail_sync();
        }
        const int all = static_cast<int>(ddp->reduce_scalar(status, dist::ReduceOp::max));
        if (all == 2) {
          r = {};
          throw Error(
              "BatchSplitter: another rank's attempt at this step failed with an error that is not an "
              "out-of-memory error (its own message says which); this rank's attempt was discarded");
        }
        if (all == 1 && own) throw *own;
        if (all == 1)
          throw OutOfMemoryError(str_cat("out of memory on another rank: it ran out in this attempt at micro-batches "
                                         "of ",
                                         m, " samples, so every rank discards it (Note [agreed failure])"),
                                 0, 0);
      }
      break;
    } catch (const OutOfMemoryError& e) {
      // attempt()'s frame is gone: the graphs and outputs it held are freed.
      restore_state();
      allocator.empty_cache();
      if (!automatic_) {
        // The allocator's report stays first (what the user sees on the first line); the step's
        // outcome goes last.
        throw OutOfMemoryError(
            str_cat(e.what(), "\n  BatchSplitter: the step ran as ", micro_batches_, " micro-batch",
                    micro_batches_ == 1 ? "" : "es", " of up to ", m, " samples (batch of ", n,
                    ") and changed nothing (parameters, optimizer state, buffers and RNG are as before it); more "
                    "micro-batches, or automatic splitting (kAuto, --micro-batches auto), may fit"),
            e.requested_bytes(), e.limit_bytes());
      }
      Recovery rec = make_recovery(steps_, m, growing ? fitted : (m + 1) / 2, e, before, allocator.stats());
      if (growing || m > 1) {
        recoveries_.push_back(rec);
        ++recovered;
        ++ooms_recovered_;
      }
      if (growing) {
        growing = false;
        ++grow_failures_;
        grow_wait_ = std::max<int64_t>(grow_wait_, 1) * 2;
        clean_steps_ = 0;
        if (options_.log)
          *options_.log << "batch splitting: micro-batch of " << m << " ran out of memory, back to " << fitted
                        << "; next try after " << grow_wait_ << " clean steps\n";
        m = fitted;
        continue;
      }
      if (m == 1) {
        throw OutOfMemoryError(
            str_cat(
                "BatchSplitter: out of memory even with a micro-batch of 1 sample (batch of ", n, " samples on ",
                inputs.device().str(), ", whose inputs and targets themselves hold ",
                format_bytes(static_cast<int64_t>(inputs.nbytes() + targets.nbytes())),
                "): batch splitting cannot make this step fit; the step changed nothing. Recompute "
                "activations in backward (checkpoint(); --checkpoint block|sqrt|selective in the examples), use mixed "
                "precision or a smaller model. The allocator's report for the last failure:\n",
                e.what()),
            e.requested_bytes(), e.limit_bytes());
      }
      const int64_t next = rec.next_size;
      if (options_.log)
        *options_.log << "batch splitting: micro-batch of " << m << " ran out of memory (asked for "
                      << format_bytes(static_cast<int64_t>(e.requested_bytes())) << "), retrying with " << next << " ("
                      << (n + next - 1) / next << " micro-batches of the batch of " << n << ")\n";
      m = next;
    } catch (...) {
      restore_state();
      throw;
    }
  }

  // The optimizer step is all-or-nothing: after an OutOfMemoryError the gradients are intact and
  // nothing has changed, so it can be retried once the cache is empty.
  for (int tries = 0;; ++tries) {
    const MemoryStats before = allocator.stats();
    try {
      step_optimizer();
      break;
    } catch (const OutOfMemoryError& e) {
      allocator.empty_cache();
      if (tries == 0) {
        Recovery rec = make_recovery(steps_, m, m, e, before, allocator.stats());
        rec.in_optimizer_step = true;
        recoveries_.push_back(rec);
        ++recovered;
        ++ooms_recovered_;
        if (options_.log)
          *options_.log << "batch splitting: the optimizer step ran out of memory (asked for "
                        << format_bytes(static_cast<int64_t>(e.requested_bytes()))
                        << "); emptied the cache and retrying it\n";
        continue;
      }
      restore_state();
      throw OutOfMemoryError(
          str_cat("BatchSplitter: the optimizer step ran out of memory twice, the second time after the cache was "
                  "emptied; splitting the batch cannot shrink the optimizer's state and temporaries. The step "
                  "changed nothing (parameters, optimizer state, buffers and RNG are as before it; the gradients "
                  "were dropped). The report of the last failure:\n",
                  e.what()),
          e.requested_bytes(), e.limit_bytes());
    } catch (...) {
      restore_state();
      throw;
    }
  }
  ++steps_;
  r.ooms_recovered = recovered;

  if (!automatic_) {
    micro_batch_size_ = m;
    return r;
  }
  if (m != fitted) {  // split, or grew
    if (growing && options_.log)
      *options_.log << "batch splitting: grew the micro-batch from " << fitted << " to " << m << "\n";
    micro_batch_size_ = m;
    clean_steps_ = 0;
    if (growing) grow_wait_ = options_.grow_after;
  } else {
    if (micro_batch_size_ == 0) micro_batch_size_ = n;
    if (recovered == 0) ++clean_steps_;
  }
  return r;
}

}  // namespace headroom::optim
