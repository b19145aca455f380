#include "engine/allocator.h"

#include <cstdlib>
#include <map>
#include <new>

#include "engine/error.h"

namespace headroom {

namespace {
constexpr size_t kHostAlignment = 64;
}

Allocation HostAllocator::allocate(size_t nbytes) {
  size_t rounded = (nbytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
  if (rounded == 0) rounded = kHostAlignment;
  void* p = std::aligned_alloc(kHostAlignment, rounded);
  if (!p) throw Error(str_cat("host allocation of ", nbytes, " bytes failed"));
  std::lock_guard<std::mutex> lock(mu_);
  in_use_ += rounded;
  if (in_use_ > peak_) peak_ = in_use_;
  return {p, rounded, nullptr};
}

void HostAllocator::deallocate(const Allocation& a) {
  if (!a.ptr) return;
  std::free(a.ptr);
  std::lock_guard<std::mutex> lock(mu_);
  in_use_ -= a.nbytes;
}

size_t HostAllocator::bytes_in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_use_;
}
size_t HostAllocator::peak_bytes_in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peak_;
}
void HostAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  peak_ = in_use_;
}

namespace {
struct Registry {
  std::mutex mu;
  std::map<std::pair<int, int>, Allocator*> allocators;
};
Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: storages may outlive static dtors
  return *r;
}
}  // namespace

Allocator& allocator_for(Device device) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto key = std::make_pair(static_cast<int>(device.type), device.index);
  auto it = r.allocators.find(key);
  if (it != r.allocators.end()) return *it->second;
  if (device.is_cpu()) {
    auto* a = new HostAllocator();
    r.allocators[key] = a;
    return *a;
  }
  throw DeviceError(str_cat("no allocator for device ", device.str(),
                        " (is headroom built with CUDA and is a GPU present?)"));
}

void set_allocator(Device device, Allocator* allocator) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.allocators[std::make_pair(static_cast<int>(device.type), device.index)] = allocator;
}

}  // namespace headroom
