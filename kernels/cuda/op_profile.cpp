// The op profile's records (op_profile.h, Note [op profile]): a pool of timing events reused
// across profiles, and the (name, start, stop) pairs of the running one, under one mutex --
// profiling is for a step or two, not for timed runs, so the lock is not in anyone's way.
#include "kernels/cuda/op_profile.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <set>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_scope.h"

namespace headroom::cuda {

namespace {

struct Record {
  const char* name;
  int device;
  cudaEvent_t start, stop;
};

std::atomic<bool> g_running{false};
uint64_t g_generation = 0;  // which profile a record belongs to (under g_mutex)
std::mutex g_mutex;
std::vector<Record> g_records;
std::vector<std::pair<int, cudaEvent_t>> g_free_events;  // (device, event) for reuse

// An event on the current device (the scope made the op's device current).
cudaEvent_t take_event(int device) {
  for (size_t i = 0; i < g_free_events.size(); ++i)
    if (g_free_events[i].first == device) {
      cudaEvent_t e = g_free_events[i].second;
      g_free_events.erase(g_free_events.begin() + static_cast<std::ptrdiff_t>(i));
      return e;
    }
  cudaEvent_t e = nullptr;
  HR_CUDA_CHECK(cudaEventCreate(&e));
  return e;
}

thread_local int t_depth = 0;  // KernelScopes open on this thread: only the outermost records

}  // namespace

void start_op_profile() {
  std::lock_guard<std::mutex> lock(g_mutex);
  for (const Record& r : g_records) {
    g_free_events.emplace_back(r.device, r.start);
    if (r.stop != nullptr) g_free_events.emplace_back(r.device, r.stop);
  }
  g_records.clear();
  ++g_generation;
  g_running.store(true);
}

bool op_profile_running() { return g_running.load(); }

const char* profile_name(const char* kind, const char* op) {
  if (!g_running.load()) return kind;
  static std::mutex names_mutex;
  static std::set<std::string> names;  // nodes never move: c_str() stays valid
  std::lock_guard<std::mutex> lock(names_mutex);
  return names.insert(std::string(kind) + " " + op).first->c_str();
}

std::vector<OpTime> stop_op_profile() {
  g_running.store(false);
  std::lock_guard<std::mutex> lock(g_mutex);
  std::map<std::string, OpTime> by_name;
  for (const Record& r : g_records) {
    if (r.stop == nullptr) continue;  // a scope still open (on another thread)
    CudaDeviceGuard guard(r.device);
    HR_CUDA_CHECK(cudaEventSynchronize(r.stop));
    float ms = 0;
    HR_CUDA_CHECK(cudaEventElapsedTime(&ms, r.start, r.stop));
    OpTime& t = by_name[r.name];
    t.name = r.name;
    t.calls += 1;
    t.ms += ms;
  }
  std::vector<OpTime> out;
  for (auto& [name, t] : by_name) out.push_back(t);
  std::sort(out.begin(), out.end(), [](const OpTime& a, const OpTime& b) { return a.ms > b.ms; });
  return out;
}

// KernelScope's profiling half (cuda_scope.h).
// Never throws: the constructor that calls it must complete, or the depth count would not be
// undone. An event that cannot be had leaves this op out of the profile.
void KernelScope::profile_open(const char* name) noexcept {
  if (t_depth++ != 0 || !g_running.load()) return;
  std::lock_guard<std::mutex> lock(g_mutex);
  try {
    Record r{name, device_.index, take_event(device_.index), nullptr};
    if (cudaEventRecord(r.start, stream_) != cudaSuccess) {
      (void)cudaGetLastError();
      g_free_events.emplace_back(r.device, r.start);
      return;
    }
    g_records.push_back(r);
    profile_slot_ = static_cast<int64_t>(g_records.size()) - 1;
    profile_generation_ = g_generation;
  } catch (...) {
    profile_slot_ = -1;
  }
}

void KernelScope::profile_close() noexcept {
  --t_depth;
  if (profile_slot_ < 0) return;
  std::lock_guard<std::mutex> lock(g_mutex);
  if (profile_generation_ != g_generation) return;  // a new profile started meanwhile
  Record& r = g_records[static_cast<size_t>(profile_slot_)];
  try {
    cudaEvent_t stop = take_event(device_.index);
    if (cudaEventRecord(stop, stream_) == cudaSuccess) {
      r.stop = stop;
    } else {
      (void)cudaGetLastError();
      g_free_events.emplace_back(r.device, stop);
    }
  } catch (...) {
    // a destructor must not throw; the record is dropped
  }
}

}  // namespace headroom::cuda
