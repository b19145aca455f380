#include "engine/op_cost.h"

#include <chrono>

#include "engine/error.h"

namespace headroom {

namespace {
thread_local OpRecorder* g_recorder = nullptr;
// The outermost call this thread is in (Note [op costs]): per thread, so that threads joined to
// one recorder nest their own calls.
struct CallState {
  int depth = 0;
  OpRecord current;
  int64_t start_ns = 0;
};
thread_local CallState t_call;

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

OpRecorder* OpRecorder::current() { return g_recorder; }

OpRecorder::Join::Join(OpRecorder* recorder) : prev_(g_recorder), joined_(recorder != nullptr) {
  if (!joined_) return;
  HR_CHECK(!g_recorder || g_recorder == recorder, ValueError,
           "OpRecorder::Join: this thread records into another recorder");
  g_recorder = recorder;
}

OpRecorder::Join::~Join() {
  if (joined_) g_recorder = prev_;
}

void OpRecorder::enter(OpId op, Device device, DType dtype, const OpCost& cost) {
  if (t_call.depth++ > 0) return;  // inside another op's kernel: part of that op (Note [op costs])
  t_call.current = OpRecord{op, device.type, device.index, dtype, cost, 0};
  if (time_ops_) t_call.start_ns = now_ns();
}

void OpRecorder::leave(bool completed) {
  if (--t_call.depth > 0 || !completed) return;
  if (time_ops_) t_call.current.seconds = static_cast<double>(now_ns() - t_call.start_ns) * 1e-9;
  std::lock_guard<std::mutex> lock(mutex_);
  records_.push_back(t_call.current);
}

namespace detail {
OpRecorder* active_op_recorder() { return g_recorder; }
}  // namespace detail

}  // namespace headroom
