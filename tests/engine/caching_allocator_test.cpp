// The caching allocator on the host backend, with streams and events faked by a test backend.
#include <thread>

#include "engine/caching_allocator.h"
#include "test_util.h"

namespace headroom {
namespace {

constexpr size_t KiB = 1024, MiB = 1024 * 1024;

// Host memory with counters, a capacity, and events that complete only when the test says so.
class FakeBackend : public HostMemoryBackend {
 public:
  size_t capacity_bytes = 0;  // 0: unlimited
  size_t live = 0;
  int allocs = 0, frees = 0;
  std::vector<bool> event_completed;

  void* raw_alloc(size_t n) override {
    if (capacity_bytes && live + n > capacity_bytes) return nullptr;
    live += n;
    ++allocs;
    return HostMemoryBackend::raw_alloc(n);
  }
  void raw_free(void* p, size_t n) override {
    live -= n;
    ++frees;
    HostMemoryBackend::raw_free(p, n);
  }
  size_t capacity() const override { return capacity_bytes; }
  uint64_t record_event(Stream) override {
    event_completed.push_back(false);
    return event_completed.size() - 1;
  }
  bool event_done(uint64_t e) override { return event_completed[e]; }
};

struct Fixture {
  FakeBackend* backend;
  std::unique_ptr<CachingAllocator> alloc;
  Fixture() {
    auto b = std::make_unique<FakeBackend>();
    backend = b.get();
    alloc = std::make_unique<CachingAllocator>(std::move(b));
    // The mechanics below are easier to see without Note [release on miss]; its own test
    // turns it back on.
    alloc->set_release_on_miss(false);
  }
  Allocation get(size_t n, int64_t stream = 0, MemoryCategory c = MemoryCategory::temporary) {
    return alloc->allocate(n, Stream{Device::cpu(), stream}, c);
  }
};

TEST(CachingAllocator, ReusesAFreedBlockWithoutAskingTheBackend) {
  Fixture f;
  Allocation a = f.get(1000);
  f.alloc->deallocate(a);
  Allocation b = f.get(900);  // rounds to the same 1024 B
  EXPECT_EQ(b.ptr, a.ptr);
  EXPECT_EQ(f.backend->allocs, 1);
  MemoryStats s = f.alloc->stats();
  EXPECT_EQ(s.num_allocs, 2);
  EXPECT_EQ(s.num_cache_hits, 1);
  EXPECT_EQ(s.num_device_alloc, 1);
  f.alloc->deallocate(b);
}

TEST(CachingAllocator, RoundsTo512AndSplitsAndCoalesces) {
  Fixture f;
  Allocation a = f.get(1), b = f.get(513), c = f.get(512);
  // Carved one after another from the same 2 MiB small segment.
  EXPECT_EQ(static_cast<char*>(b.ptr) - static_cast<char*>(a.ptr), 512);
  EXPECT_EQ(static_cast<char*>(c.ptr) - static_cast<char*>(b.ptr), 1024);
  auto snap = f.alloc->snapshot();
  ASSERT_EQ(snap.size(), 1u);
  EXPECT_EQ(snap[0].size, static_cast<int64_t>(2 * MiB));
  ASSERT_EQ(snap[0].blocks.size(), 4u);  // a, b, c, and the free rest
  EXPECT_EQ(f.alloc->stats().allocated_bytes.current, 2048);
  EXPECT_EQ(f.alloc->stats().requested_bytes.current, 1 + 513 + 512);
  // Free the middle, then its neighbours: the segment merges back into one free block.
  f.alloc->deallocate(b);
  EXPECT_EQ(f.alloc->snapshot()[0].blocks.size(), 4u);
  EXPECT_EQ(f.alloc->stats().inactive_split_bytes.current, static_cast<int64_t>(2 * MiB - 2048 + 1024));
  f.alloc->deallocate(a);
  EXPECT_EQ(f.alloc->snapshot()[0].blocks.size(), 3u);
  f.alloc->deallocate(c);
  snap = f.alloc->snapshot();
  ASSERT_EQ(snap[0].blocks.size(), 1u);
  EXPECT_EQ(snap[0].blocks[0].state, "free");
  EXPECT_EQ(f.alloc->stats().inactive_split_bytes.current, 0);
  f.alloc->empty_cache();
  EXPECT_EQ(f.backend->live, 0u);
  EXPECT_EQ(f.alloc->stats().reserved_bytes.current, 0);
}

TEST(CachingAllocator, SmallAndLargePools) {
  Fixture f;
  Allocation small = f.get(1 * MiB);      // the largest small request
  Allocation large = f.get(1 * MiB + 1);  // the smallest large one
  auto snap = f.alloc->snapshot();
  ASSERT_EQ(snap.size(), 2u);
  EXPECT_TRUE(snap[0].small_pool);
  EXPECT_EQ(snap[0].size, static_cast<int64_t>(2 * MiB));
  EXPECT_FALSE(snap[1].small_pool);
  EXPECT_EQ(snap[1].size, static_cast<int64_t>(1 * MiB + 512));  // a large request's own segment
  f.alloc->deallocate(small);
  // A freed small block never serves a large request, and vice versa.
  Allocation large2 = f.get(1 * MiB + 512);
  EXPECT_NE(large2.ptr, small.ptr);
  EXPECT_EQ(f.alloc->snapshot().size(), 3u);
  Allocation small2 = f.get(1000);
  EXPECT_EQ(small2.ptr, small.ptr);
  for (auto& a : {large, large2, small2}) f.alloc->deallocate(a);
}

TEST(CachingAllocator, LargePoolSplitsOnlyRemaindersOverOneMiB) {
  Fixture f;
  Allocation a = f.get(8 * MiB);
  f.alloc->deallocate(a);
  Allocation b = f.get(7 * MiB + 512 * KiB);  // leaves 512 KiB: not worth a block, handed out whole
  EXPECT_EQ(b.ptr, a.ptr);
  EXPECT_EQ(f.alloc->snapshot()[0].blocks.size(), 1u);
  EXPECT_EQ(f.alloc->stats().allocated_bytes.current, static_cast<int64_t>(8 * MiB));
  f.alloc->deallocate(b);
  Allocation c = f.get(6 * MiB);  // leaves 2 MiB: split off and cached
  auto blocks = f.alloc->snapshot()[0].blocks;
  ASSERT_EQ(blocks.size(), 2u);
  EXPECT_EQ(blocks[1].size, static_cast<int64_t>(2 * MiB));
  EXPECT_EQ(blocks[1].state, "free");
  EXPECT_EQ(f.alloc->stats().inactive_split_bytes.current, static_cast<int64_t>(2 * MiB));
  f.alloc->deallocate(c);
}

TEST(CachingAllocator, ReleasesWholeFreeSegmentsOnAMiss) {
  Fixture f;
  f.alloc->set_release_on_miss(true);
  Allocation a = f.get(4 * MiB);
  f.alloc->deallocate(a);         // cached
  Allocation b = f.get(3 * MiB);  // fits the cached block: a hit, nothing released
  EXPECT_EQ(b.ptr, a.ptr);
  Allocation c = f.get(6 * MiB);  // a miss: nothing cached is whole-free, a new segment
  f.alloc->deallocate(b);
  Allocation d = f.get(16 * MiB);  // a miss: the whole-free 4 MiB segment goes back first
  MemoryStats s = f.alloc->stats();
  EXPECT_EQ(s.num_device_free, 1);
  EXPECT_EQ(s.reserved_bytes.current, static_cast<int64_t>(22 * MiB));
  f.alloc->deallocate(c);
  f.alloc->deallocate(d);
}

// A loop whose working set is just above what a miss leaves reserved: a large block, then a small
// one, each freed before the other is asked for. Releasing on every miss handed each segment back
// to make room for the other, twice a step for as long as the loop ran (20 segments for 10
// steps). Now the second step's miss asks again for the size the first step handed back, so it
// keeps what is cached, and nothing misses after that.
TEST(CachingAllocator, ReleaseOnMissSettlesInARepeatingLoop) {
  Fixture f;
  f.alloc->set_release_on_miss(true);
  for (int step = 0; step < 10; ++step) {
    f.alloc->deallocate(f.get(4 * MiB));
    f.alloc->deallocate(f.get(512 * KiB));  // the small pool: a 2 MiB segment of its own
    if (step == 0) {
      EXPECT_EQ(f.backend->allocs, 2);
      EXPECT_EQ(f.backend->frees, 1) << "the small segment's miss hands the whole-free 4 MiB back";
    }
  }
  MemoryStats s = f.alloc->stats();
  EXPECT_EQ(f.backend->allocs, 3) << "only the second step's 4 MiB missed after the first step";
  EXPECT_EQ(f.backend->frees, 1);
  EXPECT_EQ(s.reserved_bytes.current, static_cast<int64_t>(6 * MiB));
  EXPECT_EQ(s.reserved_bytes.peak, static_cast<int64_t>(6 * MiB));
}

TEST(CachingAllocator, BlocksAreReusedOnlyOnTheirStream) {
  Fixture f;
  Allocation a = f.get(4096, /*stream=*/1);
  f.alloc->deallocate(a);
  Allocation b = f.get(4096, /*stream=*/2);
  EXPECT_NE(b.ptr, a.ptr);
  EXPECT_EQ(f.backend->allocs, 2);
  Allocation c = f.get(4096, /*stream=*/1);
  EXPECT_EQ(c.ptr, a.ptr);
  f.alloc->deallocate(b);
  f.alloc->deallocate(c);
}

TEST(CachingAllocator, RecordStreamDelaysReuseUntilTheEventCompletes) {
  Fixture f;
  Allocation a = f.get(4096, 0);
  f.alloc->record_stream(a, Stream{Device::cpu(), 3});
  f.alloc->deallocate(a);
  EXPECT_EQ(f.alloc->stats().active_bytes.current, 4096);  // still in use by stream 3
  ASSERT_EQ(f.backend->event_completed.size(), 1u);
  Allocation b = f.get(4096, 0);
  EXPECT_NE(b.ptr, a.ptr) << "reused while stream 3 may still read it";
  f.backend->event_completed[0] = true;
  Allocation c = f.get(4096, 0);
  EXPECT_EQ(c.ptr, a.ptr);
  f.alloc->deallocate(b);
  f.alloc->deallocate(c);
  EXPECT_EQ(f.alloc->stats().active_bytes.current, 0);
}

TEST(CachingAllocator, LimitAndOutOfMemoryReport) {
  Fixture f;
  f.alloc->set_memory_limit(8 * MiB);
  Allocation p = f.get(3 * MiB, 0, MemoryCategory::parameter);
  Allocation act = f.get(3 * MiB, 0, MemoryCategory::activation);
  try {
    f.get(3 * MiB, 0, MemoryCategory::activation);
    FAIL() << "expected OutOfMemoryError";
  } catch (const OutOfMemoryError& e) {
    std::string m = e.what();
    EXPECT_EQ(e.requested_bytes(), 3 * MiB);
    EXPECT_EQ(e.limit_bytes(), 8 * MiB);
    for (const char* part : {"out of memory on cpu", "tried to allocate 3.00 MiB", "limit: 8.00 MiB", "parameter",
                             "activation", "largest free block", "micro-batches", "mixed precision"})
      EXPECT_NE(m.find(part), std::string::npos) << "report lacks '" << part << "':\n" << m;
  }
  MemoryStats s = f.alloc->stats();
  EXPECT_EQ(s.num_ooms, 1);
  EXPECT_EQ(s.num_alloc_retries, 1);
  EXPECT_LE(s.reserved_bytes.current, static_cast<int64_t>(8 * MiB));
  // The failed request changed nothing: after freeing some memory a request fits again (the
  // freed 3 MiB segment is cached, released on the retry, and its room reused).
  f.alloc->deallocate(act);
  Allocation small = f.get(3 * MiB + 512 * KiB);
  EXPECT_EQ(f.alloc->stats().num_alloc_retries, 2);
  f.alloc->deallocate(small);
  f.alloc->deallocate(p);
  f.alloc->empty_cache();
  EXPECT_EQ(f.alloc->stats().reserved_bytes.current, 0);
  EXPECT_EQ(f.backend->live, 0u);
}

TEST(CachingAllocator, RetriesAfterFreeingTheCache) {
  Fixture f;
  f.alloc->set_memory_limit(24 * MiB);
  Allocation a = f.get(12 * MiB);  // own 12 MiB segment
  f.alloc->deallocate(a);          // cached, not returned
  Allocation b = f.get(14 * MiB);  // 12 + 14 > 24: must free the cached segment and retry
  MemoryStats s = f.alloc->stats();
  EXPECT_EQ(s.num_alloc_retries, 1);
  EXPECT_EQ(s.num_ooms, 0);
  EXPECT_EQ(s.num_device_free, 1);
  EXPECT_EQ(s.reserved_bytes.current, static_cast<int64_t>(14 * MiB));
  f.alloc->deallocate(b);
}

TEST(CachingAllocator, BackendFailureIsAnOutOfMemoryErrorToo) {
  Fixture f;
  f.backend->capacity_bytes = 4 * MiB;
  Allocation a = f.get(2 * MiB + 512);  // 4 MiB segment (20 MiB would not fit the device)
  EXPECT_THROW_WITH(f.get(1 * MiB), OutOfMemoryError, "device capacity 4.00 MiB");
  f.alloc->deallocate(a);
}

TEST(CachingAllocator, StatsEqualAHandCount) {
  Fixture f;
  std::vector<Allocation> live;
  int64_t bytes = 0;
  for (int i = 1; i <= 20; ++i) {
    size_t n = static_cast<size_t>(i) * 700;
    live.push_back(f.get(n, 0, i % 2 ? MemoryCategory::gradient : MemoryCategory::activation));
    bytes += static_cast<int64_t>((n + 511) / 512 * 512);
  }
  MemoryStats s = f.alloc->stats();
  EXPECT_EQ(s.allocated_bytes.current, bytes);
  EXPECT_EQ(s.allocation.current, 20);
  EXPECT_EQ(s.category(MemoryCategory::gradient).current + s.category(MemoryCategory::activation).current, bytes);
  EXPECT_EQ(s.reserved_bytes.current, static_cast<int64_t>(2 * MiB));
  int64_t peak = bytes;
  for (size_t i = 0; i < live.size(); i += 2) {
    bytes -= static_cast<int64_t>((700 * (i + 1) + 511) / 512 * 512);
    f.alloc->deallocate(live[i]);
  }
  s = f.alloc->stats();
  EXPECT_EQ(s.allocated_bytes.current, bytes);
  EXPECT_EQ(s.allocated_bytes.peak, peak);
  EXPECT_EQ(s.allocation.current, 10);
  EXPECT_EQ(s.category(MemoryCategory::gradient).current, 0);  // odd i were at even positions
  f.alloc->reset_peak_stats();
  EXPECT_EQ(f.alloc->stats().allocated_bytes.peak, bytes);
  // Retagging moves bytes between categories.
  f.alloc->set_category(live[1], MemoryCategory::parameter);
  EXPECT_EQ(f.alloc->stats().category(MemoryCategory::parameter).current, 1536);
  for (size_t i = 1; i < live.size(); i += 2) f.alloc->deallocate(live[i]);
  EXPECT_EQ(f.alloc->stats().allocated_bytes.current, 0);
  EXPECT_EQ(f.alloc->stats().active_bytes.current, 0);
}

TEST(CachingAllocator, FragmentationShowsInTheReport) {
  Fixture f;
  f.alloc->set_memory_limit(20 * MiB);
  // One 20 MiB segment cut into ten 2 MiB blocks; free every other one: 10 MiB free, in 2 MiB
  // pieces that cannot merge.
  f.alloc->deallocate(f.get(20 * MiB));
  std::vector<Allocation> blocks;
  for (int i = 0; i < 10; ++i) blocks.push_back(f.get(2 * MiB));
  ASSERT_EQ(f.alloc->snapshot().size(), 1u);
  for (size_t i = 0; i < blocks.size(); i += 2) f.alloc->deallocate(blocks[i]);
  try {
    f.get(4 * MiB);
    FAIL() << "expected OutOfMemoryError";
  } catch (const OutOfMemoryError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("cached but free: 10.00 MiB, largest free block: 2.00 MiB"), std::string::npos) << m;
    EXPECT_NE(m.find("fragmented"), std::string::npos) << m;
    EXPECT_NE(m.find("empty_cache()"), std::string::npos) << m;
  }
  for (size_t i = 1; i < blocks.size(); i += 2) f.alloc->deallocate(blocks[i]);
}

TEST(CachingAllocator, ConcurrentAllocAndFree) {
  Fixture f;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&f, t] {
      std::vector<Allocation> mine;
      for (int i = 0; i < 2000; ++i) {
        mine.push_back(f.get(static_cast<size_t>((i * 37 + t * 101) % 5000 + 1)));
        static_cast<char*>(mine.back().ptr)[0] = static_cast<char>(t);
        if (i % 3 == 2) {
          f.alloc->deallocate(mine.front());
          mine.erase(mine.begin());
        }
      }
      for (auto& a : mine) f.alloc->deallocate(a);
    });
  }
  for (auto& th : threads) th.join();
  MemoryStats s = f.alloc->stats();
  EXPECT_EQ(s.allocated_bytes.current, 0);
  EXPECT_EQ(s.allocation.current, 0);
  EXPECT_EQ(s.num_allocs, 8000);
  f.alloc->empty_cache();
  EXPECT_EQ(f.backend->live, 0u);
}

TEST(CachingAllocator, ParsesMemorySizes) {
  EXPECT_EQ(parse_memory_size("256MiB", "x"), 256 * MiB);
  EXPECT_EQ(parse_memory_size("4GiB", "x"), 4096 * MiB);
  EXPECT_EQ(parse_memory_size("1.5GB", "x"), 1500000000u);
  EXPECT_EQ(parse_memory_size("1000", "x"), 1000u);
  EXPECT_THROW_WITH(parse_memory_size("lots", "HEADROOM_MEMORY_LIMIT"), ValueError, "HEADROOM_MEMORY_LIMIT");
  EXPECT_THROW_WITH(parse_memory_size("5 parsecs", "x"), ValueError, "unknown unit");
}

TEST(CachingAllocator, TensorsAreCategorisedByAutograd) {
  CachingAllocator& a = caching_allocator(Device::cpu());
  Tensor w = Tensor::randn({256, 256}).set_requires_grad();
  {
    CategoryScope scope(MemoryCategory::parameter);
    w = Tensor::randn({256, 256}).set_requires_grad();
  }
  EXPECT_EQ(w.storage()->category(), MemoryCategory::parameter);
  Tensor h = exp(w);  // exp saves its output: an activation
  EXPECT_EQ(h.storage()->category(), MemoryCategory::activation);
  EXPECT_EQ(w.storage()->category(), MemoryCategory::parameter);
  Tensor loss = h.sum();
  loss.backward();
  EXPECT_EQ(w.grad().storage()->category(), MemoryCategory::gradient);
  EXPECT_GE(a.stats().category(MemoryCategory::gradient).current, 256 * 256 * 4);
}

}  // namespace
}  // namespace headroom

namespace headroom {
namespace {

// Address ranges going up or down (never touched): the raw backend's order of addresses.
class OrderedAddresses : public DeviceMemoryBackend {
 public:
  explicit OrderedAddresses(bool downwards) : down_(downwards) {}
  Device device() const override { return Device::cpu(); }
  void* raw_alloc(size_t n) override {
    const uintptr_t step = (n + 4095) / 4096 * 4096 + 4096;
    next_ = down_ ? next_ - step : next_ + step;
    return reinterpret_cast<void*>(down_ ? next_ : next_ - step);
  }
  void raw_free(void*, size_t) override {}

 private:
  bool down_;
  uintptr_t next_ = uintptr_t{1} << 44;
};

// Note [placement order]: among equal free blocks the oldest segment's wins, whatever addresses
// the backend gave; so placement and reserved bytes do not depend on them.
TEST(CachingAllocator, PlacementFollowsSegmentOrderNotAddresses) {
  for (bool down : {false, true}) {
    CachingAllocator a(std::make_unique<OrderedAddresses>(down));
    Allocation first = a.allocate(3 * MiB), second = a.allocate(3 * MiB);
    a.deallocate(second);
    a.deallocate(first);
    Allocation again = a.allocate(1536 * KiB);  // fits either free 3 MiB block
    EXPECT_EQ(again.ptr, first.ptr) << (down ? "addresses going down" : "addresses going up");
    Allocation other = a.allocate(2 * MiB);  // the remainder (1.5 MiB) is too small: the second segment
    EXPECT_EQ(other.ptr, second.ptr);
    EXPECT_EQ(a.stats().reserved_bytes.peak, static_cast<int64_t>(6 * MiB));
    a.deallocate(again);
    a.deallocate(other);
  }
}

}  // namespace
}  // namespace headroom
