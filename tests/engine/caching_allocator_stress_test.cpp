// Several threads allocating and freeing on one CachingAllocator at once: different sizes (both
// pools), categories and streams, record_stream with events that complete late, category
// changes, empty_cache and stats() from any thread, with and without a memory limit. Each
// block carries its owner's tag at both ends, so two threads handed overlapping memory would
// see each other's tag. At the end every counter must balance.
//
// It runs in the normal build (test_engine) and, under ThreadSanitizer, in the build of
// scripts/sanitize.sh (build-tsan/), where a data race in the allocator is a report.
#include <atomic>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include "engine/caching_allocator.h"
#include "test_util.h"

namespace headroom {
namespace {

constexpr size_t KiB = 1024, MiB = 1024 * 1024;

// Host memory whose events complete on their second poll, so freed blocks that other streams
// used wait in the pending list for a while. Thread-safe on its own (the allocator calls it
// under its lock, but the counters are read by the test too).
class StressBackend : public HostMemoryBackend {
 public:
  std::atomic<int64_t> live{0};
  std::atomic<int64_t> allocs{0}, frees{0};

  void* raw_alloc(size_t n) override {
    void* p = HostMemoryBackend::raw_alloc(n);
    if (p) {
      live += static_cast<int64_t>(n);
      ++allocs;
    }
    return p;
  }
  void raw_free(void* p, size_t n) override {
    live -= static_cast<int64_t>(n);
    ++frees;
    HostMemoryBackend::raw_free(p, n);
  }
  uint64_t record_event(Stream) override {
    std::lock_guard<std::mutex> lock(mu_);
    polls_left_.push_back(2);
    released_.push_back(false);
    return polls_left_.size() - 1;
  }
  bool event_done(uint64_t e) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (polls_left_.at(e) > 0) --polls_left_[e];
    return polls_left_[e] == 0;
  }
  void release_event(uint64_t e) override {
    std::lock_guard<std::mutex> lock(mu_);
    EXPECT_FALSE(released_.at(e)) << "event " << e << " released twice";
    released_[e] = true;
  }
  size_t events_recorded() {
    std::lock_guard<std::mutex> lock(mu_);
    return polls_left_.size();
  }
  size_t events_released() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<size_t>(std::count(released_.begin(), released_.end(), true));
  }

 private:
  std::mutex mu_;
  std::vector<int> polls_left_;
  std::vector<bool> released_;
};

struct StressConfig {
  int threads = 4;
  int ops_per_thread = 20000;
  size_t max_live_per_thread = 24;
  size_t limit = 0;  // 0: none
};

struct StressResult {
  int64_t allocations = 0;
  int64_t ooms = 0;
};

// Checks what must hold in any one snapshot of the stats, whatever the other threads do.
void expect_consistent(const MemoryStats& s, size_t limit) {
  int64_t by_category = 0;
  for (const Stat& c : s.category_bytes) {
    EXPECT_GE(c.current, 0);
    by_category += c.current;
  }
  EXPECT_EQ(by_category, s.allocated_bytes.current);
  EXPECT_LE(s.allocated_bytes.current, s.active_bytes.current);
  EXPECT_LE(s.active_bytes.current, s.reserved_bytes.current);
  EXPECT_LE(s.requested_bytes.current, s.allocated_bytes.current);
  EXPECT_LE(s.allocated_bytes.peak, s.reserved_bytes.peak);
  EXPECT_GE(s.allocation.current, 0);
  if (limit) {
    EXPECT_LE(s.reserved_bytes.peak, static_cast<int64_t>(limit));
  }
}

StressResult stress(CachingAllocator& allocator, const StressConfig& cfg) {
  std::atomic<int64_t> allocations{0}, ooms{0};
  std::atomic<int> tag_errors{0};
  auto worker = [&](int id) {
    std::mt19937_64 rng(1234 + static_cast<uint64_t>(id));
    struct Live {
      Allocation a;
      uint64_t tag;
    };
    std::vector<Live> live;
    uint64_t next_tag = static_cast<uint64_t>(id) << 48;
    auto check_and_free = [&](size_t i) {
      const Live& l = live[i];
      uint64_t head = 0, tail = 0;
      std::memcpy(&head, l.a.ptr, 8);
      std::memcpy(&tail, static_cast<char*>(l.a.ptr) + l.a.nbytes - 8, 8);
      if (head != l.tag || tail != l.tag) ++tag_errors;
      allocator.deallocate(l.a);
      live[i] = live.back();
      live.pop_back();
    };
    for (int op = 0; op < cfg.ops_per_thread; ++op) {
      const uint64_t r = rng();
      if (live.size() < cfg.max_live_per_thread && (live.empty() || r % 10 < 6)) {
        const uint64_t kind = rng() % 100;
        const size_t n = kind < 70   ? 16 + rng() % (64 * KiB)
                         : kind < 95 ? 64 * KiB + rng() % MiB
                                     : MiB + rng() % (7 * MiB);
        const Stream stream{Device::cpu(), static_cast<int64_t>(rng() % 3)};
        const auto category = static_cast<MemoryCategory>(rng() % kNumMemoryCategories);
        try {
          Allocation a = allocator.allocate(n, stream, category);
          ++allocations;
          const uint64_t tag = ++next_tag;
          std::memcpy(a.ptr, &tag, 8);
          std::memcpy(static_cast<char*>(a.ptr) + n - 8, &tag, 8);
          if (rng() % 4 == 0) allocator.record_stream(a, Stream{Device::cpu(), static_cast<int64_t>(rng() % 3)});
          if (rng() % 8 == 0) allocator.set_category(a, static_cast<MemoryCategory>(rng() % kNumMemoryCategories));
          live.push_back({a, tag});
        } catch (const OutOfMemoryError&) {
          ++ooms;
          if (!live.empty()) check_and_free(rng() % live.size());  // make room, as a caller would
        }
      } else if (!live.empty()) {
        check_and_free(rng() % live.size());
      }
      if (op % 97 == 0) expect_consistent(allocator.stats(), cfg.limit);
      if (op % 499 == 0 && id == 0) allocator.empty_cache();
      if (op % 701 == 0 && id == 1) (void)allocator.snapshot();
    }
    while (!live.empty()) check_and_free(live.size() - 1);
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < cfg.threads; ++t) threads.emplace_back(worker, t);
  for (auto& t : threads) t.join();
  EXPECT_EQ(tag_errors.load(), 0) << "two threads were handed overlapping memory";
  return {allocations.load(), ooms.load()};
}

// Everything is freed: the counters balance, and empty_cache gives every byte back.
void expect_balanced(CachingAllocator& allocator, StressBackend& backend, const StressResult& r) {
  MemoryStats s = allocator.stats();
  EXPECT_EQ(s.allocation.current, 0);
  EXPECT_EQ(s.allocated_bytes.current, 0);
  EXPECT_EQ(s.requested_bytes.current, 0);
  for (int c = 0; c < kNumMemoryCategories; ++c)
    EXPECT_EQ(s.category_bytes[static_cast<size_t>(c)].current, 0) << category_name(static_cast<MemoryCategory>(c));
  EXPECT_EQ(s.allocated_bytes.allocated, s.allocated_bytes.freed);
  EXPECT_EQ(s.allocation.allocated, r.allocations);
  EXPECT_EQ(s.num_allocs, r.allocations + r.ooms);
  EXPECT_EQ(s.num_ooms, r.ooms);
  EXPECT_EQ(s.reserved_bytes.current, backend.live.load());
  // Pending blocks wait for their events (two polls each); empty_cache polls them.
  for (int i = 0; i < 3; ++i) allocator.empty_cache();
  s = allocator.stats();
  EXPECT_EQ(s.active_bytes.current, 0);
  EXPECT_EQ(s.active.current, 0);
  EXPECT_EQ(s.reserved_bytes.current, 0);
  EXPECT_EQ(s.segment.current, 0);
  EXPECT_EQ(s.inactive_split_bytes.current, 0);
  EXPECT_EQ(backend.live.load(), 0);
  EXPECT_EQ(backend.allocs.load(), backend.frees.load());
  EXPECT_EQ(s.num_device_alloc, backend.allocs.load());
  EXPECT_EQ(s.num_device_free, backend.frees.load());
  EXPECT_EQ(backend.events_released(), backend.events_recorded());
  EXPECT_TRUE(allocator.snapshot().empty());
}

TEST(CachingAllocatorStress, ThreadsSharingOneAllocatorKeepItsStatsConsistent) {
  auto owned = std::make_unique<StressBackend>();
  StressBackend& backend = *owned;
  CachingAllocator allocator(std::move(owned));
  const StressResult r = stress(allocator, StressConfig{});
  EXPECT_GT(r.allocations, 4000);
  EXPECT_EQ(r.ooms, 0);
  EXPECT_GT(allocator.stats().num_cache_hits, 0);
  EXPECT_GT(backend.events_recorded(), 0u);
  expect_balanced(allocator, backend, r);
}

TEST(CachingAllocatorStress, ThreadsRunningOutOfMemoryTogetherLeaveItUsable) {
  auto owned = std::make_unique<StressBackend>();
  StressBackend& backend = *owned;
  CachingAllocator allocator(std::move(owned));
  StressConfig cfg;
  cfg.limit = 24 * MiB;  // 4 threads holding up to 24 blocks of up to 8 MiB: out of memory often
  allocator.set_memory_limit(cfg.limit);
  const StressResult r = stress(allocator, cfg);
  EXPECT_GT(r.ooms, 0);
  EXPECT_LE(allocator.stats().reserved_bytes.peak, static_cast<int64_t>(cfg.limit));
  EXPECT_GT(allocator.stats().num_alloc_retries, 0);
  expect_balanced(allocator, backend, r);
  // Still usable: a request that fits is served.
  Allocation a = allocator.allocate(MiB, Stream{Device::cpu(), 0}, MemoryCategory::temporary);
  allocator.deallocate(a);
}

}  // namespace
}  // namespace headroom
