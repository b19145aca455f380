#include "engine/op_cost.h"

#include <chrono>

#include "engine/error.h"

namespace headroom {

namespace {
thread_local OpRecorder* g_recorder = nullptr;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

OpRecorder::OpRecorder(bool time_ops) : time_ops_(time_ops) {
  HR_CHECK(g_recorder == nullptr, ValueError, "OpRecorder: one is already open on this thread (they do not nest)");
  g_recorder = this;
}

OpRecorder::~OpRecorder() { g_recorder = nullptr; }

void OpRecorder::enter(OpId op, DeviceType device, DType dtype, const OpCost& cost) {
  if (depth_++ > 0) return;  // inside another op's kernel: part of that op (Note [op costs])
  current_ = OpRecord{op, device, dtype, cost, 0};
  if (time_ops_) start_ns_ = now_ns();
}

void OpRecorder::leave(bool completed) {
  if (--depth_ > 0 || !completed) return;
  if (time_ops_) current_.seconds = static_cast<double>(now_ns() - start_ns_) * 1e-9;
  records_.push_back(current_);
}

namespace detail {
OpRecorder* active_op_recorder() { return g_recorder; }
}  // namespace detail

}  // namespace headroom
