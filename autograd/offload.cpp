// Activation offload (Note [activation offload] in offload.h).
#include "autograd/offload.h"

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "autograd/engine.h"
#include "autograd/hooks.h"
#include "engine/caching_allocator.h"
#include "engine/event.h"

namespace headroom {

namespace {

// One storage's bytes on the host, and on the device again once fetched.
struct Entry {
  Tensor host;  // u8 [nbytes] in the pinned host pool
  Device device;
  size_t nbytes = 0;
  std::shared_ptr<VersionCounter> counter;  // keeps the dedup key's address unique while we live
  int64_t segment = 0;
  Storage device_copy;           // while fetched
  std::unique_ptr<Event> ready;  // GPU: the copy back is done
  bool gpu = false;
};

// What a SavedTensor keeps: the entry and the view of its storage that was saved.
struct Handle {
  std::shared_ptr<Entry> entry;
  Shape shape, strides;
  int64_t offset = 0;
  DType dtype = DType::f32;
};

Tensor bytes_of(const Storage& storage) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = storage;
  impl->shape = {static_cast<int64_t>(storage->nbytes())};
  impl->strides = {1};
  impl->dtype = DType::u8;
  return Tensor(std::move(impl));
}

Stream side_stream(Device device) { return Stream{device, kOffloadStreamId}; }

}  // namespace

struct ActivationOffload::State : std::enable_shared_from_this<ActivationOffload::State> {
  ActivationOffloadOptions options;
  mutable std::mutex mu;
  ActivationOffloadStats stats;
  std::unordered_map<const VersionCounter*, std::weak_ptr<Entry>> by_storage;
  std::vector<std::vector<std::weak_ptr<Entry>>> segments{1};
  size_t open_bytes = 0;         // offloaded bytes in the open (last) segment
  int64_t pending_segment = -1;  // the newest segment packed since the last node was recorded

  std::any pack(const Tensor& t);
  Tensor unpack(const Handle& h);
  void on_node(const std::shared_ptr<Node>& node);
  // Brings segment k's entries back to the device (those not there yet); `ahead` counts them as
  // prefetched.
  void fetch_segment(int64_t k, bool ahead);
  void fetch(Entry& e, bool ahead);  // caller holds mu
};

std::any ActivationOffload::State::pack(const Tensor& t) {
  const Storage& storage = t.storage();
  const MemoryCategory category = storage->category();
  const bool offloadable = storage->allocator() != nullptr && !t.is_pinned() && storage->nbytes() > 0 &&
                           storage->nbytes() >= options.min_bytes &&
                           (category == MemoryCategory::activation || category == MemoryCategory::temporary);
  std::lock_guard<std::mutex> lock(mu);
  if (!offloadable) {
    // Saved as without hooks (Note [saved-tensor hooks]): a temporary becomes an activation.
    if (category == MemoryCategory::temporary) storage->set_category(MemoryCategory::activation);
    ++stats.kept_on_device;
    return t;
  }
  std::shared_ptr<Entry> entry;
  if (auto it = by_storage.find(storage->version_counter().get()); it != by_storage.end()) entry = it->second.lock();
  if (!entry) {
    entry = std::make_shared<Entry>();
    entry->device = t.device();
    entry->nbytes = storage->nbytes();
    entry->counter = storage->version_counter();
    entry->gpu = t.device().is_cuda() && !t.is_meta();
    {
      CategoryScope as_activation(MemoryCategory::activation);
      entry->host = Tensor::empty_pinned({static_cast<int64_t>(entry->nbytes)}, DType::u8);
    }
    const Tensor src = bytes_of(storage);
    if (entry->gpu) {
      // Note [activation offload]: the side stream copies once the compute stream has made the
      // values; the device block waits for the copy before it is reused.
      const Stream side = side_stream(t.device());
      Event made;
      made.record(current_stream(t.device()));
      made.wait(side);
      {
        StreamGuard on_side(side);
        copy_tensor(entry->host, src, /*non_blocking=*/true);
      }
      src.record_stream(side);
    } else {
      copy_tensor(entry->host, src);
    }
    entry->segment = static_cast<int64_t>(segments.size()) - 1;
    segments.back().push_back(entry);
    by_storage[storage->version_counter().get()] = entry;
    open_bytes += entry->nbytes;
    ++stats.storages;
    stats.bytes += static_cast<int64_t>(entry->nbytes);
  }
  ++stats.tensors;
  pending_segment = std::max(pending_segment, entry->segment);
  return Handle{entry, t.shape(), t.strides(), t.offset(), t.dtype()};
}

void ActivationOffload::State::fetch(Entry& e, bool ahead) {
  if (e.device_copy) return;
  Storage copy;
  {
    CategoryScope as_activation(MemoryCategory::activation);
    copy = std::make_shared<StorageImpl>(e.nbytes, e.device);
  }
  const Tensor dst = bytes_of(copy);
  if (e.gpu) {
    const Stream side = side_stream(e.device);
    Event allocated;  // the block may have been freed by work still queued on the compute stream
    allocated.record(current_stream(e.device));
    allocated.wait(side);
    auto ready = std::make_unique<Event>();
    {
      StreamGuard on_side(side);
      copy_tensor(dst, e.host, /*non_blocking=*/true);
      ready->record(side);
    }
    dst.record_stream(side);
    e.ready = std::move(ready);
  } else {
    copy_tensor(dst, e.host);
  }
  e.device_copy = std::move(copy);
  ++(ahead ? stats.prefetched : stats.fetched_at_use);
}

void ActivationOffload::State::fetch_segment(int64_t k, bool ahead) {
  if (k < 0 || k >= static_cast<int64_t>(segments.size())) return;
  for (const auto& weak : segments[static_cast<size_t>(k)])
    if (auto e = weak.lock()) fetch(*e, ahead);
}

Tensor ActivationOffload::State::unpack(const Handle& h) {
  Storage storage;
  {
    std::lock_guard<std::mutex> lock(mu);
    Entry& e = *h.entry;
    fetch(e, /*ahead=*/false);
    if (e.ready) e.ready->wait(current_stream(e.device));  // compute waits for the copy, the host does not
    storage = e.device_copy;
    // Under retain_graph the nodes keep what they saved: the device copy is not kept for them,
    // or every segment would come back and stay (the next backward fetches again).
    if (backward_retains_graph()) e.device_copy.reset();
  }
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->shape = h.shape;
  impl->strides = h.strides;
  impl->offset = h.offset;
  impl->dtype = h.dtype;
  return Tensor(std::move(impl));
}

void ActivationOffload::State::on_node(const std::shared_ptr<Node>& node) {
  int64_t segment = -1;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (pending_segment < 0) return;
    segment = pending_segment;
    pending_segment = -1;
    // Close the open segment once it is large enough (segment_bytes 0: at every such node).
    if (open_bytes >= options.segment_bytes && !segments.back().empty()) {
      segments.emplace_back();
      open_bytes = 0;
    }
    stats.segments = static_cast<int64_t>(segments.size()) - (segments.back().empty() ? 1 : 0);
  }
  if (!options.prefetch) return;
  std::weak_ptr<State> weak = weak_from_this();
  node->add_pre_hook([weak, segment](const Tensor&) -> Tensor {
    if (auto state = weak.lock()) {
      std::lock_guard<std::mutex> lock(state->mu);
      state->fetch_segment(segment, /*ahead=*/false);
      state->fetch_segment(segment - 1, /*ahead=*/true);
    }
    return Tensor();
  });
}

struct ActivationOffload::Scopes {
  SavedTensorHooks hooks;
  OnNodeRecorded recorded;
  Scopes(const std::shared_ptr<State>& state)
      : hooks([state](const Tensor& t, const char*) { return state->pack(t); },
              [state](const std::any& packed) {
                if (const auto* h = std::any_cast<Handle>(&packed)) return state->unpack(*h);
                return std::any_cast<Tensor>(packed);
              }),
        recorded([state](const std::shared_ptr<Node>& node) { state->on_node(node); }) {}
};

ActivationOffload::ActivationOffload(ActivationOffloadOptions options) : state_(std::make_shared<State>()) {
  state_->options = options;
  scopes_ = std::make_unique<Scopes>(state_);
}

ActivationOffload::~ActivationOffload() = default;

ActivationOffloadStats ActivationOffload::stats() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->stats;
}

}  // namespace headroom
