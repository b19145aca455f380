// In-process groups (Note [in-process groups] in dist/local_group.h).
#include "dist/local_group.h"

#include "autograd/grad_mode.h"
#include "engine/meta.h"
#include "engine/op_cost.h"

#include <condition_variable>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "engine/dtype.h"

namespace headroom::dist {
namespace {

// acc[i] op= src[i] over n elements of T, computed in acc_t<T>; average divides at the end.
template <typename T>
void reduce_into(std::vector<acc_t<T>>& acc, const void* src, int64_t n, ReduceOp op, bool first) {
  const T* s = static_cast<const T*>(src);
  for (int64_t i = 0; i < n; ++i) {
    const acc_t<T> v = static_cast<acc_t<T>>(s[i]);
    auto& a = acc[static_cast<size_t>(i)];
    if (first) a = v;
    else if (op == ReduceOp::max) a = v > a ? v : a;
    else if (op == ReduceOp::min) a = v < a ? v : a;
    else a = a + v;
  }
}

template <typename T>
void write_from(const std::vector<acc_t<T>>& acc, void* dst, int64_t offset, int64_t n, double divide_by) {
  T* d = static_cast<T*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    acc_t<T> v = acc[static_cast<size_t>(offset + i)];
    if (divide_by != 1) v = static_cast<acc_t<T>>(static_cast<double>(v) / divide_by);
    d[i] = static_cast<T>(v);
  }
}

// Reduces the ranks' `inputs` (n elements each, in rank order) and writes elements
// [offset_r, offset_r + count) of the result to each output r.
template <typename T>
void reduce_typed(const std::vector<const void*>& inputs, int64_t n, ReduceOp op,
                  const std::vector<std::pair<void*, int64_t>>& outputs, int64_t count) {
  std::vector<acc_t<T>> acc(static_cast<size_t>(n));
  for (size_t r = 0; r < inputs.size(); ++r) reduce_into<T>(acc, inputs[r], n, op, r == 0);
  const double by = op == ReduceOp::average ? static_cast<double>(inputs.size()) : 1.0;
  for (const auto& [ptr, offset] : outputs) write_from<T>(acc, ptr, offset, count, by);
}

void reduce(DType d, const std::vector<const void*>& inputs, int64_t n, ReduceOp op,
            const std::vector<std::pair<void*, int64_t>>& outputs, int64_t count) {
  switch (d) {
    case DType::f32: return reduce_typed<float>(inputs, n, op, outputs, count);
    case DType::f64: return reduce_typed<double>(inputs, n, op, outputs, count);
    case DType::f16: return reduce_typed<Half>(inputs, n, op, outputs, count);
    case DType::bf16: return reduce_typed<BFloat16>(inputs, n, op, outputs, count);
    case DType::i32: return reduce_typed<int32_t>(inputs, n, op, outputs, count);
    case DType::i64: return reduce_typed<int64_t>(inputs, n, op, outputs, count);
    case DType::u8: return reduce_typed<uint8_t>(inputs, n, op, outputs, count);
    case DType::boolean: break;
  }
  throw DTypeError(str_cat("in-process group: no reduction for ", dtype_name(d)));
}

// What the ranks of one in-process group share.
struct Hub {
  explicit Hub(std::vector<Device> d) : devices(std::move(d)) {}
  std::vector<Device> devices;
  std::mutex mutex;
  struct Pending {
    std::vector<ProcessGroup::Op*> ops;  // per rank, owned below
    std::vector<std::unique_ptr<ProcessGroup::Op>> owned;
    std::vector<WorkPtr> works;
    int arrived = 0;
  };
  std::map<int64_t, Pending> pending;
  std::string broken;

  void break_with(const std::string& why) {
    std::map<int64_t, Pending> failing;
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (broken.empty()) broken = why;
      failing.swap(pending);
    }
    for (auto& [number, p] : failing)
      for (auto& w : p.works)
        if (w) w->finish(str_cat(w->description(), ": the in-process group broke: ", why));
  }
};

}  // namespace

class LocalGroup final : public ProcessGroup {
 public:
  LocalGroup(int rank, std::shared_ptr<Hub> hub)
      : ProcessGroup(rank, static_cast<int>(hub->devices.size())), hub_(std::move(hub)) {}
  std::string backend_name() const override { return "local"; }
  Device device() const { return hub_->devices[static_cast<size_t>(rank())]; }
  void break_group(const std::string& why) {
    set_broken(why);
    hub_->break_with(why);
  }
  int64_t next_collective() const { return next_number(); }
  // Once every rank's thread has ended (run_on_groups): working again, numbered from `next`.
  void mend_after_failure(int64_t next) {
    {
      std::lock_guard<std::mutex> lock(hub_->mutex);
      hub_->broken.clear();
      hub_->pending.clear();
    }
    mend(next);
  }

 protected:
  void start(const Op& op, const WorkPtr& work) override {
    const Device mine = hub_->devices[static_cast<size_t>(rank())];
    for (const Tensor* t : {&op.a, &op.b})
      if (t->defined())
        HR_CHECK(t->device() == mine, DeviceError, work->description(), ": rank ", rank(),
                 " of this in-process group is ", mine.str(), " but its tensor is on ", t->device().str());
    HR_CHECK(op.kind != OpKind::send && op.kind != OpKind::recv, CommunicationError, work->description(),
             ": an in-process group has no send/recv (the pipeline passes tensors through its own channels)");
    Hub::Pending ready;
    {
      std::lock_guard<std::mutex> lock(hub_->mutex);
      if (!hub_->broken.empty()) {
        work->finish(str_cat(work->description(), ": the in-process group broke: ", hub_->broken));
        return;
      }
      Hub::Pending& p = hub_->pending[work->number()];
      if (p.works.empty()) {
        p.works.resize(static_cast<size_t>(size()));
        p.ops.resize(static_cast<size_t>(size()), nullptr);
        p.owned.resize(static_cast<size_t>(size()));
      }
      p.owned[static_cast<size_t>(rank())] = std::make_unique<Op>(op);
      p.ops[static_cast<size_t>(rank())] = p.owned[static_cast<size_t>(rank())].get();
      p.works[static_cast<size_t>(rank())] = work;
      if (++p.arrived < size()) return;  // the last rank to arrive runs it (Note [in-process groups])
      ready = std::move(p);
      hub_->pending.erase(work->number());
    }
    std::string error;
    try {
      execute(ready);
    } catch (const std::exception& e) {
      error = e.what();
    }
    // The ranks' tensors are let go before any rank is told it is done, so that each tensor is
    // freed by its own rank (when its Work goes), at the same point of its thread's work every
    // run: a device's peaks do not depend on which thread finished the collective.
    ready.ops.clear();
    ready.owned.clear();
    for (auto& w : ready.works) w->finish(error.empty() ? "" : str_cat(w->description(), ": ", error));
  }

 private:
  void execute(Hub::Pending& p) {
    const Op& first = *p.ops[0];
    auto what = [](const Op& o) {
      return o.a.defined()
                 ? str_cat(op_kind_name(o.kind), " (", dtype_name(o.a.dtype()), ", ", o.a.numel(), " elements)")
                 : std::string(op_kind_name(o.kind));
    };
    for (int r = 1; r < size(); ++r) {
      const Op& o = *p.ops[static_cast<size_t>(r)];
      const bool same = o.kind == first.kind && o.a.defined() == first.a.defined() && o.reduce == first.reduce &&
                        o.peer == first.peer &&
                        (!o.a.defined() || (o.a.dtype() == first.a.dtype() && o.a.numel() == first.a.numel()));
      HR_CHECK(same, CommunicationError, "collective #", p.works[0]->number(), ": rank 0 called ", what(first),
               " but rank ", r, " called ", what(o), ": the ranks must call the same collectives in the same order");
    }
    const int n = size();
    // Note [meta execution]: under a MetaScope the ranks' tensors have blocks and no bytes; the
    // collective is matched and checked, and moves nothing.
    if ((first.a.defined() && first.a.is_meta()) || (first.b.defined() && first.b.is_meta())) return;
    switch (first.kind) {
      case OpKind::all_reduce: {
        std::vector<const void*> in;
        std::vector<std::pair<void*, int64_t>> out;
        for (int r = 0; r < n; ++r) {
          in.push_back(p.ops[static_cast<size_t>(r)]->a.raw_data());
          out.emplace_back(p.ops[static_cast<size_t>(r)]->a.raw_data(), 0);
        }
        reduce(first.a.dtype(), in, first.a.numel(), first.reduce, out, first.a.numel());
        return;
      }
      case OpKind::reduce_scatter: {
        const int64_t chunk = first.a.numel();
        std::vector<const void*> in;
        std::vector<std::pair<void*, int64_t>> out;
        for (int r = 0; r < n; ++r) {
          in.push_back(p.ops[static_cast<size_t>(r)]->b.raw_data());
          out.emplace_back(p.ops[static_cast<size_t>(r)]->a.raw_data(), r * chunk);
        }
        // The whole reduced once; each rank gets its chunk.
        reduce(first.a.dtype(), in, chunk * n, first.reduce, out, chunk);
        return;
      }
      case OpKind::all_gather: {
        const size_t bytes = p.ops[0]->b.nbytes();
        for (int r = 0; r < n; ++r) {  // every output gets every rank's chunk
          char* dst = static_cast<char*>(p.ops[static_cast<size_t>(r)]->a.raw_data());
          for (int q = 0; q < n; ++q) {
            const Op& src = *p.ops[static_cast<size_t>(q)];
            char* at = dst + static_cast<size_t>(q) * bytes;
            if (src.in_place && q == r) continue;
            std::memmove(at, src.b.raw_data(), bytes);
          }
        }
        return;
      }
      case OpKind::broadcast: {
        const Op& root = *p.ops[static_cast<size_t>(first.peer)];
        for (int r = 0; r < n; ++r)
          if (r != first.peer)
            std::memcpy(p.ops[static_cast<size_t>(r)]->a.raw_data(), root.a.raw_data(), root.a.nbytes());
        return;
      }
      case OpKind::barrier: return;
      case OpKind::send:
      case OpKind::recv: break;
    }
  }

  std::shared_ptr<Hub> hub_;
};

std::vector<std::unique_ptr<ProcessGroup>> make_local_groups(const std::vector<Device>& devices) {
  HR_CHECK(!devices.empty(), ValueError, "make_local_groups: no devices");
  std::set<std::pair<int, int>> seen;
  for (const Device& d : devices) {
    HR_CHECK(d.is_cpu(), DeviceError, "make_local_groups: ", d.str(), " is not a cpu device; in-process groups over ",
             "GPUs are not built yet (Note [in-process groups])");
    HR_CHECK(seen.insert({static_cast<int>(d.type), d.index}).second, DeviceError, "make_local_groups: ", d.str(),
             " is listed twice");
  }
  auto hub = std::make_shared<Hub>(devices);
  std::vector<std::unique_ptr<ProcessGroup>> groups;
  for (size_t r = 0; r < devices.size(); ++r) groups.push_back(std::make_unique<LocalGroup>(static_cast<int>(r), hub));
  return groups;
}

void run_on_groups(const std::vector<std::unique_ptr<ProcessGroup>>& groups,
                   const std::function<void(int rank, ProcessGroup& group)>& fn) {
  std::mutex mutex;
  std::exception_ptr first;
  std::vector<std::thread> threads;
  MetaScope::State* meta = MetaScope::current();  // Note [meta in worker threads]
  OpRecorder* recorder = OpRecorder::current();
  const bool grad = GradMode::is_enabled();
  for (size_t r = 0; r < groups.size(); ++r) {
    auto* local = dynamic_cast<LocalGroup*>(groups[r].get());
    HR_CHECK(local, ValueError, "run_on_groups: group ", r, " is a ", groups[r]->backend_name(),
             " group, not one of make_local_groups'");
    threads.emplace_back([&, r, local] {
      try {
        MetaScope::Join join(meta);
        OpRecorder::Join record(recorder);
        std::optional<NoGradGuard> no_grad;  // the caller's grad mode, on every rank's thread
        if (!grad) no_grad.emplace();
        fn(static_cast<int>(r), *groups[r]);
      } catch (const std::exception& e) {
        {
          std::lock_guard<std::mutex> lock(mutex);
          if (!first) first = std::current_exception();
        }
        local->break_group(str_cat("rank ", r, " (", local->device().str(), ") failed: ", e.what()));
      }
    });
  }
  for (auto& t : threads) t.join();
  if (first) {
    // Every rank has stopped: the groups are mended for the next call, each rank's collectives
    // numbered from one past the furthest any rank got (Note [in-process groups]).
    int64_t next = 0;
    for (const auto& g : groups) next = std::max(next, static_cast<LocalGroup&>(*g).next_collective());
    for (const auto& g : groups) static_cast<LocalGroup&>(*g).mend_after_failure(next);
    std::rethrow_exception(first);
  }
}

void run_on_devices(const std::vector<Device>& devices, const std::function<void(int rank, ProcessGroup& group)>& fn) {
  run_on_groups(make_local_groups(devices), fn);
}

}  // namespace headroom::dist
