#include "autograd/checkpoint.h"

#include <algorithm>
#include <any>
#include <array>
#include <cstring>
#include <memory>
#include <optional>

#include "autograd/autocast.h"
#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "autograd/saved_tensor.h"
#include "engine/caching_allocator.h"
#include "engine/memory.h"
#include "engine/rng.h"

namespace headroom {

namespace {

thread_local int recompute_depth = 0;
thread_local CheckpointStats stats;

// What the forward saved at one index.
struct Entry {
  const char* op;
  Shape shape;
  DType dtype;
  Device device;
};

struct Frame;

// What a SavedTensor packed inside a checkpoint holds: its index, and the tensor once recomputed.
// Owned by the SavedTensor -- so by the node that saved it -- and freed with it.
struct Handle {
  std::shared_ptr<Frame> frame;
  size_t index = 0;
  Tensor recomputed;  // filled by a re-run, until the node has used it
};

// Note [recompute state]: everything the forward ran under that the re-run must see again.
struct Frame {
  CheckpointFn fn;
  bool determinism_check = true;
  std::vector<SavedTensor> inputs;
  std::vector<char> input_requires_grad;
  uint64_t seed = 0, offset = 0;
  std::array<std::pair<bool, DType>, kNumDeviceTypes> autocast{};
  std::vector<Stream> streams;
  std::vector<Entry> entries;
  std::vector<std::weak_ptr<Handle>> handles;  // by index; expired once the node has run
  // Note [selective checkpointing]: the op outputs kept in the forward, in order.
  std::function<bool(const char*)> keep_output;
  struct Kept {
    const char* op;
    std::vector<Tensor> tensors;
    size_t saved_before = 0;     // entries.size() when offered
    std::vector<char> retagged;  // whether keeping it made it an activation
    bool released = false;       // offered after the last save: no re-run reaches it
  };
  std::vector<Kept> kept_outputs;
};

// The checkpoint whose forward or re-run is running on this thread, innermost last: the ops of
// Note [selective checkpointing] offer to and replay from the top one.
struct Context {
  Frame* frame;
  bool replaying;
  size_t next = 0;  // re-run: the next kept output to hand out
};
thread_local std::vector<Context> contexts;

struct ContextScope {
  ContextScope(Frame* f, bool replaying) { contexts.push_back({f, replaying}); }
  ~ContextScope() { contexts.pop_back(); }
  ContextScope(const ContextScope&) = delete;
  ContextScope& operator=(const ContextScope&) = delete;
};

// Thrown by the re-run's pack once the last tensor still needed exists; caught by recompute.
struct StopRecompute {};

int64_t bytes_of(const Tensor& t) { return static_cast<int64_t>(t.nbytes()); }

std::string entry_str(const Entry& e) {
  return str_cat("'", e.op, "' saved ", dtype_name(e.dtype), " ", shape_str(e.shape), " on ", e.device.str());
}

// Puts the forward's state back for the re-run and the caller's back after it.
class RecomputeScope {
 public:
  explicit RecomputeScope(const Frame& f)
      : seed_(default_generator().seed()), offset_(default_generator().offset()), category_(MemoryCategory::temporary) {
    default_generator().manual_seed(f.seed);
    default_generator().set_offset(f.offset);
    for (int t = 0; t < kNumDeviceTypes; ++t)
      autocast_.emplace_back(static_cast<DeviceType>(t), f.autocast[static_cast<size_t>(t)].second,
                             f.autocast[static_cast<size_t>(t)].first);
    for (const Stream& s : f.streams) streams_.push_back(std::make_unique<StreamGuard>(s));
    ++recompute_depth;
  }
  ~RecomputeScope() {
    --recompute_depth;
    default_generator().manual_seed(seed_);
    default_generator().set_offset(offset_);
  }
  RecomputeScope(const RecomputeScope&) = delete;
  RecomputeScope& operator=(const RecomputeScope&) = delete;

 private:
  uint64_t seed_, offset_;
  EnableGradGuard grad_;
  CategoryScope category_;
  std::vector<AutocastGuard> autocast_;
  std::vector<std::unique_ptr<StreamGuard>> streams_;
};

void recompute(const std::shared_ptr<Frame>& frame) {
  Frame& f = *frame;
  // The last index whose tensor a live node still needs.
  std::optional<size_t> last;
  for (size_t i = 0; i < f.handles.size(); ++i)
    if (auto h = f.handles[i].lock(); h && !h->recomputed.defined()) last = i;
  if (!last) return;
  ++stats.recomputations;

  RecomputeScope scope(f);
  std::vector<Tensor> inputs;
  inputs.reserve(f.inputs.size());
  for (size_t i = 0; i < f.inputs.size(); ++i) {
    Tensor x = f.inputs[i].unpack();
    if (x.defined()) {
      x = x.detach();
      if (f.input_requires_grad[i]) x.set_requires_grad(true);
    }
    inputs.push_back(std::move(x));
  }
  size_t k = 0;
  PackHook pack = [&](const Tensor& t, const char* op) -> std::any {
    HR_CHECK(k < f.entries.size(), AutogradError, "checkpoint: the recomputation saved more tensors than the forward (",
             f.entries.size(), "); the ", k + 1, "th was saved by '", op,
             "'. The checkpointed function did not run the same ops again: does it depend on a global, a flag or "
             "the data in a way that changed since the forward?");
    const Entry& e = f.entries[k];
    if (f.determinism_check &&
        (std::strcmp(op, e.op) != 0 || t.shape() != e.shape || t.dtype() != e.dtype || t.device() != e.device)) {
      throw AutogradError(str_cat(
          "checkpoint: the recomputation is not what the forward computed: tensor ", k, " saved for backward was ",
          entry_str(e), " in the forward but '", op, "' saved ", dtype_name(t.dtype()), " ", shape_str(t.shape()),
          " on ", t.device().str(),
          " in the recomputation. The checkpointed function must run the same ops on the same shapes both times: "
          "does it depend on a global, a flag or the data in a way that changed since the forward?"));
    }
    if (auto h = f.handles[k].lock(); h && !h->recomputed.defined()) {
      if (t.storage()->category() == MemoryCategory::temporary) t.storage()->set_category(MemoryCategory::activation);
      h->recomputed = t;
      ++stats.recomputed;
    }
    if (k++ == *last) throw StopRecompute{};
    return {};
  };
  UnpackHook unpack = [](const std::any&) -> Tensor {
    throw AutogradError("checkpoint: backward through the graph of a recomputation (internal error)");
  };
  try {
    SavedTensorHooks hooks(std::move(pack), std::move(unpack));
    ContextScope context(&f, true);
    f.fn(inputs);
  } catch (const StopRecompute&) {
    return;
  }
  throw AutogradError(str_cat("checkpoint: the recomputation saved ", k, " tensors for backward but the forward saved ",
                              f.entries.size(), " (the next was ", entry_str(f.entries[k]),
                              "). The checkpointed function did not run the same ops again: does it depend on a "
                              "global, a flag or the data in a way that changed since the forward?"));
}

Tensor unpack_handle(const std::any& packed) {
  const auto& h = std::any_cast<const std::shared_ptr<Handle>&>(packed);
  if (!h->recomputed.defined()) recompute(h->frame);
  HR_CHECK(h->recomputed.defined(), AutogradError, "checkpoint: the recomputation did not produce tensor ", h->index,
           " (", entry_str(h->frame->entries[h->index]), ")");
  // Under retain_graph the node lives on: give the tensor out once rather than hold it.
  if (backward_retains_graph()) return std::exchange(h->recomputed, Tensor());
  return h->recomputed;
}

// Note [selective checkpointing]: an output offered after the forward's last saved tensor is one
// no re-run will ask for -- the re-run stops at that tensor's save -- so it is not kept past fn.
// (The last linear of a GPT block: nothing after it saves anything, the block's output goes to
// the next block, whose checkpoint keeps its own input.) This is why linear and conv2d save
// their inputs before computing: their offer then comes after their own saves.
void release_unneeded_outputs(Frame& f) {
  for (auto it = f.kept_outputs.rbegin(); it != f.kept_outputs.rend() && it->saved_before == f.entries.size(); ++it) {
    int64_t bytes = 0;
    for (size_t i = 0; i < it->tensors.size(); ++i) {
      const Tensor& t = it->tensors[i];
      if (!t.defined()) continue;
      bytes += bytes_of(t);
      // Nothing saved it since (no save came after): it is what it was before it was kept.
      if (it->retagged[i]) t.storage()->set_category(MemoryCategory::temporary);
    }
    it->tensors.clear();
    it->released = true;
    --stats.kept_outputs;
    stats.kept_output_bytes -= bytes;
    auto& per_op = stats.kept_by_op[it->op];
    --per_op.first;
    per_op.second -= bytes;
    if (per_op.first == 0) stats.kept_by_op.erase(it->op);
    ++stats.released_outputs;
    stats.released_output_bytes += bytes;
  }
}

std::vector<Tensor> call(const CheckpointFn& fn, const std::vector<Tensor>& inputs) {
  std::vector<Tensor> out = fn(inputs);
  bool any = false;
  for (const Tensor& t : out) any = any || t.defined();
  HR_CHECK(any, ValueError, "checkpoint: the function returned no tensor (", out.size(),
           " outputs, none defined): a checkpointed function must return what backward flows through");
  return out;
}

}  // namespace

std::vector<Tensor> checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs,
                               const CheckpointOptions& options) {
  HR_CHECK(fn, ValueError, "checkpoint: the function is empty");
  if (!GradMode::is_enabled()) return call(fn, inputs);

  auto frame = std::make_shared<Frame>();
  frame->fn = fn;
  frame->determinism_check = options.determinism_check;
  frame->keep_output = options.keep_output;
  // The inputs are saved as any op saves them: under an enclosing checkpoint's hooks they are
  // dropped and recomputed too.
  frame->inputs.reserve(inputs.size());
  for (const Tensor& x : inputs) {
    frame->inputs.emplace_back(x, "checkpoint");
    frame->input_requires_grad.push_back(x.defined() && x.requires_grad() ? 1 : 0);
    if (x.defined() && std::none_of(frame->streams.begin(), frame->streams.end(),
                                    [&](const Stream& s) { return s.device == x.device(); }))
      frame->streams.push_back(current_stream(x.device()));
  }
  frame->seed = default_generator().seed();
  frame->offset = default_generator().offset();
  for (int t = 0; t < kNumDeviceTypes; ++t)
    frame->autocast[static_cast<size_t>(t)] = {autocast_enabled(static_cast<DeviceType>(t)),
                                               autocast_dtype(static_cast<DeviceType>(t))};

  PackHook pack = [frame](const Tensor& t, const char* op) -> std::any {
    auto h = std::make_shared<Handle>();
    h->frame = frame;
    h->index = frame->entries.size();
    frame->entries.push_back({op, t.shape(), t.dtype(), t.device()});
    frame->handles.push_back(h);
    ++stats.dropped;
    stats.dropped_bytes += bytes_of(t);
    return h;
  };
  std::vector<Tensor> out;
  {
    SavedTensorHooks hooks(std::move(pack), unpack_handle);
    ContextScope context(frame.get(), false);
    out = call(fn, inputs);
  }
  if (!frame->entries.empty()) ++stats.segments;
  release_unneeded_outputs(*frame);
  return out;
}

bool is_recomputing() { return recompute_depth > 0; }

bool selective_policy(const char* op) {
  for (const char* kept : {"linear", "conv2d", "scaled_dot_product_attention (fused)"})
    if (std::strcmp(op, kept) == 0) return true;
  return false;
}

CheckpointOptions selective_checkpoint_options() {
  CheckpointOptions o;
  o.keep_output = selective_policy;
  return o;
}

namespace detail {

bool replay_outputs(const char* op, std::initializer_list<Tensor*> outs) {
  if (contexts.empty()) return false;
  Context& c = contexts.back();
  Frame& f = *c.frame;
  if (!c.replaying || !f.keep_output || !f.keep_output(op)) return false;
  HR_CHECK(c.next < f.kept_outputs.size(), AutogradError, "checkpoint: the recomputation ran '", op,
           "' more often than the forward did (it kept ", f.kept_outputs.size(),
           " op outputs). The checkpointed function did not run the same ops again: does it depend on a global, a "
           "flag or the data in a way that changed since the forward?");
  const Frame::Kept& k = f.kept_outputs[c.next];
  HR_CHECK(std::strcmp(k.op, op) == 0 && k.tensors.size() == outs.size(), AutogradError,
           "checkpoint: the recomputation is not what the forward computed: kept op output ", c.next, " came from '",
           k.op, "' in the forward but the recomputation ran '", op,
           "' there. The checkpointed function must run the same ops on the same shapes both times.");
  // A re-run stops at the last saved tensor, before any op that offered after it.
  HR_CHECK(!k.released, AutogradError, "checkpoint: the recomputation reached '", op,
           "' past the last tensor the forward saved (internal error)");
  ++c.next;
  size_t i = 0;
  for (Tensor* out : outs) *out = k.tensors[i++];
  ++stats.replayed;
  return true;
}

void offer_outputs(const char* op, std::initializer_list<const Tensor*> outs) {
  if (contexts.empty()) return;
  Context& c = contexts.back();
  Frame& f = *c.frame;
  if (c.replaying || !f.keep_output || !f.keep_output(op)) return;
  Frame::Kept k{op, {}, f.entries.size(), {}, false};
  int64_t bytes = 0;
  for (const Tensor* t : outs) {
    const bool retag = t->defined() && t->storage()->category() == MemoryCategory::temporary;
    if (retag) t->storage()->set_category(MemoryCategory::activation);
    k.retagged.push_back(retag ? 1 : 0);
    k.tensors.push_back(t->defined() ? t->detach() : Tensor());
    bytes += t->defined() ? bytes_of(*t) : 0;
  }
  f.kept_outputs.push_back(std::move(k));
  ++stats.kept_outputs;
  stats.kept_output_bytes += bytes;
  auto& per_op = stats.kept_by_op[op];
  ++per_op.first;
  per_op.second += bytes;
}

}  // namespace detail

std::string describe(const CheckpointStats& st) {
  std::string s = str_cat(st.segments, " segment", st.segments == 1 ? "" : "s", ": dropped ", st.dropped,
                          " saved tensors (", format_bytes(st.dropped_bytes), ")");
  if (st.kept_outputs > 0) {
    s += str_cat(", kept ", st.kept_outputs, " op outputs (", format_bytes(st.kept_output_bytes), ":");
    bool first = true;
    for (const auto& [op, v] : st.kept_by_op) {
      s += str_cat(first ? " " : ", ", op, " ", v.first, " x ", format_bytes(v.first ? v.second / v.first : 0));
      first = false;
    }
    s += ")";
  }
  if (st.released_outputs > 0)
    s += str_cat(", released ", st.released_outputs, " op output", st.released_outputs == 1 ? "" : "s",
                 " no re-run needs (", format_bytes(st.released_output_bytes), ")");
  s += str_cat("; ", st.recomputations, " recomputation", st.recomputations == 1 ? "" : "s", " handed back ",
               st.recomputed, " tensors");
  if (st.replayed > 0) s += str_cat(" and skipped ", st.replayed, " kept ops");
  return s;
}

CheckpointStats checkpoint_stats() { return stats; }
void reset_checkpoint_stats() { stats = {}; }

}  // namespace headroom
