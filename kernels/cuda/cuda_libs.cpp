// cuBLAS and cuDNN status reporting, per-thread handles, the TF32 switch and workspaces
// (cuda_libs.h).
#include "kernels/cuda/cuda_libs.h"

#include "engine/meta.h"

#include <atomic>
#include <unordered_map>

#include "engine/memory.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_memory.h"

namespace headroom {

void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line) {
  throw CudaLibraryError(str_cat("cuBLAS error ", cublasGetStatusName(status), " (", cublasGetStatusString(status),
                                 ") in ", call, " at ", file, ":", line, " on ", current_cuda_device_name()));
}

void throw_cudnn_error(cudnnStatus_t status, const char* call, const char* file, int line) {
  char detail[512] = {0};
  cudnnGetLastErrorString(detail, sizeof(detail));
  throw CudaLibraryError(str_cat("cuDNN error ", cudnnGetErrorString(status), " in ", call, " at ", file, ":", line,
                                 " on ", current_cuda_device_name(),
                                 detail[0] ? str_cat(": ", detail) : std::string()));
}

namespace cuda {
namespace {

std::atomic<bool> g_allow_tf32{false};

// One per (thread, device). Never destroyed: destroying handles while the process exits races
// the CUDA runtime's own teardown, and a thread's handles are few.
struct ThreadHandles {
  cublasHandle_t cublas = nullptr;
  cudnnHandle_t cudnn = nullptr;
  // cuBLAS forgets its workspace when its stream changes, so one workspace per stream.
  std::unordered_map<cudaStream_t, Tensor*> cublas_workspaces;
};

ThreadHandles& handles_for(Device device) {
  HR_CHECK(device.is_cuda(), DeviceError, "cuBLAS/cuDNN handle asked for ", device.str());
  thread_local std::unordered_map<int, ThreadHandles*> table;
  auto& slot = table[device.index];
  if (slot == nullptr) slot = new ThreadHandles();
  return *slot;
}

size_t cublas_workspace_bytes(Device device) {
  // cuBLAS's own guidance: 32 MiB on Hopper, 4 MiB before it. Under meta execution without this
  // GPU here, the GPU planned for is a Hopper (docs/planning.md).
  int major = 9;
  int count = 0;
  if (!meta_active() || (cudaGetDeviceCount(&count) == cudaSuccess && device.index < count))
    HR_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device.index));
  return major >= 9 ? (size_t{32} << 20) : (size_t{4} << 20);
}

}  // namespace

cublasHandle_t cublas_handle(Device device, cudaStream_t stream) {
  CudaDeviceGuard guard(device.index);
  ThreadHandles& h = handles_for(device);
  if (h.cublas == nullptr) HR_CUBLAS_CHECK(cublasCreate(&h.cublas));
  HR_CUBLAS_CHECK(cublasSetStream(h.cublas, stream));
  Tensor*& ws = h.cublas_workspaces[stream];
  if (ws == nullptr) ws = new Tensor(workspace(device, cublas_workspace_bytes(device)));
  HR_CUBLAS_CHECK(cublasSetWorkspace(h.cublas, ws->raw_data(), ws->nbytes()));
  return h.cublas;
}

cudnnHandle_t cudnn_handle(Device device, cudaStream_t stream) {
  CudaDeviceGuard guard(device.index);
  ThreadHandles& h = handles_for(device);
  if (h.cudnn == nullptr) HR_CUDNN_CHECK(cudnnCreate(&h.cudnn));
  HR_CUDNN_CHECK(cudnnSetStream(h.cudnn, stream));
  return h.cudnn;
}

void meta_cublas_workspace(Device device) {
  // Note [meta execution]: the workspace cublas_handle gives a thread's first gemm on a stream,
  // once per scope (one stream: the planner's steps run on the current one).
  Tensor* slot = detail::meta_scope_slot(str_cat("cublas workspace ", device.str()));
  if (slot && !slot->defined()) *slot = workspace(device, cublas_workspace_bytes(device));
}

bool set_allow_tf32(bool allow) { return g_allow_tf32.exchange(allow); }
bool allow_tf32() { return g_allow_tf32.load(); }

Tensor workspace(Device device, size_t nbytes) {
  CategoryScope scope(MemoryCategory::workspace);
  return Tensor::empty({static_cast<int64_t>(nbytes)}, TensorOptions().dtype(DType::u8).device(device));
}

}  // namespace cuda
}  // namespace headroom
