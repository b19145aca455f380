// HR_CUDA_CHECK and the device count: these run on every machine. A CUDA runtime without a
// driver or a GPU still returns error codes, so the error path is tested here too.
#include <cuda_runtime_api.h>

#include <string>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_memory.h"
#include "test_util.h"

namespace headroom {
namespace {

TEST(CudaCheck, ABadCallThrowsNamingTheCallFileLineAndError) {
  int line = 0;
  std::string message;
  cudaError_t code = cudaSuccess;
  try {
    line = __LINE__ + 1;  // the next line's
    HR_CUDA_CHECK(cudaSetDevice(9999));
  } catch (const CudaError& e) {
    message = e.what();
    code = e.code();
  }
  ASSERT_FALSE(message.empty()) << "HR_CUDA_CHECK(cudaSetDevice(9999)) did not throw CudaError";
  EXPECT_NE(code, cudaSuccess);
  for (const std::string& part :
       {std::string("cudaSetDevice(9999)"), std::string("cuda_check_test.cpp:") + std::to_string(line),
        std::string(cudaGetErrorName(code)), std::string(cudaGetErrorString(code))})
    EXPECT_NE(message.find(part), std::string::npos) << "\"" << message << "\" lacks \"" << part << "\"";
  // The device part of the message says what is true on this machine.
  EXPECT_NE(message.find(cuda_available() ? "on cuda:" : "on no CUDA device"), std::string::npos) << message;
  // Reported once: the throw cleared the thread's last error. (Without a driver the runtime's
  // failed initialisation is returned by every call, cudaGetLastError included.)
  if (cuda_available()) {
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  }
}

TEST(CudaCheck, CudaErrorIsAHeadroomErrorAndTheCallTextKeepsItsCommas) {
  cudaDeviceProp prop{};
  EXPECT_THROW_WITH(HR_CUDA_CHECK(cudaGetDeviceProperties(&prop, -1)), Error, "cudaGetDeviceProperties(&prop, -1)");
}

TEST(CudaCheck, SuccessDoesNotThrow) {
  int version = 0;
  EXPECT_NO_THROW(HR_CUDA_CHECK(cudaRuntimeGetVersion(&version)));
  EXPECT_GE(version, 12000);  // built against CUDA 12 or later
}

// Registration: one caching allocator per visible GPU, none beyond. On a machine without a GPU
// that means none at all, and tensors on cuda:0 say so.
TEST(CudaRegistration, OneCachingAllocatorPerVisibleGpu) {
  const int n = cuda_device_count();
  int runtime_count = 0;
  if (cudaGetDeviceCount(&runtime_count) != cudaSuccess) {
    (void)cudaGetLastError();
    runtime_count = 0;
  }
  EXPECT_EQ(n, runtime_count);
  EXPECT_EQ(cuda_available(), n > 0);
  for (int i = 0; i < n; ++i) {
    CachingAllocator& a = caching_allocator(Device::cuda(i));
    EXPECT_EQ(a.device(), Device::cuda(i));
  }
  if (n > 0) {
    EXPECT_THROW_WITH(allocator_for(Device::cuda(n)), DeviceError,
                      Device::cuda(n).str() + " does not exist: the CUDA runtime sees " + std::to_string(n) + " GPU");
  } else {
    EXPECT_THROW_WITH(Tensor::empty({4}, Device::cuda(0)), DeviceError, "cuda:0");
  }
}

// The review's case: `--device cuda` in a CUDA build on a machine without a GPU said "no
// allocator for device cuda:0"; it must say that no GPU is visible, and what the runtime said.
TEST(CudaRegistration, WithoutAGpuTheMessageSaysNoGpuIsVisibleAndWhy) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is visible here";
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  (void)cudaGetLastError();
  const std::string why = status != cudaSuccess ? std::string(cudaGetErrorName(status)) : "found 0 devices";
  for (int index : {0, 2}) {
    const Device d = Device::cuda(index);
    EXPECT_THROW_WITH(allocator_for(d), DeviceError, d.str() + " is not available: no GPU is visible");
    EXPECT_THROW_WITH(allocator_for(d), DeviceError, why);
    EXPECT_THROW_WITH(Tensor::zeros({2}, d), DeviceError, "no GPU is visible");
    EXPECT_THROW_WITH(Tensor::ones({2}).to(d), DeviceError, "no GPU is visible");
  }
  EXPECT_NE(device_unavailable_reason(Device::cuda(0)).find("no GPU is visible"), std::string::npos);
}

TEST(CudaStreams, OnlyCudaStreamsOfExistingDevicesMap) {
  EXPECT_THROW_WITH(cuda_stream(Stream{Device::cpu(), 0}), DeviceError, "not on a cuda device");
  const int n = cuda_device_count();
  EXPECT_THROW_WITH(cuda_stream(Stream{Device::cuda(n), 1}), DeviceError, Device::cuda(n).str() + " does not exist");
  if (n > 0) {
    EXPECT_EQ(cuda_stream(Stream{Device::cuda(0), 0}), cudaStreamLegacy);
    EXPECT_THROW_WITH(cuda_stream(Stream{Device::cuda(0), -2}), ValueError, "got -2");
  }
}

}  // namespace
}  // namespace headroom
