// The allocator interface through which every byte of tensor storage is obtained.
//
// One Allocator per device. Storage asks it for bytes and hands them back when the last tensor
// viewing them is gone. Every device's allocator is a CachingAllocator
// (engine/caching_allocator.h); the interface keeps Storage independent of its details.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "engine/device.h"
#include "engine/memory.h"

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
  // Retags a live allocation (e.g. a tensor saved for backward becomes an activation).
  virtual void set_category(const Allocation& /*a*/, MemoryCategory /*category*/) {}
  virtual MemoryCategory category_of(const Allocation& /*a*/) const { return MemoryCategory::temporary; }
  // Note [allocation sites]: names the op whose output the allocation holds (a string that
  // lives for the program, an autograd node's name), for the leak check. Kept only while an
  // allocator records sites.
  virtual void set_site(const Allocation& /*a*/, const char* /*site*/) {}
  // The allocation is also used by work queued on `stream` (Note [stream reuse] in
  // caching_allocator.h): it is not handed out again until that work has finished.
  virtual void record_stream(const Allocation& /*a*/, Stream /*stream*/) {}
  // Hands out address ranges without memory (Note [meta execution] in engine/meta.h).
  virtual bool is_meta() const { return false; }
};

// The allocator for a device; throws DeviceError when that device has none registered, saying
// why (Note [missing devices]).
Allocator& allocator_for(Device device);
void set_allocator(Device device, Allocator* allocator);

// Note [missing devices]: a program asked for cuda:0 and cannot have it -- the message must
// say why in words a user can act on. The CUDA side, when the library loads, reports how many
// GPUs the CUDA runtime sees and, when it sees none, what the runtime said
// (report_visible_devices). A build without the CUDA side reports nothing, and then the reason
// is that the build has no CUDA support. cpu devices always exist.
void report_visible_devices(DeviceType type, int count, std::string why_none);
// The build has the backend of `type` but it could not be loaded (Note [loadable backends]).
void report_backend_unloadable(DeviceType type, std::string why);
// How many devices of a kind this process can use: the cpu devices (Note [cpu devices]: 8, or
// HEADROOM_CPU_DEVICES); the GPUs the CUDA runtime sees (0 without one, without the runtime, or
// in a build without CUDA). Loads the CUDA backend.
int device_count(DeviceType type);
// Why `device` cannot be used, e.g. "no GPU is visible (cudaGetDeviceCount failed with
// cudaErrorNoDevice: ...)"; "" for a device that exists.
std::string device_unavailable_reason(Device device);

// Applies HEADROOM_MEMORY_LIMIT and HEADROOM_FAIL_ALLOC (Note [fault injection] in
// caching_allocator.h) to the newly made allocator of `device`, when they are set (every
// device's registration calls it); throws ValueError naming the variable when a value cannot be
// read, and then changes nothing. HEADROOM_MEMORY_LIMIT is a size for every device ("256MiB",
// parse_memory_size), or a list of them per device with an optional default first:
// "cpu:0=256MiB,cpu:1=128MiB" or "1GiB,cuda:1=40GiB".
class CachingAllocator;
void apply_env_settings(CachingAllocator& allocator, Device device);
// HEADROOM_MEMORY_LIMIT's limit for `device` (0: none), read as above.
size_t memory_limit_from_env(const char* text, Device device);

// Note [allocation sites]: whether some allocator records allocation sites now (a LeakCheck is
// open): autograd tags each op's output with the op's name only then, so the check costs
// nothing when off.
bool allocation_sites_wanted();
void set_allocation_sites_wanted(bool on);  // counted: every on is matched by an off

// Note [host pool]: the pinned host pool is where offloaded tensors live (activations, optimizer
// state, streamed parameters: autograd/offload.h, optim/offload.h, nn/offload.h) and where
// Tensor::empty_pinned takes its memory. It is a CachingAllocator like a device's -- its own
// statistics by category, limit (set_memory_limit, or HEADROOM_HOST_MEMORY_LIMIT=SIZE), fault
// injection, trace, snapshot and out-of-memory report (whose remedies are about offloading
// less) -- over page-locked memory (cudaHostAlloc) when a GPU is present, and over ordinary
// aligned host memory otherwise. So on a machine without a GPU the bytes offload moves leave a
// device's allocator and arrive here, counted on both sides, and a limit on the pool behaves as
// the host's page-locked memory would. Its tensors are cpu tensors (device cpu:0); is_pinned()
// says a tensor's storage is in the pool. Each block is reused only after the GPU copies queued
// on it finished (record_stream with GPU streams, Note [stream reuse]).
// The CUDA side, when the library loads with a GPU present, registers the page-locked backend
// (set_pinned_backend_factory); the pool is made at its first use, after the CUDA side loaded.
CachingAllocator& host_pool();
// The pool if it has been made, else nullptr (for reports that must not make it).
CachingAllocator* host_pool_if_made();
class DeviceMemoryBackend;
void set_pinned_backend_factory(std::unique_ptr<DeviceMemoryBackend> (*factory)());
// The host pool as an Allocator (Tensor::empty_pinned's).
Allocator* pinned_allocator();

}  // namespace headroom
