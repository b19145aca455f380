// DistributedDataParallel: one process per device, each on its share of the batch, gradients
// averaged over the processes as backward produces them.
//
//   dist::ProcessGroup& pg = dist::init();                 // mpirun -np N ./train
//   auto model = std::make_shared<MyNet>();                // the same seed on every rank, or not:
//   nn::DistributedDataParallel ddp(model, pg);            // rank 0's parameters are broadcast
//   optim::AdamW opt(ddp.parameters(), 3e-4);
//   Tensor loss = cross_entropy(ddp(x_local), y_local);   // this rank's share of the batch
//   loss.backward();                                       // all-reduces overlap backward
//   opt.step();                                            // every rank steps identically
//
// Note [gradient buckets]: the parameters, in the reverse of their registration order (roughly
// the order backward finishes their gradients), are packed into flat buckets of one dtype and
// device: the first up to first_bucket_cap_bytes (1 MiB, so communication starts early), the
// others up to bucket_cap_bytes (25 MiB), a parameter larger than that alone in its own (the
// bucketing of PyTorch's DDP paper, Li et al., VLDB 2020). Each bucket's buffer is the
// parameters' gradient memory: every parameter's .grad is a view into it (Note [gradient slots]
// in autograd/hooks.h), so there is no copy into a communication buffer and no second gradient
// allocation; the buffers are allocated once, tagged gradient, and live as long as the wrapper.
//
// Note [overlapped all-reduce]: a post-accumulate hook on every parameter marks its gradient
// final; when the last gradient of a bucket is final, the bucket's all-reduce (average) starts
// at once, asynchronously (on the MPI group's communication thread, or NCCL's stream), while
// backward goes on computing the gradients of earlier layers. Buckets are started in index
// order on every rank -- a bucket that is complete waits for the ones before it -- because
// collectives are matched by order (Note [collective order] in dist/process_group.h). When
// backward has run every node, a callback (Note [backward callbacks]) starts the buckets that
// are still incomplete (parameters this backward did not reach: their gradient is zero here,
// and becomes .grad) and waits for all of them; backward returns with the gradients averaged
// over the ranks. The time it waited there is the communication that backward did not hide.
//
// Note [no_sync]: inside a no_sync() scope backward communicates nothing and the gradients
// accumulate in the buckets; the first backward outside it all-reduces the sum. Gradient
// accumulation over k micro-batches thus communicates once per step, not k times
// (BatchSplitter does this when given the wrapper: optim/batch_split.h).
//
// Note [abandoned sync]: if backward throws after some buckets started (an out-of-memory error
// mid-backward), the peers still wait for the rest. abandon_sync() starts every bucket not
// started yet -- their contents are garbage, the step must be discarded -- and waits, so that
// every rank's sequence of collectives stays aligned; the next backward does it by itself if
// nobody did. Gradients after an abandoned sync are not the average of anything: drop them.
//
// Note [agreed failure]: an out-of-memory error on one rank must not leave the others waiting
// in a collective, or stepping while it retries. BatchSplitter (given the wrapper) ends every
// attempt with an agreement -- a max over the ranks of each rank's status: ok, out of memory,
// other error -- after the failing rank completed its share of the attempt's collectives
// (fail_sync). Then every rank does the same: all keep the attempt, all retry it with smaller
// micro-batches (automatic splitting), or all fail with an OutOfMemoryError that says another
// rank ran out. The optimizer step agrees the same way between its two phases (Optimizer::
// set_step_agreement): all commit, or none. Parameters stay identical on every rank.
//
// Note [ZeRO stages]: with DDPOptions::zero_stage 1 or 2 the wrapper also shards what the
// optimizer keeps (Rajbhandari et al., "ZeRO", SC 2020). Each bucket is padded to a multiple of
// the world size N and cut into N equal chunks; rank r owns chunk r of every bucket (the last
// chunks hold the padding, so uneven sizes cost at most N-1 elements a bucket). The parameters
// become views into one flat buffer per bucket (Module::rebind_parameters), so that the
// all-gather writes straight into them. A bucket's gradient is reduce-scattered instead of
// all-reduced: rank r receives the average of its chunk only, into a shard gradient of its own.
// An optimizer made over shard_parameters() -- optim::ZeroRedundancyOptimizer wraps any
// headroom optimizer so -- keeps state for 1/N of the parameters, updates its chunk, and
// gather_parameters() all-gathers the chunks back into every rank's parameters.
//   - stage 1: the full gradient buckets stay allocated (they are the memory backward writes
//     into, reused every step); only the optimizer state is divided by N.
//   - stage 2: a bucket's full gradient buffer is allocated when its first gradient arrives
//     and freed as soon as its reduce-scatter has finished, during backward; what stays is the
//     shard: gradients divided by N too. When that is depends on the peers, so a prediction
//     among several ranks (Note [meta groups]) keeps them to backward's end: an upper bound. Under no_sync the buffers live until the step's last
//     micro-batch has reduced them.
// Per parameter, training in f32 with AdamW (headroom's parameters are its master weights, so
// the 2 + 2 + K bytes of the paper's mixed precision, K = 12, are 4 + 4 + 8 here: parameter,
// gradient, two moments), a rank holds 4 + 4 + 8/N bytes at stage 1 and 4 + (4 + 8)/N at stage
// 2, plus the stage-2 buckets in flight. After a synchronised backward the parameters' own .grad
// are undefined: the gradients that count are the shards' (clip them with
// ZeroRedundancyOptimizer::clip_grad_norm_, which takes the norm over every rank).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "autograd/hooks.h"
#include "dist/process_group.h"
#include "nn/module.h"

namespace headroom::nn {

struct DDPOptions {
  size_t bucket_cap_bytes = size_t{25} << 20;  // Note [gradient buckets]
  size_t first_bucket_cap_bytes = size_t{1} << 20;
  // Rank 0's buffers (BatchNorm statistics) are broadcast to every rank before each forward(),
  // as PyTorch does; off: only at construction.
  bool broadcast_buffers = true;
  // Note [ZeRO stages]: 0 (plain DDP), 1 (optimizer state sharded) or 2 (gradients too).
  int zero_stage = 0;
};

// What the last synchronised backward cost (Note [overlapped all-reduce]).
struct DDPSyncStats {
  int64_t buckets = 0;               // all-reduced in it
  int64_t bytes = 0;                 // gradient bytes all-reduced
  int64_t started_in_backward = 0;   // buckets started by the hooks, before backward's end
  double communication_seconds = 0;  // the all-reduces' own time (Work::seconds), summed
  double exposed_seconds = 0;        // what backward's end waited for them
  // The most bytes of full gradient buckets held at once (stage 2 allocates and frees them
  // during backward; otherwise they are always all there).
  int64_t bucket_bytes_peak = 0;
  // The share of the communication time that overlapped backward's compute.
  double hidden_fraction() const {
    return communication_seconds > 0 ? std::max(0.0, 1.0 - exposed_seconds / communication_seconds) : 0.0;
  }
};

class DistributedDataParallel final : public Module {
 public:
  struct Bucket {
    Tensor flat;                   // the gradients of its parameters, back to back (stage 2: only while in use)
    std::vector<size_t> params;    // indices into parameters(), in the bucket's order
    std::vector<int64_t> offsets;  // element offset of each in flat
    int64_t numel = 0;             // the parameters' elements
    int64_t padded = 0;            // flat's elements: numel, rounded up to a multiple of N under ZeRO
    int64_t pending = 0;           // gradients of this backward not final yet
    dist::WorkPtr work;            // the all-reduce (reduce-scatter) of this backward, once started
    // Note [ZeRO stages]: the parameters' flat buffer, this rank's chunk of it (what the
    // optimizer updates) and the chunk's averaged gradient.
    Tensor params_flat, shard_param, shard_grad;
  };

  // Broadcasts rank 0's parameters and buffers to every rank (a collective: every rank
  // constructs its wrapper at the same point) and lays out the buckets. The module must be on
  // its device already, and its parameters contiguous.
  DistributedDataParallel(std::shared_ptr<Module> module, dist::ProcessGroup& group, DDPOptions options = {});
  ~DistributedDataParallel() override;

  // Broadcasts the buffers (DDPOptions::broadcast_buffers) and runs the module.
  Tensor forward(const Tensor& x) override;
  Module& module() { return *module_; }
  const std::shared_ptr<Module>& module_ptr() const { return module_; }
  dist::ProcessGroup& group() { return group_; }
  // Rank 0's buffers to every rank (forward() does it; a caller running another method of the
  // module, e.g. GPT::loss, calls it first).
  void sync_buffers();

  // Note [no_sync]: RAII; restores the previous setting when it ends.
  class NoSync {
   public:
    explicit NoSync(DistributedDataParallel& ddp) : ddp_(&ddp), previous_(ddp.require_sync_) {
      ddp.require_sync_ = false;
    }
    ~NoSync() {
      if (ddp_) ddp_->require_sync_ = previous_;
    }
    NoSync(NoSync&& o) noexcept : ddp_(o.ddp_), previous_(o.previous_) { o.ddp_ = nullptr; }
    NoSync(const NoSync&) = delete;
    NoSync& operator=(const NoSync&) = delete;
    NoSync& operator=(NoSync&&) = delete;

   private:
    DistributedDataParallel* ddp_;
    bool previous_;
  };
  [[nodiscard]] NoSync no_sync() { return NoSync(*this); }
  bool require_sync() const { return require_sync_; }

  // Note [abandoned sync]. Never throws from a dead peer's timeout: it records it instead
  // (the group is broken then, and the next collective says so).
  void abandon_sync() noexcept;
  bool sync_in_progress() const { return in_cycle_; }

  // Note [agreed failure]: for a step that may fail on one rank and not on another (BatchSplitter
  // uses these). begin_attempt() marks the start of an attempt that ends in one synchronised
  // backward; after a failure, fail_sync() starts whatever collectives of that synchronisation
  // this rank has not (all of them when it failed before its last backward began) -- with
  // garbage, the attempt is discarded -- so the peers' collectives complete and every rank's
  // sequence stays aligned. reduce_scalar() is a one-number all-reduce through a buffer made at
  // construction (tagged communication), so agreeing allocates nothing, even right after an
  // out-of-memory error.
  void begin_attempt() { attempt_syncs_ = syncs_; }
  void fail_sync() noexcept;
  double reduce_scalar(double value, dist::ReduceOp op);

  const std::vector<Bucket>& buckets() const { return buckets_; }
  int zero_stage() const { return options_.zero_stage; }
  // Note [ZeRO stages]: this rank's chunk of each bucket's parameters (leaves whose .grad is the
  // chunk's averaged gradient after a synchronised backward), for the optimizer.
  std::vector<Tensor> shard_parameters() const;
  // Every rank's updated chunks into every rank's parameters (a collective).
  void gather_parameters();
  const DDPSyncStats& last_sync() const { return last_; }
  int64_t syncs() const { return syncs_; }                     // synchronised backwards so far
  int64_t bucket_all_reduces() const { return all_reduces_; }  // bucket all-reduces started so far
  std::string name() const override;

 private:
  void layout_buckets();
  void on_gradient_final(size_t param);
  void start_cycle(uint64_t backward);
  void launch_ready();
  void launch(size_t bucket);
  void finish_cycle();
  Tensor bucket_view(size_t param);  // the parameter's gradient in its bucket (allocated at stage 2)
  void ensure_bucket(size_t bucket);
  void release_reduced();  // stage 2: free the buckets whose reduce-scatter is done
  int64_t held_bucket_bytes() const;
  bool sharded() const { return options_.zero_stage > 0; }

  std::shared_ptr<Module> module_;
  dist::ProcessGroup& group_;
  DDPOptions options_;
  std::vector<Tensor> params_;                    // parameters(), in registration order
  std::vector<std::pair<size_t, size_t>> where_;  // param -> (bucket, index in bucket)
  std::vector<Bucket> buckets_;
  std::vector<HookHandle> hooks_;
  std::vector<char> final_;  // this backward: gradient final
  bool require_sync_ = true;
  bool in_cycle_ = false;
  uint64_t cycle_backward_ = 0;  // current_backward_id() of the cycle's backward
  size_t next_launch_ = 0;
  DDPSyncStats last_;
  int64_t syncs_ = 0, all_reduces_ = 0;
  int64_t attempt_syncs_ = 0;
  Tensor scalar_;  // reduce_scalar's buffer
};

}  // namespace headroom::nn
