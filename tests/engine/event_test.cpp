// Events, synchronisation, pinned memory and non-blocking copies as the CPU sees them: the same
// code that orders GPU streams runs here in order, waits return at once, and timing events
// read the host clock. The GPU side is tests/cuda/streams_test.cpp.
#include <thread>

#include "engine/event.h"
#include "test_util.h"

namespace headroom {
namespace {

const Stream kCpu0{Device::cpu(), 0};

TEST(Event, CpuEventsCompleteAtOnceAndTimeTheHost) {
  Event start(true), stop(true);
  EXPECT_TRUE(start.query());  // never recorded: nothing to wait for
  start.record(kCpu0);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  stop.record(kCpu0);
  EXPECT_TRUE(stop.query());
  stop.synchronize();
  stop.wait(kCpu0);
  const double ms = start.elapsed_ms(stop);
  EXPECT_GE(ms, 19.0);
  EXPECT_LT(ms, 5000.0);
}

TEST(Event, ElapsedNeedsTwoRecordedTimingEvents) {
  Event a(true), b(true), plain;
  EXPECT_THROW_WITH(a.elapsed_ms(b), ValueError, "recorded");
  a.record(kCpu0);
  plain.record(kCpu0);
  EXPECT_THROW_WITH(a.elapsed_ms(plain), ValueError, "Event(true)");
}

TEST(Event, MovedEventKeepsItsRecord) {
  Event a(true);
  a.record(kCpu0);
  Event b = std::move(a);
  EXPECT_TRUE(b.recorded());
  EXPECT_FALSE(a.recorded());  // NOLINT(bugprone-use-after-move): moved-from state is defined
  Event c(true);
  c.record(kCpu0);
  EXPECT_GE(b.elapsed_ms(c), 0.0);
}

TEST(Event, SynchronizeOnTheCpuReturns) {
  synchronize(Device::cpu());
  synchronize(kCpu0);
}

TEST(PinnedMemory, WithoutAGpuItIsPlainHostMemory) {
  Tensor t = Tensor::empty_pinned({3, 4}, DType::f32);
  EXPECT_EQ(t.shape(), (Shape{3, 4}));
  EXPECT_TRUE(t.device().is_cpu());
#ifndef HEADROOM_WITH_CUDA
  EXPECT_FALSE(t.is_pinned());
#endif
  // Not counted by the cpu device's allocator, pinned or not.
  EXPECT_FALSE(Tensor::zeros({2}).is_pinned());
  EXPECT_THROW_WITH(Tensor::empty_pinned({-1}, DType::f32), ShapeError, "negative");
}

TEST(PinnedMemory, NonBlockingToOnTheCpuIsAPlainCopy) {
  Tensor x = Tensor::arange(12).reshape({3, 4});
  Tensor same = x.to(Device::cpu(), true);
  EXPECT_TRUE(same.is_same(x));  // already there: no copy, as to(device)
  Tensor p = Tensor::empty_pinned({3, 4}, DType::f32);
  copy_tensor(p, x, /*non_blocking=*/true);
  EXPECT_TRUE(testing::all_close(p, x));
}

}  // namespace
}  // namespace headroom
