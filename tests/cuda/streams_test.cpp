// Streams, events, pinned memory and asynchronous copies on cuda:0: what only a GPU can show.
// Skipped without a GPU; the CPU semantics of the same API are tests/engine/event_test.cpp.
#include <cuda_runtime_api.h>

#include "engine/caching_allocator.h"
#include "engine/event.h"
#include "kernels/cuda/cuda_memory.h"
#include "kernels/cuda/pinned_memory.h"
#include "test_util.h"

namespace headroom {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cuda_device_count() == 0): needs a GPU"

const Device kGpu = Device::cuda(0);

TEST(CudaStreams, PinnedTensorsComeFromThePinnedAllocator) {
  SKIP_WITHOUT_GPU();
  Tensor p = Tensor::empty_pinned({1000}, DType::f32);
  EXPECT_TRUE(p.is_pinned());
  cudaPointerAttributes attr{};
  HR_CUDA_CHECK(cudaPointerGetAttributes(&attr, p.raw_data()));
  EXPECT_EQ(attr.type, cudaMemoryTypeHost);  // page-locked host memory, not pageable
  EXPECT_FALSE(Tensor::empty_host({10}, DType::f32).is_pinned());
}

TEST(CudaStreams, NonBlockingRoundTripThroughPinnedMemory) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 1 << 22;
  Tensor src = Tensor::empty_pinned({n}, DType::f32);
  float* s = src.data<float>();
  for (int64_t i = 0; i < n; ++i) s[i] = static_cast<float>(i % 1000) * 0.5f;
  Tensor gpu = src.to(kGpu, /*non_blocking=*/true);
  Tensor back = (gpu * 2.0).to(Device::cpu(), /*non_blocking=*/true);
  EXPECT_TRUE(back.is_pinned());
  synchronize(current_stream(kGpu));
  const float* b = back.data<float>();
  for (int64_t i = 0; i < n; i += 9973) ASSERT_EQ(b[i], s[i] * 2.0f) << "at " << i;
}

TEST(CudaStreams, PinnedBlockIsNotReusedBeforeItsCopyFinished) {
  SKIP_WITHOUT_GPU();
  // A private pool over the page-locked backend: its counters are this test's own.
  CachingAllocator pinned(std::make_unique<cuda::PinnedMemoryBackend>());
  const size_t n = size_t{64} << 20;
  Allocation a = pinned.allocate(n);
  Tensor dev = Tensor::empty({static_cast<int64_t>(n)}, TensorOptions().dtype(DType::u8).device(kGpu));
  const Stream s = current_stream(kGpu);
  // Queue a long copy from the block, record its stream, free the block at once.
  for (int i = 0; i < 8; ++i)
    HR_CUDA_CHECK(cudaMemcpyAsync(dev.raw_data(), a.ptr, n, cudaMemcpyHostToDevice, cuda_stream(s)));
  pinned.record_stream(a, s);
  pinned.deallocate(a);
  Allocation b = pinned.allocate(n);
  const bool reused_early = b.ptr == a.ptr && cudaStreamQuery(cuda_stream(s)) == cudaErrorNotReady;
  (void)cudaGetLastError();
  EXPECT_FALSE(reused_early) << "the block came back while the copy from it was still running";
  synchronize(s);
  pinned.deallocate(b);
  Allocation c = pinned.allocate(n);  // now the cached block is free to reuse
  EXPECT_TRUE(c.ptr == a.ptr || c.ptr == b.ptr);
  pinned.deallocate(c);
}

TEST(CudaStreams, EventOrdersTwoStreams) {
  SKIP_WITHOUT_GPU();
  const Stream side{kGpu, 1};
  const int64_t n = 1 << 24;
  Tensor x = Tensor::zeros({n}, TensorOptions().device(kGpu));
  Tensor y;
  Event ready;
  {
    StreamGuard g(side);
    for (int i = 0; i < 10; ++i) x.add_(Tensor::scalar(1.0, TensorOptions().device(kGpu)));
    ready.record(side);
  }
  const Stream main = current_stream(kGpu);
  ready.wait(main);  // main waits for the side stream's additions, the host does not
  x.record_stream(main);
  y = x * 2.0;
  EXPECT_EQ(y.sum().item<double>(), 20.0 * static_cast<double>(n));
}

TEST(CudaStreams, TimingEventsMeasureDeviceWork) {
  SKIP_WITHOUT_GPU();
  Tensor a = Tensor::randn({2048, 2048}, TensorOptions().device(kGpu));
  Event start(true), stop(true);
  start.record(kGpu);
  for (int i = 0; i < 5; ++i) a = matmul(a, a) * (1.0 / 2048);
  stop.record(kGpu);
  stop.synchronize();
  EXPECT_TRUE(stop.query());
  const double ms = start.elapsed_ms(stop);
  EXPECT_GT(ms, 0.0);
  EXPECT_LT(ms, 10000.0);
}

TEST(CudaStreams, EventOfOneDeviceCannotBeRecordedOnTheCpu) {
  SKIP_WITHOUT_GPU();
  Event e;
  e.record(kGpu);
  EXPECT_THROW_WITH(e.record(Stream{Device::cpu(), 0}), DeviceError, "recorded on cuda:0");
}

}  // namespace
}  // namespace headroom
