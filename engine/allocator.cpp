#include "engine/allocator.h"

#include "engine/backend.h"
#include "engine/meta.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>

#include "engine/caching_allocator.h"
#include "engine/error.h"
#include "engine/storage.h"

namespace headroom {

namespace {
// Note [cpu devices]: HEADROOM_CPU_DEVICES, else 8; read once.
int cpu_device_count() {
  static const int count = [] {
    const char* v = std::getenv("HEADROOM_CPU_DEVICES");
    if (!v || !*v) return 8;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    HR_CHECK(end && *end == '\0' && n >= 1 && n <= 1024, ValueError, "HEADROOM_CPU_DEVICES='", v,
             "' is not a number of cpu devices from 1 to 1024");
    return static_cast<int>(n);
  }();
  return count;
}
}  // namespace

namespace {
struct Registry {
  std::mutex mu;
  std::map<std::pair<int, int>, Allocator*> allocators;
  // Note [missing devices]: per device type, the count its backend reported (-1: none did).
  int visible[kNumDeviceTypes] = {-1, -1};
  std::string why_none[kNumDeviceTypes];
  std::string unloadable[kNumDeviceTypes];  // Note [loadable backends]: why the backend did not load
};
Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: storages may outlive static dtors
  return *r;
}
}  // namespace

// HEADROOM_MEMORY_LIMIT and HEADROOM_FAIL_ALLOC apply to every device's allocator when it is
// made. Both are read before anything is changed, so a bad value throws and leaves the allocator
// as it was.
size_t memory_limit_from_env(const char* text, Device device) {
  const std::string all(text);
  size_t fallback = 0, mine = 0;
  bool have_mine = false, have_fallback = false;
  size_t start = 0;
  for (;;) {
    const size_t comma = all.find(',', start);
    const std::string item = all.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const size_t eq = item.find('=');
    if (eq == std::string::npos) {
      HR_CHECK(!have_fallback, ValueError, "HEADROOM_MEMORY_LIMIT='", all, "': more than one limit for every device");
      fallback = parse_memory_size(item, "HEADROOM_MEMORY_LIMIT");
      have_fallback = true;
    } else {
      Device d;
      try {
        d = Device::parse(item.substr(0, eq));
      } catch (const DeviceError& e) {
        throw ValueError(str_cat("HEADROOM_MEMORY_LIMIT='", all, "': '", item, "' names no device: ", e.what()));
      }
      const size_t limit = parse_memory_size(item.substr(eq + 1), str_cat("HEADROOM_MEMORY_LIMIT (", d.str(), ")"));
      if (d == device) {
        mine = limit;
        have_mine = true;
      }
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return have_mine ? mine : fallback;
}

void apply_env_settings(CachingAllocator& a, Device device) {
  size_t limit = 0;
  std::pair<FaultKind, int64_t> fault{FaultKind::none, 0};
  const char* env = std::getenv("HEADROOM_MEMORY_LIMIT");
  if (env && *env) limit = memory_limit_from_env(env, device);
  const char* fail = std::getenv("HEADROOM_FAIL_ALLOC");
  if (fail && *fail) fault = parse_fault_injection(fail, "HEADROOM_FAIL_ALLOC");
  if (limit > 0) a.set_memory_limit(limit);
  if (fault.first != FaultKind::none) a.inject_fault(fault.first, fault.second);
}

void* allocate_host(size_t nbytes) {
  size_t rounded = (nbytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (!p) throw Error(str_cat("host allocation of ", nbytes, " bytes failed"));
  return p;
}
void free_host(void* ptr) { std::free(ptr); }

namespace {
// Note [missing devices]: the reason for a cuda device without an allocator.
std::string unavailable_reason_locked(Device device, int visible, const std::string& why_none,
                                      const std::string& unloadable) {
  if (visible < 0 && !unloadable.empty()) return unloadable;
  if (visible < 0)
    return "this headroom was built without CUDA support (configure it with -DHEADROOM_CUDA=ON on a machine with "
           "the CUDA toolkit), so only cpu devices exist";
  if (visible == 0) return str_cat("no GPU is visible (", why_none, ")");
  return str_cat(device.str(), " does not exist: the CUDA runtime sees ", visible, visible == 1 ? " GPU" : " GPUs",
                 visible == 1 ? " (cuda:0)" : str_cat(" (cuda:0 to cuda:", visible - 1, ")"));
}
}  // namespace

Allocator& allocator_for(Device device) {
  if (Allocator* meta = detail::meta_allocator_for(device)) return *meta;  // Note [meta execution]
  Registry& r = registry();
  std::unique_lock<std::mutex> lock(r.mu);
  auto key = std::make_pair(static_cast<int>(device.type), device.index);
  auto it = r.allocators.find(key);
  if (it != r.allocators.end()) return *it->second;
  if (!device.is_cpu() && r.visible[static_cast<int>(device.type)] < 0 &&
      r.unloadable[static_cast<int>(device.type)].empty()) {
    // Not loaded yet (Note [loadable backends]): load it without the lock -- its registrations
    // take it -- and look again.
    lock.unlock();
    load_device_backend(device.type);
    lock.lock();
    it = r.allocators.find(key);
    if (it != r.allocators.end()) return *it->second;
  }
  if (device.is_cpu()) {
    // Note [cpu devices]: each index its own allocator, up to the count.
    const int count = cpu_device_count();
    HR_CHECK(device.index >= 0 && device.index < count, DeviceError, device.str(), " does not exist: there are ", count,
             " cpu devices (cpu:0 to cpu:", count - 1, "; HEADROOM_CPU_DEVICES sets how many)");
    // Never destroyed, like the registry: tensors in static storage may be freed at exit.
    // A bad environment value throws here, every time a cpu tensor is made, and leaks nothing.
    auto a = std::make_unique<CachingAllocator>(std::make_unique<HostMemoryBackend>(device));
    apply_env_settings(*a, device);
    CachingAllocator* raw = a.release();
    r.allocators[key] = raw;
    return *raw;
  }
  const int t = static_cast<int>(device.type);
  throw DeviceError(str_cat(device.str(), " is not available: ",
                            unavailable_reason_locked(device, r.visible[t], r.why_none[t], r.unloadable[t])));
}

void report_visible_devices(DeviceType type, int count, std::string why_none) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.visible[static_cast<int>(type)] = count;
  r.why_none[static_cast<int>(type)] = std::move(why_none);
}

void report_backend_unloadable(DeviceType type, std::string why) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.unloadable[static_cast<int>(type)] = std::move(why);
}

std::string device_unavailable_reason(Device device) {
  if (!device.is_cpu()) load_device_backend(device.type);
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  if (device.is_cpu())
    return device.index >= 0 && device.index < cpu_device_count()
               ? ""
               : str_cat(device.str(), " does not exist: there are ", cpu_device_count(), " cpu devices");
  if (r.allocators.count(std::make_pair(static_cast<int>(device.type), device.index))) return "";
  const int t = static_cast<int>(device.type);
  return unavailable_reason_locked(device, r.visible[t], r.why_none[t], r.unloadable[t]);
}

int device_count(DeviceType type) {
  if (type == DeviceType::cpu) return cpu_device_count();
  load_device_backend(type);
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  return std::max(0, r.visible[static_cast<int>(type)]);
}

namespace {
std::atomic<Allocator*> g_pinned_allocator{nullptr};
std::atomic<int> g_site_wanters{0};
}  // namespace
bool allocation_sites_wanted() { return g_site_wanters.load(std::memory_order_relaxed) > 0; }
void set_allocation_sites_wanted(bool on) { g_site_wanters.fetch_add(on ? 1 : -1); }

namespace {
std::atomic<std::unique_ptr<DeviceMemoryBackend> (*)()> g_pinned_factory{nullptr};
std::once_flag g_host_pool_once;
}  // namespace

void set_pinned_backend_factory(std::unique_ptr<DeviceMemoryBackend> (*factory)()) { g_pinned_factory.store(factory); }

CachingAllocator& host_pool() {
  std::call_once(g_host_pool_once, [] {
    // Note [loadable backends]: the CUDA side registers the page-locked backend when it loads.
    load_device_backend(DeviceType::cuda);
    std::unique_ptr<DeviceMemoryBackend> backend;
    if (auto factory = g_pinned_factory.load()) backend = factory();
    if (!backend) backend = std::make_unique<HostPoolMemoryBackend>();
    // Never destroyed, like the device allocators.
    auto pool = std::make_unique<CachingAllocator>(std::move(backend));
    const char* env = std::getenv("HEADROOM_HOST_MEMORY_LIMIT");
    if (env && *env) pool->set_memory_limit(parse_memory_size(env, "HEADROOM_HOST_MEMORY_LIMIT"));
    g_pinned_allocator.store(pool.release());
  });
  return *static_cast<CachingAllocator*>(g_pinned_allocator.load());
}

CachingAllocator* host_pool_if_made() { return static_cast<CachingAllocator*>(g_pinned_allocator.load()); }

Allocator* pinned_allocator() {
  if (CachingAllocator* meta = detail::meta_host_pool()) return meta;  // Note [meta execution]
  return &host_pool();
}

void set_allocator(Device device, Allocator* allocator) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.allocators[std::make_pair(static_cast<int>(device.type), device.index)] = allocator;
}

}  // namespace headroom
