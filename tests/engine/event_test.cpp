// Events, synchronisation, pinned memory and non-blocking copies as the CPU sees them: the same
// code that orders GPU streams runs here in order, waits return at once, and timing events
// read the host clock. The GPU side is tests/cuda/streams_test.cpp.
#include <thread>

#include "engine/caching_allocator.h"
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

TEST(PinnedMemory, ComesFromTheHostPoolAndIsCountedThere) {
  CachingAllocator& pool = host_pool();
  const MemoryStats before = pool.stats();
  const MemoryStats cpu_before = caching_allocator(Device::cpu()).stats();
  {
    Tensor t = Tensor::empty_pinned({3, 4}, DType::f32);
    EXPECT_EQ(t.shape(), (Shape{3, 4}));
    EXPECT_TRUE(t.device().is_cpu());
    EXPECT_TRUE(t.is_pinned());
    EXPECT_EQ(pool.stats().allocated_bytes.current, before.allocated_bytes.current + 512);
    // Not the cpu device's memory.
    EXPECT_EQ(caching_allocator(Device::cpu()).stats().allocated_bytes.current, cpu_before.allocated_bytes.current);
  }
  EXPECT_EQ(pool.stats().allocated_bytes.current, before.allocated_bytes.current);
  EXPECT_TRUE(pool.is_host_pool());
  EXPECT_FALSE(caching_allocator(Device::cpu()).is_host_pool());
  EXPECT_FALSE(Tensor::zeros({2}).is_pinned());
  EXPECT_FALSE(Tensor::empty_host({2}, DType::f32).is_pinned());
  EXPECT_THROW_WITH(Tensor::empty_pinned({-1}, DType::f32), ShapeError, "negative");
}

TEST(PinnedMemory, TheHostPoolHasItsOwnLimitAndReport) {
  CachingAllocator& pool = host_pool();
  const size_t old_limit = pool.memory_limit();
  pool.empty_cache();
  pool.set_memory_limit(static_cast<size_t>(pool.stats().reserved_bytes.current) + (4 << 20));
  Tensor kept;
  {
    CategoryScope scope(MemoryCategory::activation);
    kept = Tensor::empty_pinned({1 << 19}, DType::f32);  // 2 MiB
  }
  try {
    Tensor too_much = Tensor::empty_pinned({1 << 20}, DType::f32);  // 4 MiB more
    pool.set_memory_limit(old_limit);
    FAIL() << "no OutOfMemoryError";
  } catch (const OutOfMemoryError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("out of memory in the pinned host pool"), std::string::npos) << what;
    EXPECT_NE(what.find("HEADROOM_HOST_MEMORY_LIMIT"), std::string::npos) << what;
    EXPECT_NE(what.find("offloaded activations hold 2.00 MiB"), std::string::npos) << what;
    // The device's remedies are not the pool's.
    EXPECT_EQ(what.find("micro-batches"), std::string::npos) << what;
  }
  pool.set_memory_limit(old_limit);
  // The cpu device's own report mentions the pool while it holds something.
  const std::string device_report = caching_allocator(Device::cpu()).oom_report(1 << 20);
  EXPECT_NE(device_report.find("pinned host pool (offloaded tensors, not counted above): 2.00 MiB in use"),
            std::string::npos)
      << device_report;
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
