// What a cached allocation costs, against the raw allocators underneath.
//
// Each benchmark times one allocate + deallocate pair of the same size, over and over, touching
// none of the memory (so page faults and cache misses are not what is measured; the pointer is
// passed through DoNotOptimize so the pair cannot be elided). Sizes: 512 B (the allocator's
// rounding unit, small pool), 1 MiB (the largest small-pool request) and 64 MiB (a large block
// with a segment of its own).
//   caching_pair      CachingAllocator::allocate(n, stream, category) + deallocate: the block
//                     comes from the cache every time after the first (checked before timing)
//   caching_pair_via_interface  the same through the Allocator interface, which looks up the
//                     thread's current stream and category: what Storage pays per tensor
//   malloc_free       std::malloc + std::free (glibc: arena below the mmap threshold, mmap above)
//   aligned_alloc_free  std::aligned_alloc(512) + std::free: what HostMemoryBackend calls
// The design target (DESIGN.md) is a cached pair well under a microsecond; raw cudaMalloc +
// cudaFree of 1 MiB costs about 90 us on an H100.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <memory>

#include "engine/caching_allocator.h"
#ifdef HEADROOM_WITH_CUDA
#include <cstdio>

#include "kernels/cuda/cuda_memory.h"
#endif

namespace headroom {
namespace {

const size_t kSizes[] = {512, size_t{1} << 20, size_t{64} << 20};

void size_args(benchmark::internal::Benchmark* b) {
  b->ArgName("bytes");
  for (size_t n : kSizes) b->Arg(static_cast<int64_t>(n));
}

// A private allocator over host memory with one cached block of `n` bytes: the first pair
// obtains the segment, every later one must be a cache hit. Returns an error text or "".
std::string warm_up(CachingAllocator& alloc, size_t n) {
  Stream stream{Device::cpu(), 0};
  alloc.deallocate(alloc.allocate(n, stream, MemoryCategory::temporary));
  const MemoryStats s = alloc.stats();
  if (s.num_device_alloc != 1) return "warm-up obtained more than one segment";
  return "";
}

void check_all_hits(benchmark::State& state, const CachingAllocator& alloc) {
  const MemoryStats s = alloc.stats();
  if (s.num_device_alloc != 1 || s.num_cache_hits != s.num_allocs - 1)
    state.SkipWithError("a timed allocation was not served from the cache");
  state.counters["cache_hit_rate"] =
      static_cast<double>(s.num_cache_hits) / static_cast<double>(std::max<int64_t>(1, s.num_allocs - 1));
}

void caching_pair(benchmark::State& state) {
  const auto n = static_cast<size_t>(state.range(0));
  CachingAllocator alloc(std::make_unique<HostMemoryBackend>());
  if (auto err = warm_up(alloc, n); !err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  const Stream stream{Device::cpu(), 0};
  for (auto _ : state) {
    Allocation a = alloc.allocate(n, stream, MemoryCategory::activation);
    benchmark::DoNotOptimize(a.ptr);
    alloc.deallocate(a);
  }
  check_all_hits(state, alloc);
}
BENCHMARK(caching_pair)->Apply(size_args);

void caching_pair_via_interface(benchmark::State& state) {
  const auto n = static_cast<size_t>(state.range(0));
  CachingAllocator alloc(std::make_unique<HostMemoryBackend>());
  if (auto err = warm_up(alloc, n); !err.empty()) {
    state.SkipWithError(err.c_str());
    return;
  }
  Allocator& base = alloc;
  for (auto _ : state) {
    Allocation a = base.allocate(n);
    benchmark::DoNotOptimize(a.ptr);
    base.deallocate(a);
  }
  check_all_hits(state, alloc);
}
BENCHMARK(caching_pair_via_interface)->Apply(size_args);

void malloc_free(benchmark::State& state) {
  const auto n = static_cast<size_t>(state.range(0));
  for (auto _ : state) {
    void* p = std::malloc(n);
    benchmark::DoNotOptimize(p);
    std::free(p);
  }
}
BENCHMARK(malloc_free)->Apply(size_args);

void aligned_alloc_free(benchmark::State& state) {
  const auto n = static_cast<size_t>(state.range(0));  // every size is a multiple of 512
  for (auto _ : state) {
    void* p = std::aligned_alloc(512, n);
    benchmark::DoNotOptimize(p);
    std::free(p);
  }
}
BENCHMARK(aligned_alloc_free)->Apply(size_args);

// ---- CUDA: cudaMalloc + cudaFree -------------------------------------------------------------
// Beside the host rows above and at the same sizes, on cuda:0:
//   cuda_malloc_free    raw cudaMalloc + cudaFree (cudaFree synchronises the device; ~90 us at
//                       1 MiB on an H100)
//   cuda_caching_pair   a CachingAllocator over CudaMemoryBackend(0), the same loop as
//                       caching_pair: every timed pair is a cache hit, no CUDA call at all
// Built only when CUDA is enabled (bench/CMakeLists.txt), and registered only when a GPU is
// present, so this program still runs on the CPU machine (it says so on stderr).
#ifdef HEADROOM_WITH_CUDA

void cuda_malloc_free(benchmark::State& state) {
  const auto n = static_cast<size_t>(state.range(0));
  CudaDeviceGuard guard(0);
  HR_CUDA_CHECK(cudaFree(nullptr));  // make the context before timing
  for (auto _ : state) {
    void* p = nullptr;
    HR_CUDA_CHECK(cudaMalloc(&p, n));
    benchmark::DoNotOptimize(p);
    HR_CUDA_CHECK(cudaFree(p));
  }
}

void cuda_caching_pair(benchmark::State& state) {
  const auto n = static_cast<size_t>(state.range(0));
  CachingAllocator alloc(std::make_unique<CudaMemoryBackend>(0));
  const Stream stream{Device::cuda(0), 0};
  alloc.deallocate(alloc.allocate(n, stream, MemoryCategory::temporary));
  if (alloc.stats().num_device_alloc != 1) {
    state.SkipWithError("warm-up obtained more than one segment");
    return;
  }
  for (auto _ : state) {
    Allocation a = alloc.allocate(n, stream, MemoryCategory::activation);
    benchmark::DoNotOptimize(a.ptr);
    alloc.deallocate(a);
  }
  check_all_hits(state, alloc);
}

const bool g_cuda_registered = [] {
  if (cuda_device_count() == 0) {
    std::fprintf(stderr,
                 "allocator_bench: no CUDA device, so the cuda_malloc_free and cuda_caching_pair rows are left out\n");
    return false;
  }
  benchmark::RegisterBenchmark("cuda_malloc_free", cuda_malloc_free)->Apply(size_args);
  benchmark::RegisterBenchmark("cuda_caching_pair", cuda_caching_pair)->Apply(size_args);
  return true;
}();

#endif  // HEADROOM_WITH_CUDA
// ----------------------------------------------------------------------------------------------

}  // namespace
}  // namespace headroom

BENCHMARK_MAIN();
