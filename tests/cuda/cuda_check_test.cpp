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
    line = __LINE__; HR_CUDA_CHECK(cudaSetDevice(9999));
  } catch (const CudaError& e) {
    message = e.what();
    code = e.code();
  }
  ASSERT_FALSE(message.empty()) << "HR_CUDA_CHECK(cudaSetDevice(9999)) did not throw CudaError";
  EXPECT_NE(code, cudaSuccess);
  for (const std::string& part : {std::string("cudaSetDevice(9999)"), std::string("cuda_check_test.cpp:") + std::to_string(line),
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
  EXPECT_THROW_WITH(allocator_for(Device::cuda(n)), DeviceError, "no allocator for device " + Device::cuda(n).str());
  if (n == 0) EXPECT_THROW_WITH(Tensor::empty({4}, Device::cuda(0)), DeviceError, "cuda:0");
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
