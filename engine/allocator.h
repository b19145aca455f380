// The allocator interface through which every byte of tensor storage is obtained.
//
// One Allocator per device. Storage asks it for bytes and hands them back when the last tensor
// viewing them is gone. The host allocator here is the raw backend (aligned host memory) with
// byte counters; the caching allocator of DESIGN.md ("Memory") slots in behind the same
// interface, so nothing above engine/ changes when it arrives.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>

#include "engine/device.h"

namespace headroom {

struct Allocation {
  void* ptr = nullptr;
  size_t nbytes = 0;
  void* context = nullptr;  // allocator-private (e.g. the cached block)
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual Allocation allocate(size_t nbytes) = 0;
  virtual void deallocate(const Allocation& a) = 0;
  virtual Device device() const = 0;
  // Bytes handed out and not yet returned, and the most there ever were.
  virtual size_t bytes_in_use() const = 0;
  virtual size_t peak_bytes_in_use() const = 0;
  virtual void reset_peak() = 0;
};

// Aligned (64 B) host memory, zero-initialised by nobody: callers fill what they read.
class HostAllocator final : public Allocator {
 public:
  Allocation allocate(size_t nbytes) override;
  void deallocate(const Allocation& a) override;
  Device device() const override { return Device::cpu(); }
  size_t bytes_in_use() const override;
  size_t peak_bytes_in_use() const override;
  void reset_peak() override;

 private:
  mutable std::mutex mu_;
  size_t in_use_ = 0;
  size_t peak_ = 0;
};

// The allocator for a device; throws DeviceError when that device has none registered.
Allocator& allocator_for(Device device);
void set_allocator(Device device, Allocator* allocator);

}  // namespace headroom
