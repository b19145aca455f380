// Process groups: the ranks of a distributed run and the collectives between them.
//
//   dist::ProcessGroup& pg = dist::init();        // under mpirun: MPI; alone: world size 1
//   Tensor g = ...;                               // a contiguous cpu tensor, the same shape on every rank
//   auto work = pg.all_reduce(g, dist::ReduceOp::average);
//   ...                                           // compute goes on while it travels
//   work->wait();                                 // g now holds the average over the ranks
//
// Layering (DESIGN.md): dist/ sits above kernels/ and below autograd/, so autograd functions and
// nn's DistributedDataParallel can wrap collectives; communication is not a Backend op. The
// transports are the ones people already run past one machine: MPI for cpu tensors (OpenMPI,
// launched with mpirun) and, for cuda tensors, NCCL bootstrapped over MPI. Each lives in its own
// shared library that dist::init() loads when a run needs it (Note [loadable transports]), so a
// program that never communicates maps no MPI, and a single process is world size 1 without
// any MPI at all.
//
// Note [collective order]: every rank calls the collectives of a group in the same order, with
// the same shapes and dtypes (the transports match them by order, not by name). Each call
// returns at once with a Work handle; the group runs its operations one after another, in the
// order they were called, on its communication thread (MPI) or stream (NCCL), so compute and
// communication overlap. A tensor handed to a collective must not be read or written until its
// Work is done; the Work keeps the tensor alive until then.
//
// Note [communication timeout]: an MPI or NCCL collective whose peer died or never called waits
// for ever. Every operation here has a deadline (ProcessGroup::set_timeout, default 300 s,
// HEADROOM_DIST_TIMEOUT=seconds): when it passes, the waiting rank asks every peer, over a
// control channel of its own, where it is, and the operation fails with a CommunicationError
// that names the operation, its number, this rank, and each peer that is missing from it: one
// that did not answer (it has exited, or hangs outside headroom's communication), or one that
// answered from elsewhere (it is still computing, or waits in another operation). The group is
// broken after that: every later operation fails at once, saying why.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/tensor.h"

namespace headroom::dist {

// A collective or point-to-point transfer failed: a timeout (Note [communication timeout]), a
// transport error, or a group broken by an earlier failure.
class CommunicationError : public Error {
 public:
  explicit CommunicationError(const std::string& what) : Error(what) {}
};

enum class ReduceOp { sum, average, max, min };
const char* reduce_op_name(ReduceOp op);

enum class OpKind { all_reduce, reduce_scatter, all_gather, broadcast, barrier, send, recv };
const char* op_kind_name(OpKind kind);

// The handle of one operation. Thread-safe.
class Work {
 public:
  Work(OpKind kind, int64_t number, std::string description);
  Work(const Work&) = delete;
  Work& operator=(const Work&) = delete;

  // Finished, successfully or not; never blocks.
  bool is_done() const;
  // Blocks until finished; throws its CommunicationError if it failed.
  void wait();
  bool failed() const;

  OpKind kind() const { return kind_; }
  int64_t number() const { return number_; }                       // its place in the group's order (1, 2, ...)
  const std::string& description() const { return description_; }  // "all_reduce #3 (f32, 1024 elements)"
  // Seconds from when the transport started it to when it finished (0 before): the time
  // spent communicating, which an overlapped operation hides behind compute.
  double seconds() const;

  // For transports: the operation finished (error empty) or failed (error set). Once only.
  void finish(const std::string& error = "", double seconds = 0);
  // The tensors the operation reads or writes, kept alive until it finishes.
  std::vector<Tensor> keep_alive;

 private:
  const OpKind kind_;
  const int64_t number_;
  const std::string description_;
  mutable std::mutex mutex_;
  std::condition_variable done_cv_;
  bool done_ = false;
  std::string error_;
  double seconds_ = 0;
};
using WorkPtr = std::shared_ptr<Work>;

// Counters of one group, for benchmarks and tests.
struct CommunicationStats {
  int64_t operations = 0;  // operations started, every kind
  int64_t all_reduces = 0, reduce_scatters = 0, all_gathers = 0, broadcasts = 0;
  int64_t bytes = 0;   // payload bytes handed to the transport (this rank's side)
  double seconds = 0;  // time the transport spent on them (Work::seconds, summed)
};

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // "mpi", "local" (one process), "nccl" or "meta" (Note [meta groups]).
  virtual std::string backend_name() const = 0;
  // The device type whose tensors this group moves (cpu for MPI, cuda for NCCL).
  virtual DeviceType device_type() const { return DeviceType::cpu; }

  // Each returns at once (Note [collective order]). Tensors are contiguous, on this group's
  // device type, of a dtype the transport has; the checks run here, once, before anything moves.
  // all_reduce: t on every rank becomes op over the ranks' t.
  WorkPtr all_reduce(const Tensor& t, ReduceOp op = ReduceOp::sum);
  // reduce_scatter: input holds size() equal chunks; chunk r, reduced over the ranks, lands in
  // rank r's output (output.numel() * size() == input.numel()).
  WorkPtr reduce_scatter(const Tensor& output, const Tensor& input, ReduceOp op = ReduceOp::sum);
  // all_gather: rank r's input lands in chunk r of every rank's output
  // (output.numel() == size() * input.numel()). In place when input is output's own chunk
  // (output.slice(0, rank * n, (rank + 1) * n) of a flat output): nothing is copied for it.
  WorkPtr all_gather(const Tensor& output, const Tensor& input);
  // broadcast: t on every rank becomes root's t.
  WorkPtr broadcast(const Tensor& t, int root = 0);
  WorkPtr barrier();
  // Point to point: matched by peer and tag, in order (tag >= 0).
  WorkPtr send(const Tensor& t, int dst, int tag = 0);
  WorkPtr recv(const Tensor& t, int src, int tag = 0);

  // Note [communication timeout]. Applies to operations started afterwards.
  void set_timeout(std::chrono::milliseconds timeout);
  std::chrono::milliseconds timeout() const { return timeout_; }
  // Why the group is broken ("" while it works).
  std::string broken_reason() const;

  CommunicationStats stats() const;
  void reset_stats();

  // Waits for every operation started so far (a local fence, not a barrier).
  void synchronize();

  // One operation as a transport receives it (already numbered and checked).
  struct Op {
    OpKind kind;
    Tensor a, b;  // all_reduce/broadcast/send/recv: a; reduce_scatter/all_gather: a = output, b = input
    ReduceOp reduce = ReduceOp::sum;
    int peer = -1;  // root, dst or src
    int tag = 0;
    bool in_place = false;  // all_gather: b is a's chunk rank()
  };

 protected:
  ProcessGroup(int rank, int size);
  // The transport's part: start the operation described by `work` (already numbered, checked,
  // and holding its tensors in keep_alive) and finish it later, on any thread.
  virtual void start(const Op& op, const WorkPtr& work) = 0;
  // A transport marks the group broken after a failure it cannot recover from.
  void set_broken(const std::string& why);
  // An in-process group mended once every rank's thread has ended (Note [in-process groups]):
  // working again, its next collective numbered `next_number` on every rank. The number of the
  // next operation this rank would start.
  void mend(int64_t next_number);
  int64_t next_number() const;

 private:
  WorkPtr launch(const Op& op, int64_t payload_bytes);
  void check_peer(int peer, const char* what) const;

  const int rank_, size_;
  std::chrono::milliseconds timeout_;
  mutable std::mutex mutex_;
  int64_t next_number_ = 1;
  std::string broken_;
  CommunicationStats stats_;
  std::vector<std::weak_ptr<Work>> in_flight_;
};

// Note [meta groups]: a group of `size` ranks in which this process is `rank` and no peer
// exists: every operation finishes at once and moves no data. It is for prediction (Note [meta
// execution]): one rank's step runs as it would among `size` ranks -- the same shards, buckets
// and communication buffers -- with no peers to run it with. MetaGroup(0, 1) is also what a
// local group is.
class MetaGroup final : public ProcessGroup {
 public:
  // `type`: the device type whose tensors it takes (a prediction for cuda: DeviceType::cuda).
  MetaGroup(int rank, int size, DeviceType type = DeviceType::cpu);
  std::string backend_name() const override { return "meta"; }
  DeviceType device_type() const override { return type_; }

 protected:
  void start(const Op& op, const WorkPtr& work) override;

 private:
  DeviceType type_;
};

// Note [agreed failure] for any group: a function for Optimizer::set_step_agreement that tells
// every rank whether every rank prepared its step (a min over the ranks), with its one-element
// buffer made here, on `device`, tagged communication -- so agreeing allocates nothing, even
// right after an out-of-memory error. Every rank of the group must step its optimizer together.
std::function<bool(bool prepared)> step_agreement(ProcessGroup& group, Device device);

// ---- the world (Note [loadable transports]) ----

// Note [loadable transports]: dist::init() looks at its environment. Under a launcher
// (mpirun/mpiexec: OMPI_COMM_WORLD_SIZE, PMI_SIZE or PMIX_RANK set) it loads libheadroom_mpi.so
// from beside libheadroom.so (or HEADROOM_MPI_LIBRARY), which initialises MPI and makes the
// world group; a launcher without that library is a CommunicationError, never a silent world of
// one (which would train N copies apart). Otherwise the world is one process, with no MPI.
// HEADROOM_DIST=local forces the latter. The world lasts until dist::finalize() (or the end of
// the process), which waits for every operation and finalises MPI -- unless the group broke,
// when finalising would wait for the dead peer: the process then exits without it, and
// mpirun reports that.
ProcessGroup& init();
bool is_initialized();
ProcessGroup& world();  // init() when not initialised yet
void finalize();

// The process group for `type`'s tensors over the world's ranks: the world itself for cpu; for
// cuda, the NCCL group (loaded from libheadroom_nccl.so and bootstrapped over the world group),
// made on first use.
ProcessGroup& group_for(DeviceType type);

namespace detail {
// What a transport library registers when it is loaded.
using WorldFactory = std::function<std::unique_ptr<ProcessGroup>()>;
void register_mpi_world(WorldFactory factory);
using DeviceGroupFactory = std::function<std::unique_ptr<ProcessGroup>(ProcessGroup& bootstrap)>;
void register_device_group(DeviceType type, DeviceGroupFactory factory);
// Seconds from HEADROOM_DIST_TIMEOUT, else 300.
std::chrono::milliseconds default_timeout();
}  // namespace detail

}  // namespace headroom::dist
