// The cuDNN switches, the dtype mapping and the search workspace budget (cudnn_util.h). The
// convolution algorithm cache itself lives with its only user, conv.cpp.
#include "kernels/cuda/cudnn_util.h"

#include <algorithm>
#include <atomic>

#include "engine/caching_allocator.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_memory.h"

namespace headroom::cuda {

namespace {
std::atomic<bool> g_benchmark{true};
std::atomic<bool> g_batch_norm{true};
}  // namespace

bool set_cudnn_benchmark(bool on) { return g_benchmark.exchange(on); }
bool cudnn_benchmark() { return g_benchmark.load(); }
bool set_cudnn_batch_norm(bool on) { return g_batch_norm.exchange(on); }
bool cudnn_batch_norm() { return g_batch_norm.load(); }

cudnnDataType_t cudnn_dtype(DType dtype, const char* op) {
  switch (dtype) {
    case DType::f32: return CUDNN_DATA_FLOAT;
    case DType::f64: return CUDNN_DATA_DOUBLE;
    case DType::f16: return CUDNN_DATA_HALF;
    case DType::bf16: return CUDNN_DATA_BFLOAT16;
    default: break;
  }
  throw DTypeError(str_cat(op, ": expected a floating dtype (f32, f64, f16, bf16) on cuda, got ", dtype_name(dtype)));
}

size_t search_workspace_budget(Device device) {
  constexpr size_t kMaxSearchWorkspace = size_t{256} << 20;
  CachingAllocator& allocator = caching_allocator(device);
  const MemoryStats stats = allocator.stats();
  const auto reserved = static_cast<size_t>(std::max<int64_t>(stats.reserved_bytes.current, 0));
  const auto allocated = static_cast<size_t>(std::max<int64_t>(stats.allocated_bytes.current, 0));
  size_t fresh = 0;  // what new segments can still take
  if (const size_t limit = allocator.memory_limit()) {
    fresh = limit > reserved ? limit - reserved : 0;
  } else {
    CudaDeviceGuard guard(device.index);
    size_t free_bytes = 0, total_bytes = 0;
    HR_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    fresh = free_bytes;
  }
  const size_t cached_free = reserved > allocated ? reserved - allocated : 0;
  const size_t budget = std::min(kMaxSearchWorkspace, (fresh + cached_free) / 2);
  return budget & ~((size_t{1} << 20) - 1);  // whole MiB
}

}  // namespace headroom::cuda
