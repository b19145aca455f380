// Devices: parsing, and what headroom says about a device it cannot use (Note [missing devices]
// in engine/allocator.h). The CUDA build's side -- no GPU visible, an index past the last GPU --
// is tested in tests/cuda/cuda_check_test.cpp, which runs on machines without a GPU too.
#include "test_util.h"

namespace headroom {
namespace {

TEST(Device, ParsesCpuCudaAndCudaN) {
  EXPECT_EQ(Device::parse("cpu"), Device::cpu());
  EXPECT_EQ(Device::parse("cuda"), Device::cuda(0));
  EXPECT_EQ(Device::parse("cuda:3"), Device::cuda(3));
  EXPECT_THROW_WITH(Device::parse("cuda:"), DeviceError, "'cuda:'");
  EXPECT_THROW_WITH(Device::parse("cuda:-1"), DeviceError, "expected cpu, cuda or cuda:N");
  EXPECT_THROW_WITH(Device::parse("gpu"), DeviceError, "'gpu'");
}

#ifndef HEADROOM_WITH_CUDA
// The review's case: `--device cuda` said "no allocator for device cuda:0", which does not tell
// a user that this build cannot run on a GPU at all.
TEST(Device, CudaInABuildWithoutCudaSaysSo) {
  for (int index : {0, 1}) {
    const Device d = Device::cuda(index);
    EXPECT_THROW_WITH(allocator_for(d), DeviceError, d.str() + " is not available: this headroom was built without CUDA");
    EXPECT_THROW_WITH(Tensor::zeros({2}, d), DeviceError, "built without CUDA support");
    EXPECT_THROW_WITH(backend_for(d), DeviceError, "built without CUDA support");
    EXPECT_THROW_WITH(Tensor::ones({2}).to(d), DeviceError, "-DHEADROOM_CUDA=ON");
  }
  EXPECT_NE(device_unavailable_reason(Device::cuda(0)).find("without CUDA"), std::string::npos);
}
#endif

TEST(Device, CpuDevicesAreAlwaysAvailable) {
  EXPECT_EQ(device_unavailable_reason(Device::cpu()), "");
  EXPECT_EQ(allocator_for(Device::cpu()).device(), Device::cpu());
}

}  // namespace
}  // namespace headroom
