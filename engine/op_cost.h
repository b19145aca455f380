// What each op of a step costs: its arithmetic and its memory traffic, as the op table sees every
// call, and how long it took when asked -- the input of the planner's time prediction
// (optim/plan.h, docs/planning.md).
//
//   OpRecorder rec(/*time_ops=*/true);     // on this thread, until it goes out of scope
//   step();                                // real or under a MetaScope (then times are 0)
//   for (const OpRecord& r : rec.records()) ... r.op, r.dtype, r.flops, r.bytes, r.seconds
//
// Note [op costs]: Backend's entry points (Note [op table]) hand every call, after its checks, to
// the recorder open on the calling thread, with the cost of that op computed from its arguments'
// shapes alone (OpCostOf in engine/op_table.cpp): flops = 2 M N K per matmul (times the batch),
// 2 N Cout Ho Wo Cin/groups kh kw per convolution pass, 4 B H Tq Tk D per attention forward
// (half when causal; the backward 2.5 times that), and the element count for elementwise work;
// bytes = what the op must read and write at least -- every tensor argument once (a gather reads
// only the rows it gathers). Only the outermost call is recorded: a kernel that calls other ops
// (a contiguous copy before a gemm) is one record whose time includes theirs. With time_ops the
// host clock is read around each outermost call; that is the kernel's time on the CPU backend,
// whose kernels return when done, and only the time to queue it on cuda. Under a MetaScope the
// records carry the same costs and a time of 0, which is the point: the costs of a step that was
// never run.
#pragma once

#include <cstdint>
#include <exception>
#include <mutex>
#include <vector>

#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/op_table.h"

namespace headroom {

struct OpCost {
  double flops = 0;  // arithmetic operations
  double bytes = 0;  // bytes read and written, at least
  int variant = 0;   // which UnaryOp/BinaryOp/ReduceOp (or log softmax): kernels of one op that differ in speed
};

struct OpRecord {
  OpId op = OpId::copy;
  DeviceType device = DeviceType::cpu;
  int device_index = 0;      // of the op's first defined tensor argument (cpu:N, cuda:N)
  DType dtype = DType::f32;  // of the op's first defined tensor argument
  OpCost cost;
  double seconds = 0;  // host time of the call (time_ops), else 0
};

// Records every op this thread calls while it lives -- and the threads that join it (Join:
// Note [meta in worker threads] in engine/meta.h, for a pipeline's stages or tensor-parallel
// ranks). One per thread at a time (ValueError).
class OpRecorder {
 public:
  explicit OpRecorder(bool time_ops = false);
  ~OpRecorder();
  OpRecorder(const OpRecorder&) = delete;
  OpRecorder& operator=(const OpRecorder&) = delete;

  // Read once the threads that joined are done.
  const std::vector<OpRecord>& records() const { return records_; }
  void clear() { records_.clear(); }
  bool times_ops() const { return time_ops_; }

  // The recorder this thread records into (nullptr: none); a worker thread joins its caller's.
  static OpRecorder* current();
  class Join {
   public:
    explicit Join(OpRecorder* recorder);  // null: nothing to join
    ~Join();
    Join(const Join&) = delete;
    Join& operator=(const Join&) = delete;

   private:
    OpRecorder* prev_;
    bool joined_;
  };

  // Called by Backend's entry points (Note [op costs]); not for users.
  void enter(OpId op, Device device, DType dtype, const OpCost& cost);
  void leave(bool completed);

 private:
  bool time_ops_;
  std::mutex mutex_;  // records_, appended to by every thread that joined
  std::vector<OpRecord> records_;
};

namespace detail {
// The recorder open on this thread, or nullptr.
OpRecorder* active_op_recorder();

// Closes the recorder's record of one call when the call returns or throws.
class RecordedCall {
 public:
  RecordedCall(OpRecorder& rec, OpId op, Device device, DType dtype, const OpCost& cost)
      : rec_(rec), exceptions_(std::uncaught_exceptions()) {
    rec_.enter(op, device, dtype, cost);
  }
  ~RecordedCall() { rec_.leave(std::uncaught_exceptions() == exceptions_); }  // a call that threw is not recorded
  RecordedCall(const RecordedCall&) = delete;
  RecordedCall& operator=(const RecordedCall&) = delete;

 private:
  OpRecorder& rec_;
  int exceptions_;
};
}  // namespace detail

}  // namespace headroom
