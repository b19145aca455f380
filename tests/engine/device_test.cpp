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
  EXPECT_THROW_WITH(Device::parse("cuda:-1"), DeviceError, "expected cpu, cpu:N, cuda or cuda:N");
  EXPECT_THROW_WITH(Device::parse("gpu"), DeviceError, "'gpu'");
}

#ifndef HEADROOM_WITH_CUDA
// The review's case: `--device cuda` said "no allocator for device cuda:0", which does not tell
// a user that this build cannot run on a GPU at all.
TEST(Device, CudaInABuildWithoutCudaSaysSo) {
  for (int index : {0, 1}) {
    const Device d = Device::cuda(index);
    EXPECT_THROW_WITH(allocator_for(d), DeviceError,
                      d.str() + " is not available: this headroom was built without CUDA");
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

// Note [cpu devices]: cpu:0..cpu:7 by default, each its own allocator, limit and statistics.
TEST(Device, SeveralCpuDevicesAreSeparateDevices) {
  EXPECT_EQ(Device::parse("cpu:3"), Device::cpu(3));
  EXPECT_EQ(Device::parse("cpu:0"), Device::cpu());
  EXPECT_EQ(Device::cpu(2).str(), "cpu:2");
  EXPECT_EQ(Device::cpu(0).str(), "cpu");
  EXPECT_THROW_WITH(Device::parse("cpu:x"), DeviceError, "'cpu:x'");
  EXPECT_EQ(device_count(DeviceType::cpu), 8);
  EXPECT_THROW_WITH(Tensor::zeros({2}, Device::cpu(8)), DeviceError, "cpu:8 does not exist: there are 8 cpu devices");
  EXPECT_NE(device_unavailable_reason(Device::cpu(9)), "");

  CachingAllocator& a0 = caching_allocator(Device::cpu(0));
  CachingAllocator& a1 = caching_allocator(Device::cpu(1));
  EXPECT_NE(&a0, &a1);
  EXPECT_EQ(a1.device(), Device::cpu(1));
  const int64_t before0 = a0.stats().allocated_bytes.current, before1 = a1.stats().allocated_bytes.current;
  Tensor x = Tensor::ones({1000}, Device::cpu(1));
  EXPECT_EQ(x.device(), Device::cpu(1));
  EXPECT_EQ(a1.stats().allocated_bytes.current - before1, 4096);
  EXPECT_EQ(a0.stats().allocated_bytes.current, before0);
  // A copy to another cpu device is counted there; the source stays counted where it is.
  Tensor y = x.to(Device::cpu(2));
  EXPECT_EQ(y.device(), Device::cpu(2));
  EXPECT_EQ(caching_allocator(Device::cpu(2)).stats().allocated_bytes.current, 4096);
  EXPECT_EQ(sum(y).item<double>(), 1000.0);
  // An op that mixes devices names both.
  EXPECT_THROW_WITH(x + y, DeviceError, "on different devices");
  EXPECT_THROW_WITH(x + y, DeviceError, "cpu:2");
  // Each its own limit.
  a1.set_memory_limit(1 << 20);
  EXPECT_THROW_WITH(Tensor::zeros({1 << 20}, Device::cpu(1)), OutOfMemoryError, "out of memory on cpu:1");
  (void)Tensor::zeros({1 << 20}, Device::cpu(3));  // another device: no limit
  a1.set_memory_limit(0);
}

TEST(Device, CopiesBetweenCpuDevicesAreDifferentiable) {
  Tensor w = Tensor::full({3}, 2.0, Device::cpu(1)).set_requires_grad(true);
  Tensor on2 = (w * 3.0).to(Device::cpu(2));
  sum(on2 * on2).backward();  // d/dw sum((3w)^2) = 18 w
  ASSERT_TRUE(w.grad().defined());
  EXPECT_EQ(w.grad().device(), Device::cpu(1));
  EXPECT_EQ(w.grad().to_vector<float>(), std::vector<float>(3, 36.0f));
}

TEST(Device, MemoryLimitPerDeviceFromTheEnvironment) {
  EXPECT_EQ(memory_limit_from_env("256MiB", Device::cpu(3)), size_t{256} << 20);
  EXPECT_EQ(memory_limit_from_env("cpu:0=256MiB,cpu:1=128MiB", Device::cpu(1)), size_t{128} << 20);
  EXPECT_EQ(memory_limit_from_env("cpu:0=256MiB,cpu:1=128MiB", Device::cpu(2)), size_t{0});
  EXPECT_EQ(memory_limit_from_env("1GiB,cpu:1=128MiB", Device::cpu(2)), size_t{1} << 30);
  EXPECT_EQ(memory_limit_from_env("1GiB,cuda:1=40GiB", Device::cuda(1)), size_t{40} << 30);
  EXPECT_THROW_WITH(memory_limit_from_env("gpu:1=1GiB", Device::cpu()), ValueError, "'gpu:1=1GiB' names no device");
  EXPECT_THROW_WITH(memory_limit_from_env("cpu:1=lots", Device::cpu()), ValueError, "HEADROOM_MEMORY_LIMIT (cpu:1)");
  EXPECT_THROW_WITH(memory_limit_from_env("1GiB,2GiB", Device::cpu()), ValueError, "more than one limit");
}

}  // namespace
}  // namespace headroom

namespace headroom {
namespace {

// device_properties (engine/backend.h): what headroom-bench and headroom-plan ask instead of the
// kernels. The cpu devices share the host: the same cores and memory on each.
TEST(DeviceProperties, CpuDevicesDescribeTheHost) {
  const DeviceProperties p0 = device_properties(Device::cpu(0)), p3 = device_properties(Device::cpu(3));
  EXPECT_EQ(p0.name, "cpu");
  EXPECT_EQ(p3.name, "cpu:3");
  EXPECT_GE(p0.compute_units, 1);
  EXPECT_GE(p0.threads_per_op, 1);
  EXPECT_GT(p0.total_memory, int64_t{1} << 20);
  EXPECT_EQ(p0.total_memory, p3.total_memory);
  EXPECT_EQ(p0.compute_units, p3.compute_units);
  EXPECT_EQ(p0.capability, 0);
  EXPECT_THROW_WITH(device_properties(Device::cpu(8)), DeviceError, "cpu:8 does not exist");
}

}  // namespace
}  // namespace headroom
