// The CUDA memory backend, the stream registry and the registration of every GPU's caching
// allocator. See cuda_memory.h for why the backend is this thin.
//
// Registration happens while the library loads, like the cpu backend's (kernels/cpu/copy.cpp):
// Storage finds a device's allocator through allocator_for, which knows only what was
// registered. It must survive a machine without a driver or a GPU -- cudaGetDeviceCount
// failing means zero devices and nothing is registered; what the runtime said is reported
// (report_visible_devices), so allocator_for(cuda:0) says that no GPU is visible and why.
#include "kernels/cuda/cuda_memory.h"

#include <map>
#include <memory>
#include <utility>

#include "engine/error.h"

namespace headroom {

namespace {
struct DeviceCount {
  int count = 0;
  cudaError_t error = cudaSuccess;  // what cudaGetDeviceCount said when it failed
};
const DeviceCount& device_count_query() {
  static const DeviceCount result = [] {
    DeviceCount c;
    c.error = cudaGetDeviceCount(&c.count);
    if (c.error != cudaSuccess) {
      (void)cudaGetLastError();  // no driver (cudaErrorInsufficientDriver) or no GPU (cudaErrorNoDevice)
      c.count = 0;
    }
    return c;
  }();
  return result;
}
}  // namespace

int cuda_device_count() { return device_count_query().count; }

// ---- streams (Note [cuda streams]) ----

namespace {
struct StreamRegistry {
  std::mutex mu;
  std::map<std::pair<int, int64_t>, cudaStream_t> streams;
};
StreamRegistry& stream_registry() {
  static auto* r = new StreamRegistry();  // never destroyed: its streams live until the process ends
  return *r;
}
}  // namespace

cudaStream_t cuda_stream(Stream stream) {
  HR_CHECK(stream.device.is_cuda(), DeviceError, "cuda_stream: stream ", stream.id, " is on ", stream.device.str(),
           ", not on a cuda device");
  HR_CHECK(stream.device.index >= 0 && stream.device.index < cuda_device_count(), DeviceError,
           "cuda_stream: ", stream.device.str(), " does not exist (", cuda_device_count(), " CUDA devices visible)");
  HR_CHECK(stream.id >= 0, ValueError, "cuda_stream: stream ids are >= 0, got ", stream.id, " on ",
           stream.device.str());
  if (stream.id == 0) return cudaStreamLegacy;
  StreamRegistry& r = stream_registry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto key = std::make_pair(stream.device.index, stream.id);
  auto it = r.streams.find(key);
  if (it != r.streams.end()) return it->second;
  CudaDeviceGuard guard(stream.device.index);
  cudaStream_t s = nullptr;
  HR_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  r.streams.emplace(key, s);
  return s;
}

// ---- the backend ----

CudaMemoryBackend::CudaMemoryBackend(int device_index) : index_(device_index) {}

CudaMemoryBackend::~CudaMemoryBackend() {
  // Only private backends get here (the registered ones are never destroyed). Errors are
  // ignored: a destructor cannot throw, and at exit the runtime may already be unloading.
  std::lock_guard<std::mutex> lock(events_mu_);
  for (cudaEvent_t e : free_events_) (void)cudaEventDestroy(e);
  (void)cudaGetLastError();
}

void CudaMemoryBackend::fail_allocations_with(std::string message) { config_error_ = std::move(message); }

void* CudaMemoryBackend::raw_alloc(size_t nbytes) {
  if (!config_error_.empty()) throw ValueError(config_error_);
  CudaDeviceGuard guard(index_);
  void* ptr = nullptr;
  const cudaError_t status = cudaMalloc(&ptr, nbytes);
  if (status == cudaErrorMemoryAllocation) {
    // The device is full: not an error here. The allocator frees its cache and retries, then
    // throws OutOfMemoryError with its report. Clear the thread's last error so the failed
    // cudaMalloc is not reported again by an unrelated check later.
    (void)cudaGetLastError();
    return nullptr;
  }
  HR_CUDA_CHECK(status);
  return ptr;
}

void CudaMemoryBackend::raw_free(void* ptr, size_t) {
  CudaDeviceGuard guard(index_);
  const cudaError_t status = cudaFree(ptr);
  // At process exit the runtime may unload before the last segment is returned; the memory goes
  // with the context then.
  if (status == cudaErrorCudartUnloading) return;
  HR_CUDA_CHECK(status);
}

size_t CudaMemoryBackend::capacity() const {
  // Asked while an out-of-memory report is being written, so it must not throw.
  std::call_once(capacity_once_, [this] {
    int prev = 0;
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaGetDevice(&prev) == cudaSuccess && cudaSetDevice(index_) == cudaSuccess &&
        cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess)
      capacity_ = total_bytes;
    (void)cudaSetDevice(prev);
    (void)cudaGetLastError();
  });
  return capacity_;
}

uint64_t CudaMemoryBackend::record_event(Stream stream) {
  const cudaStream_t s = cuda_stream(stream);
  HR_CHECK(stream.device == device(), DeviceError, "CudaMemoryBackend of ", device().str(),
           ": cannot record an event on stream ", stream.id, " of ", stream.device.str());
  CudaDeviceGuard guard(index_);
  cudaEvent_t event = nullptr;
  {
    std::lock_guard<std::mutex> lock(events_mu_);
    if (!free_events_.empty()) {
      event = free_events_.back();
      free_events_.pop_back();
    }
  }
  if (!event) HR_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  try {
    HR_CUDA_CHECK(cudaEventRecord(event, s));
  } catch (...) {
    release_event(reinterpret_cast<uint64_t>(event));
    throw;
  }
  return reinterpret_cast<uint64_t>(event);
}

bool CudaMemoryBackend::event_done(uint64_t event) {
  const cudaError_t status = cudaEventQuery(reinterpret_cast<cudaEvent_t>(event));
  if (status == cudaSuccess) return true;
  if (status == cudaErrorNotReady) {
    (void)cudaGetLastError();  // "not yet" is an answer, not an error to report later
    return false;
  }
  HR_CUDA_CHECK(status);
  return false;
}

void CudaMemoryBackend::release_event(uint64_t event) {
  std::lock_guard<std::mutex> lock(events_mu_);
  free_events_.push_back(reinterpret_cast<cudaEvent_t>(event));
}

void CudaMemoryBackend::synchronize() {
  CudaDeviceGuard guard(index_);
  HR_CUDA_CHECK(cudaDeviceSynchronize());
}

// ---- registration ----

namespace {
const bool g_registered = [] {
  // Note [missing devices] in engine/allocator.h: what allocator_for(cuda:N) says without one.
  const DeviceCount& c = device_count_query();
  report_visible_devices(
      DeviceType::cuda, c.count,
      c.error != cudaSuccess
          ? str_cat("cudaGetDeviceCount failed with ", cudaGetErrorName(c.error), ": ", cudaGetErrorString(c.error))
          : "cudaGetDeviceCount found 0 devices; is CUDA_VISIBLE_DEVICES empty or wrong?");
  for (int i = 0; i < cuda_device_count(); ++i) {
    auto backend = std::make_unique<CudaMemoryBackend>(i);
    CudaMemoryBackend* raw = backend.get();
    // Never destroyed, like the cpu allocator: tensors in static storage may be freed at exit.
    auto* allocator = new CachingAllocator(std::move(backend));
    try {
      apply_env_settings(*allocator, Device::cuda(i));
    } catch (const Error& e) {
      raw->fail_allocations_with(e.what());
    }
    set_allocator(Device::cuda(i), allocator);
  }
  return true;
}();
}  // namespace

}  // namespace headroom
