// The caching allocator over real device memory on cuda:0. The policy itself (rounding, pools,
// splitting, the report) is tested on the host in tests/engine/caching_allocator_test.cpp;
// these check what only a GPU can show: cudaMalloc calls saved, 2 MiB segments, a real
// cudaMalloc failure, events on CUDA streams, and memory going back to the device.
//
// Every test skips without a GPU. The allocator is the process-wide one, so tests compare
// counters before and after rather than assume a fresh allocator.
#include <cuda_runtime_api.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <thread>

#include "engine/caching_allocator.h"
#include "kernels/cuda/cuda_memory.h"
#include "test_util.h"

namespace headroom {
namespace {

constexpr size_t MiB = size_t{1} << 20, GiB = size_t{1} << 30;

#define SKIP_WITHOUT_GPU() \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cuda_device_count() == 0): needs a GPU"

const Stream kStream0{Device::cuda(0), 0};

Allocation get(size_t n, Stream s = kStream0) {
  return caching_allocator(Device::cuda(0)).allocate(n, s, MemoryCategory::temporary);
}

// Sets cuda:0's limit for the scope (the process may have one from HEADROOM_MEMORY_LIMIT).
class LimitScope {
 public:
  explicit LimitScope(size_t bytes) : prev_(caching_allocator(Device::cuda(0)).memory_limit()) {
    caching_allocator(Device::cuda(0)).set_memory_limit(bytes);
  }
  ~LimitScope() { caching_allocator(Device::cuda(0)).set_memory_limit(prev_); }

 private:
  size_t prev_;
};

size_t device_free_bytes() {
  size_t free_bytes = 0, total_bytes = 0;
  CudaDeviceGuard guard(0);
  HR_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return free_bytes;
}

std::string state_of(const void* ptr) {
  for (const SegmentInfo& seg : caching_allocator(Device::cuda(0)).snapshot())
    for (const BlockInfo& b : seg.blocks)
      if (b.address == reinterpret_cast<uint64_t>(ptr)) return b.state;
  return "not found";
}

TEST(CudaMemory, BlocksAreDeviceMemoryAndReusedWithoutASecondCudaMalloc) {
  SKIP_WITHOUT_GPU();
  CachingAllocator& gpu = caching_allocator(Device::cuda(0));
  gpu.empty_cache();
  const MemoryStats before = gpu.stats();
  Allocation a = get(MiB);
  cudaPointerAttributes attr{};
  HR_CUDA_CHECK(cudaPointerGetAttributes(&attr, a.ptr));
  EXPECT_EQ(attr.type, cudaMemoryTypeDevice);
  EXPECT_EQ(attr.device, 0);
  HR_CUDA_CHECK(cudaMemset(a.ptr, 0x5a, MiB));  // the whole block is writable
  HR_CUDA_CHECK(cudaDeviceSynchronize());
  gpu.deallocate(a);
  Allocation b = get(MiB - 100);  // rounds to the same 1 MiB block
  EXPECT_EQ(b.ptr, a.ptr);
  const MemoryStats after = gpu.stats();
  EXPECT_EQ(after.num_device_alloc - before.num_device_alloc, 1) << "the second request called cudaMalloc";
  EXPECT_EQ(after.num_allocs - before.num_allocs, 2);
  EXPECT_EQ(after.num_cache_hits - before.num_cache_hits, 1);
  gpu.deallocate(b);
}

TEST(CudaMemory, TensorStorageOnCuda0ComesFromItsAllocator) {
  SKIP_WITHOUT_GPU();
  CachingAllocator& gpu = caching_allocator(Device::cuda(0));
  const int64_t before = gpu.stats().allocated_bytes.current;
  {
    Tensor t = Tensor::empty({1024, 1024}, Device::cuda(0));  // f32: 4 MiB
    EXPECT_EQ(gpu.stats().allocated_bytes.current - before, static_cast<int64_t>(4 * MiB));
    cudaPointerAttributes attr{};
    HR_CUDA_CHECK(cudaPointerGetAttributes(&attr, t.raw_data()));
    EXPECT_EQ(attr.type, cudaMemoryTypeDevice);
  }
  EXPECT_EQ(gpu.stats().allocated_bytes.current, before);
}

TEST(CudaMemory, LargeSegmentsAreRoundedTo2MiB) {
  SKIP_WITHOUT_GPU();
  CachingAllocator& gpu = caching_allocator(Device::cuda(0));
  gpu.empty_cache();
  const int64_t reserved_before = gpu.stats().reserved_bytes.current;
  Allocation a = get(3 * MiB + 1);  // 3 MiB + 512 after rounding; cudaMalloc gives 2 MiB pages
  EXPECT_EQ(gpu.stats().reserved_bytes.current - reserved_before, static_cast<int64_t>(4 * MiB));
  bool found = false;
  for (const SegmentInfo& seg : gpu.snapshot())
    if (seg.address == reinterpret_cast<uint64_t>(a.ptr)) {
      found = true;
      EXPECT_EQ(seg.size, static_cast<int64_t>(4 * MiB));
      EXPECT_FALSE(seg.small_pool);
    }
  EXPECT_TRUE(found) << "no segment starts at the block";
  gpu.deallocate(a);
}

TEST(CudaMemory, TheLimitGivesOutOfMemoryErrorNamingTheDevice) {
  SKIP_WITHOUT_GPU();
  CachingAllocator& gpu = caching_allocator(Device::cuda(0));
  gpu.empty_cache();
  LimitScope limit(64 * MiB);
  const int64_t ooms = gpu.stats().num_ooms;
  EXPECT_THROW_WITH(get(100 * MiB), OutOfMemoryError, "out of memory on cuda:0: tried to allocate 100.00 MiB");
  EXPECT_THROW_WITH(get(100 * MiB), OutOfMemoryError, "limit: 64.00 MiB");
  EXPECT_EQ(gpu.stats().num_ooms - ooms, 2);
  Allocation a = get(32 * MiB);  // under the limit: still fine
  EXPECT_NE(a.ptr, nullptr);
  gpu.deallocate(a);
}

TEST(CudaMemory, ARealCudaMallocFailureBecomesOutOfMemoryErrorAndTheAllocatorGoesOn) {
  SKIP_WITHOUT_GPU();
  CachingAllocator& gpu = caching_allocator(Device::cuda(0));
  LimitScope no_limit(0);
  size_t free_bytes = 0, total_bytes = 0;
  HR_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const size_t too_much = total_bytes + GiB;
  const MemoryStats before = gpu.stats();
  std::optional<OutOfMemoryError> error;
  try {
    get(too_much);
  } catch (const OutOfMemoryError& e) {
    error = e;
  }
  ASSERT_TRUE(error.has_value()) << "asking for " << format_bytes(static_cast<int64_t>(too_much)) << " did not throw";
  EXPECT_EQ(error->requested_bytes(), too_much);
  const std::string report = error->what();
  for (const char* part : {"out of memory on cuda:0", "none set; the device itself is full", "device capacity"})
    EXPECT_NE(report.find(part), std::string::npos) << "report lacks \"" << part << "\":\n" << report;
  const MemoryStats after = gpu.stats();
  EXPECT_EQ(after.num_ooms - before.num_ooms, 1);
  EXPECT_EQ(after.num_alloc_retries - before.num_alloc_retries, 1);          // freed the cache and tried again
  EXPECT_EQ(after.allocated_bytes.current, before.allocated_bytes.current);  // the failed request holds nothing
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "the failed cudaMalloc was left as the thread's last error";
  Allocation a = get(8 * MiB);
  HR_CUDA_CHECK(cudaMemset(a.ptr, 0, 8 * MiB));
  HR_CUDA_CHECK(cudaDeviceSynchronize());
  gpu.deallocate(a);
}

// Note [stream reuse] on a real stream: stream 1 is held by a host function that waits for the
// test, so an event recorded on it cannot complete until the test lets it. Nothing here may wait
// for the device while stream 1 is held (cudaFree, cudaDeviceSynchronize), so the blocks the
// test needs are obtained before the hold starts.
void CUDART_CB wait_until_released(void* flag) {
  auto* released = static_cast<std::atomic<bool>*>(flag);
  while (!released->load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

class StreamHold {
 public:
  explicit StreamHold(cudaStream_t s) : stream_(s) {
    HR_CUDA_CHECK(cudaLaunchHostFunc(s, wait_until_released, &released_));
  }
  void release() {
    released_ = true;
    HR_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  ~StreamHold() {
    released_ = true;  // a failed assertion must not leave the stream (and the process) hanging
    (void)cudaStreamSynchronize(stream_);
  }

 private:
  cudaStream_t stream_;
  std::atomic<bool> released_{false};
};

TEST(CudaMemory, RecordStreamDelaysReuseUntilTheOtherStreamsEventCompletes) {
  SKIP_WITHOUT_GPU();
  CachingAllocator& gpu = caching_allocator(Device::cuda(0));
  gpu.empty_cache();
  const Stream side{Device::cuda(0), 1};
  // 1.5 MiB: a large-pool block alone in its 2 MiB segment (the 0.5 MiB rest is not split off).
  const size_t n = 3 * MiB / 2;
  Allocation a = get(n), b = get(n);
  gpu.deallocate(b);  // cached, free: the only block a request of n can take while a waits
  const int64_t device_allocs = gpu.stats().num_device_alloc;

  gpu.record_stream(a, side);
  StreamHold hold(cuda_stream(side));
  gpu.deallocate(a);  // records an event on stream 1, behind the held host function
  EXPECT_EQ(state_of(a.ptr), "pending_free");
  Allocation c = get(n);  // checks the event (not done) and takes b's block
  EXPECT_EQ(c.ptr, b.ptr);
  EXPECT_EQ(state_of(a.ptr), "pending_free") << "a was freed for reuse while stream 1 still held it";

  hold.release();
  Allocation d = get(n);  // the event has completed: a's block is free again and reused
  EXPECT_EQ(d.ptr, a.ptr);
  EXPECT_EQ(gpu.stats().num_device_alloc, device_allocs) << "a new cudaMalloc instead of reuse";
  gpu.deallocate(c);
  gpu.deallocate(d);
}

TEST(CudaMemory, EmptyCacheGivesMemoryBackToTheDevice) {
  SKIP_WITHOUT_GPU();
  CachingAllocator& gpu = caching_allocator(Device::cuda(0));
  gpu.empty_cache();
  Allocation a = get(GiB);
  gpu.deallocate(a);
  const MemoryStats cached = gpu.stats();
  EXPECT_GE(cached.reserved_bytes.current, static_cast<int64_t>(GiB)) << "the freed gigabyte is no longer cached";
  const size_t free_before = device_free_bytes();
  gpu.empty_cache();
  const size_t free_after = device_free_bytes();
  const MemoryStats emptied = gpu.stats();
  EXPECT_EQ(emptied.reserved_bytes.current, 0);
  EXPECT_GE(emptied.num_device_free - cached.num_device_free, 1);
  // Other processes on the GPU could take some of it in between; most must be seen.
  EXPECT_GE(free_after, free_before + GiB / 16 * 15)
      << "cudaMemGetInfo free: " << format_bytes(static_cast<int64_t>(free_before)) << " -> "
      << format_bytes(static_cast<int64_t>(free_after));
}

// HEADROOM_MEMORY_LIMIT is read when the library loads. ctest runs this test a second and third
// time with the variable set (cuda_memory_limit_env, cuda_memory_limit_env_bad); in the plain
// run it is unset and the test skips.
TEST(CudaMemory, HeadroomMemoryLimitAppliesToEveryGpu) {
  SKIP_WITHOUT_GPU();
  const char* env = std::getenv("HEADROOM_MEMORY_LIMIT");
  if (!env || !*env) GTEST_SKIP() << "HEADROOM_MEMORY_LIMIT is not set (ctest sets it for cuda_memory_limit_env)";
  size_t expected = 0;
  try {
    expected = parse_memory_size(env, "HEADROOM_MEMORY_LIMIT");
  } catch (const ValueError&) {
    // Unreadable: the library loaded anyway, and the first allocation on each GPU says why.
    for (int i = 0; i < cuda_device_count(); ++i)
      EXPECT_THROW_WITH(
          caching_allocator(Device::cuda(i)).allocate(MiB, Stream{Device::cuda(i), 0}, MemoryCategory::temporary),
          ValueError, "HEADROOM_MEMORY_LIMIT");
    return;
  }
  for (int i = 0; i < cuda_device_count(); ++i) EXPECT_EQ(caching_allocator(Device::cuda(i)).memory_limit(), expected);
  EXPECT_THROW_WITH(get(expected + MiB), OutOfMemoryError, "(set_memory_limit or HEADROOM_MEMORY_LIMIT)");
}

}  // namespace
}  // namespace headroom
