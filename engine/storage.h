// Storage: a refcounted run of bytes on one device, shared by every tensor that views it.
//
// Note [version counter]: each storage counts the in-place writes made to it. Autograd records
// the count when it saves a tensor for backward and compares it when backward unpacks the
// tensor; a difference means the saved values were overwritten and the gradient would be
// wrong, so backward throws and names the op. Views share the storage, so a write through any
// view is seen. The counter is its own small refcounted object (VersionCounter), so that what
// outlives the storage's bytes can still ask it: a tensor saved through saved-tensor hooks
// (Note [saved-tensor hooks] in autograd/saved_tensor.h) keeps the counter but not the storage,
// and backward still sees a write made before the storage was freed.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>

#include "engine/allocator.h"
#include "engine/device.h"

namespace headroom {

struct HostMemoryTag {};
void* allocate_host(size_t nbytes);  // aligned; throws Error when the host is out of memory
void free_host(void* ptr);

using VersionCounter = std::atomic<uint64_t>;

class StorageImpl {
 public:
  StorageImpl(size_t nbytes, Device device)
      : device_(device),
        allocator_(&allocator_for(device)),
        alloc_(allocator_->allocate(nbytes)),
        nbytes_(nbytes),
        meta_(allocator_->is_meta()) {}
  // From a given allocator (the pinned host allocator): its device's memory.
  StorageImpl(size_t nbytes, Allocator& allocator)
      : device_(allocator.device()),
        allocator_(&allocator),
        alloc_(allocator.allocate(nbytes)),
        nbytes_(nbytes),
        meta_(allocator.is_meta()) {}
  // Host memory outside every device's allocator (Tensor::empty_host): not counted in any
  // allocator's stats or limit.
  StorageImpl(size_t nbytes, HostMemoryTag)
      : device_(Device::cpu()), allocator_(nullptr), alloc_{allocate_host(nbytes), nbytes, nullptr}, nbytes_(nbytes) {}
  ~StorageImpl() {
    if (allocator_) allocator_->deallocate(alloc_);
    else free_host(alloc_.ptr);
  }
  StorageImpl(const StorageImpl&) = delete;
  StorageImpl& operator=(const StorageImpl&) = delete;

  void* data() const { return alloc_.ptr; }
  // An address range without memory (Note [meta execution] in engine/meta.h).
  bool is_meta() const { return meta_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }
  uint64_t version() const { return version_->load(std::memory_order_relaxed); }
  void bump_version() { version_->fetch_add(1, std::memory_order_relaxed); }
  // The counter itself, shared (Note [version counter]).
  const std::shared_ptr<VersionCounter>& version_counter() const { return version_; }
  MemoryCategory category() const { return allocator_ ? allocator_->category_of(alloc_) : MemoryCategory::temporary; }
  void set_category(MemoryCategory c) {
    if (allocator_) allocator_->set_category(alloc_, c);
  }
  const Allocation& allocation() const { return alloc_; }
  // nullptr for host memory outside the allocators (Tensor::empty_host).
  Allocator* allocator() const { return allocator_; }

 private:
  // First, so that a failure to make it happens before the bytes are allocated.
  std::shared_ptr<VersionCounter> version_ = std::make_shared<VersionCounter>(0);
  Device device_;
  Allocator* allocator_;
  Allocation alloc_;
  size_t nbytes_;
  bool meta_ = false;
};

using Storage = std::shared_ptr<StorageImpl>;

}  // namespace headroom
