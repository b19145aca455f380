#include "engine/meta.h"

#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "engine/error.h"

namespace headroom {

namespace {

// Address ranges, never touched (Note [meta execution]). They start high in the address space
// and are not mapped, so that a kernel that wrongly ran would fault rather than read.
class MetaMemoryBackend final : public DeviceMemoryBackend {
 public:
  explicit MetaMemoryBackend(Device device, bool host_pool = false) : device_(device), host_pool_(host_pool) {}
  Device device() const override { return device_; }
  void* raw_alloc(size_t nbytes) override {
    const uintptr_t p = next_;
    next_ += (nbytes + kAlign - 1) / kAlign * kAlign + kAlign;  // a gap between segments
    return reinterpret_cast<void*>(p);
  }
  void raw_free(void*, size_t) override {}
  // The device's: cudaMalloc hands out 2 MiB pages (kernels/cuda/cuda_memory.h), host memory
  // the caching allocator's 512 B rounding.
  size_t granularity() const override { return device_.is_cuda() ? size_t{2} << 20 : 512; }
  bool is_meta() const override { return true; }
  bool is_host_pool() const override { return host_pool_; }

 private:
  static constexpr uintptr_t kAlign = 4096;
  Device device_;
  bool host_pool_;
  uintptr_t next_ = uintptr_t{0x7e00} << 32;
};

}  // namespace

namespace {
// Every meta allocator ever made, for good (Note [meta execution]: a meta tensor may outlive its
// scope, and callers read a scope's stats after it closed). Held here so that they stay
// reachable -- kept on purpose, not leaked.
std::vector<std::unique_ptr<CachingAllocator>>& all_meta_allocators() {
  static auto* all = new std::vector<std::unique_ptr<CachingAllocator>>();
  return *all;
}
std::mutex g_all_meta_mutex;
}  // namespace

struct MetaScope::State {
  std::mutex mutex;  // worker threads share the scope (Note [meta in worker threads])
  std::map<std::pair<int, int>, CachingAllocator*> allocators;  // never destroyed
  std::map<std::string, Tensor> slots;                          // freed with the scope
  // The pinned host pool's stand-in (Note [host pool] in engine/allocator.h) under key (-1, 0).
  CachingAllocator& get(Device device, bool host_pool = false) {
    std::lock_guard<std::mutex> lock(mutex);
    auto key = host_pool ? std::make_pair(-1, 0) : std::make_pair(static_cast<int>(device.type), device.index);
    auto it = allocators.find(key);
    if (it != allocators.end()) return *it->second;
    auto* a = new CachingAllocator(std::make_unique<MetaMemoryBackend>(device, host_pool));
    {
      std::lock_guard<std::mutex> all_lock(g_all_meta_mutex);
      all_meta_allocators().emplace_back(a);
    }
    allocators[key] = a;
    return *a;
  }
};

namespace {
thread_local MetaScope::State* g_active = nullptr;
}  // namespace

MetaScope::MetaScope() : state_(new State) {
  if (g_active) {
    delete state_;
    throw ValueError("MetaScope: a MetaScope is already open on this thread (they do not nest)");
  }
  g_active = state_;
}

MetaScope::~MetaScope() {
  state_->slots.clear();  // back to the meta allocators they came from
  g_active = nullptr;
  // The allocators stay (a meta tensor may outlive the scope and be freed later); the map goes.
  delete state_;
}

CachingAllocator& MetaScope::allocator(Device device) { return state_->get(device); }
CachingAllocator& MetaScope::host_pool() { return state_->get(Device::cpu(), /*host_pool=*/true); }

bool meta_active() { return g_active != nullptr; }

MetaScope::State* MetaScope::current() { return g_active; }

MetaScope::Join::Join(State* state) : prev_(g_active) {
  HR_CHECK(!g_active || g_active == state, ValueError, "MetaScope::Join: this thread is already in another MetaScope");
  g_active = state;
}

MetaScope::Join::~Join() { g_active = prev_; }

namespace detail {
Allocator* meta_allocator_for(Device device) { return g_active ? &g_active->get(device) : nullptr; }
CachingAllocator* meta_host_pool() { return g_active ? &g_active->get(Device::cpu(), true) : nullptr; }
Tensor* meta_scope_slot(const std::string& key) {
  if (!g_active) return nullptr;
  std::lock_guard<std::mutex> lock(g_active->mutex);
  return &g_active->slots[key];
}
}  // namespace detail

}  // namespace headroom
