// Meta execution: run a step with the kernels switched off and the allocator still deciding
// every block, to know its memory before running it.
//
//   {
//     MetaScope meta;
//     nn::GPT gpt(cfg);                       // parameters: shapes and blocks, no data
//     optim::AdamW opt(gpt.parameters(), 3e-4);
//     Tensor loss = gpt.loss(idx, targets);   // idx, targets made inside the scope too
//     loss.backward();
//     opt.step();
//     MemoryStats s = meta.allocator(Device::cpu()).stats();   // the step's peaks, by category
//   }
//
// Note [meta execution]: inside a MetaScope (one per thread at a time), every tensor made on a
// device gets its memory from a meta allocator standing in for that device: the caching
// allocator itself, unchanged (rounding, small and large pools, splitting, caching, limit,
// categories, out-of-memory report), over a raw backend that hands out address ranges that are
// never touched, with the device's granularity (512 B on the cpu, 2 MiB on cuda). Every op of
// the table runs its checks (Note [op table]) and then skips its kernel -- except the kernels
// that take scratch memory from the allocator (a backend's meta_kernels set: the CPU's matmul,
// conv2d and attention backward), which run up to their allocations and stop before touching
// data, so that their workspace is counted as the real run counts it. Reads of data on the host
// return zeros without reading (item(), to_vector); writes from the host (from_vector) and
// transfers are skipped. A meta tensor is marked as such (Tensor::is_meta); its data pointer
// outside a MetaScope is a DeviceError, never a read of memory that does not exist. Whatever
// depends on values (a loss compared with a threshold, a GradScaler's overflow flag) sees zeros:
// prediction is exact for what the shapes decide, and only for that.
//
// The meta allocators are made per scope and never destroyed, so that a meta tensor that
// outlives its scope can still be freed; they hold no memory.
#pragma once

#include "engine/caching_allocator.h"
#include "engine/device.h"
#include "engine/tensor.h"

#include <string>

namespace headroom {

class MetaScope {
 public:
  struct State;
  MetaScope();
  ~MetaScope();
  MetaScope(const MetaScope&) = delete;
  MetaScope& operator=(const MetaScope&) = delete;

  // The allocator standing in for `device` in this scope (made on first use): its stats are the
  // prediction; set_memory_limit on it asks whether the step fits a budget.
  CachingAllocator& allocator(Device device);
  // The pinned host pool's stand-in (Note [host pool] in engine/allocator.h): what offload puts
  // on the host in this scope.
  CachingAllocator& host_pool();

  // Note [meta in worker threads]: a runner that works on threads of its own -- pipeline stages,
  // tensor-parallel ranks, DataParallel's replicas -- takes the caller's scope (current(), null
  // when none is open) and each of its threads joins it for the work (Join), so the threads'
  // tensors are meta too and their blocks land in the scope's allocators, one per device.
  // Allocators are thread-safe; per device the order of allocations is the thread's own.
  static State* current();
  class Join {
   public:
    explicit Join(State* state);  // null: nothing to join
    ~Join();
    Join(const Join&) = delete;
    Join& operator=(const Join&) = delete;

   private:
    State* prev_;
  };

 private:
  State* state_;
};

// Whether a MetaScope is open on this thread.
bool meta_active();

namespace detail {
// The meta allocator for `device` when a MetaScope is open on this thread; nullptr otherwise.
Allocator* meta_allocator_for(Device device);
CachingAllocator* meta_host_pool();  // the scope's host pool, nullptr when none is open
// A tensor slot that lives as long as the open MetaScope, for what a backend allocates once and
// keeps (the cuBLAS workspace: kernels/cuda/cuda_libs.cpp); nullptr when none is open.
Tensor* meta_scope_slot(const std::string& key);
}  // namespace detail

}  // namespace headroom
