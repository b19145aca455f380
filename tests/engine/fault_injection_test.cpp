// Note [fault injection] and the allocator's other failure paths: an injected failure is the real
// out-of-memory path (same error, same counters, nothing changed), each kind fires once at the
// request it names, HEADROOM_FAIL_ALLOC's syntax, the memory-size syntax HEADROOM_MEMORY_LIMIT
// accepts, a limit set below what is reserved, the report when no limit is set, and
// NoAllocationScope.
#include <memory>

#include "engine/caching_allocator.h"
#include "test_util.h"

namespace headroom {
namespace {

constexpr size_t KiB = 1024, MiB = 1024 * 1024;

std::unique_ptr<CachingAllocator> host_allocator() {
  return std::make_unique<CachingAllocator>(std::make_unique<HostMemoryBackend>());
}

TEST(FaultInjection, TheReportDoesNotClaimAFullDeviceForAnInjectedFailure) {
  auto a = host_allocator();
  for (FaultKind kind : {FaultKind::allocation, FaultKind::segment}) {
    a->inject_fault(kind, 1);
    try {
      a->allocate(8 * KiB);
      ADD_FAILURE() << "no error for " << fault_kind_name(kind);
    } catch (const OutOfMemoryError& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("this failure was injected"), std::string::npos) << m;
      EXPECT_EQ(m.find("the device itself is full"), std::string::npos) << m;
    }
    a->clear_fault();
  }
}

TEST(FaultInjection, FailsTheKthAllocationOnceAndChangesNothing) {
  auto a = host_allocator();
  Allocation first = a->allocate(4 * KiB);
  a->inject_fault(FaultKind::allocation, 3);
  Allocation second = a->allocate(4 * KiB);  // request 1
  a->deallocate(second);
  second = a->allocate(4 * KiB);  // request 2: a cache hit
  const MemoryStats before = a->stats();
  EXPECT_THROW_WITH(a->allocate(8 * KiB), OutOfMemoryError, "injected failure (allocation #3");
  const MemoryStats after = a->stats();
  EXPECT_EQ(after.allocated_bytes.current, before.allocated_bytes.current);
  EXPECT_EQ(after.reserved_bytes.current, before.reserved_bytes.current);
  EXPECT_EQ(after.num_ooms, before.num_ooms + 1);
  FaultStatus st = a->fault_status();
  EXPECT_TRUE(st.fired);
  EXPECT_EQ(st.seen, 3);
  Allocation third = a->allocate(8 * KiB);  // fired once: the next request succeeds
  EXPECT_NE(third.ptr, nullptr);
  for (const Allocation& x : {first, second, third}) a->deallocate(x);
  EXPECT_EQ(a->stats().allocated_bytes.current, 0);
}

TEST(FaultInjection, FailsTheKthSegmentRequestButNotCacheHits) {
  auto a = host_allocator();
  Allocation small = a->allocate(4 * KiB);  // the first small segment exists now
  a->inject_fault(FaultKind::segment, 2);
  Allocation hit = a->allocate(4 * KiB);   // served from the segment: not a segment request
  Allocation big1 = a->allocate(3 * MiB);  // segment request 1
  EXPECT_THROW_WITH(a->allocate(5 * MiB), OutOfMemoryError, "injected failure (segment request #2");
  EXPECT_EQ(a->stats().num_alloc_retries, 1);  // the real path: cache freed, tried again, failed
  Allocation big2 = a->allocate(5 * MiB);
  for (const Allocation& x : {small, hit, big1, big2}) a->deallocate(x);
  EXPECT_EQ(a->stats().allocated_bytes.current, 0);
}

TEST(FaultInjection, LimitKindLowersTheLimitUntilCleared) {
  auto a = host_allocator();
  a->set_memory_limit(64 * MiB);
  Allocation x = a->allocate(3 * MiB);
  a->inject_fault(FaultKind::limit, 1);
  // The first request fits what is reserved only if the cache has room: a new segment fails.
  EXPECT_THROW_WITH(a->allocate(3 * MiB), OutOfMemoryError, "the limit was lowered");
  EXPECT_THROW(a->allocate(3 * MiB), OutOfMemoryError);  // and stays lowered
  a->clear_fault();
  EXPECT_EQ(a->memory_limit(), 64 * MiB);
  Allocation y = a->allocate(3 * MiB);
  a->deallocate(x);
  a->deallocate(y);
}

TEST(FaultInjection, ParsesHeadroomFailAlloc) {
  EXPECT_EQ(parse_fault_injection("7", "E"), std::make_pair(FaultKind::allocation, int64_t{7}));
  EXPECT_EQ(parse_fault_injection("allocation:2", "E"), std::make_pair(FaultKind::allocation, int64_t{2}));
  EXPECT_EQ(parse_fault_injection("segment:1", "E"), std::make_pair(FaultKind::segment, int64_t{1}));
  EXPECT_EQ(parse_fault_injection("limit:40", "E"), std::make_pair(FaultKind::limit, int64_t{40}));
  EXPECT_THROW_WITH(parse_fault_injection("0", "HEADROOM_FAIL_ALLOC"), ValueError, "HEADROOM_FAIL_ALLOC");
  EXPECT_THROW_WITH(parse_fault_injection("-3", "E"), ValueError, "'-3'");
  EXPECT_THROW_WITH(parse_fault_injection("3x", "E"), ValueError, "'3x'");
  EXPECT_THROW_WITH(parse_fault_injection("disk:3", "E"), ValueError, "unknown kind 'disk'");
  auto a = host_allocator();
  EXPECT_THROW_WITH(a->inject_fault(FaultKind::allocation, 0), ValueError, "counted from 1");
}

TEST(MemorySize, AcceptsDecimalSizesWithUnits) {
  EXPECT_EQ(parse_memory_size("256MiB", "x"), 256 * MiB);
  EXPECT_EQ(parse_memory_size("256 MiB", "x"), 256 * MiB);
  EXPECT_EQ(parse_memory_size("1.5KiB", "x"), 1536u);
  EXPECT_EQ(parse_memory_size("2k", "x"), 2048u);
  EXPECT_EQ(parse_memory_size("1.3MiB", "x"), 1363148u);  // the fraction of a byte is dropped
  EXPECT_EQ(parse_memory_size(".5GB", "x"), 500000000u);
  EXPECT_EQ(parse_memory_size("1", "x"), 1u);
  EXPECT_EQ(parse_memory_size("none", "x"), 0u);
}

TEST(MemorySize, RefusesWhatIsNotASize) {
  // Each of these used to be read as something (no limit, 256 B, ...).
  EXPECT_THROW_WITH(parse_memory_size("0", "HEADROOM_MEMORY_LIMIT"), ValueError, "below one byte");
  EXPECT_THROW_WITH(parse_memory_size("0.4", "x"), ValueError, "below one byte");
  EXPECT_THROW_WITH(parse_memory_size("0MiB", "x"), ValueError, "below one byte");
  EXPECT_THROW_WITH(parse_memory_size("0x100", "x"), ValueError, "unknown unit 'x100'");
  EXPECT_THROW_WITH(parse_memory_size("1e9", "x"), ValueError, "unknown unit 'e9'");
  EXPECT_THROW_WITH(parse_memory_size("-5MiB", "x"), ValueError, "no number");
  EXPECT_THROW_WITH(parse_memory_size("+5MiB", "x"), ValueError, "no number");
  EXPECT_THROW_WITH(parse_memory_size("inf", "x"), ValueError, "no number");
  EXPECT_THROW_WITH(parse_memory_size(" 5MiB", "x"), ValueError, "no number");
  EXPECT_THROW_WITH(parse_memory_size("5MiB ", "x"), ValueError, "unknown unit");
  EXPECT_THROW_WITH(parse_memory_size("", "x"), ValueError, "no number");
  EXPECT_THROW_WITH(parse_memory_size("99999999999999999999", "x"), ValueError, "more memory than");
  EXPECT_THROW_WITH(parse_memory_size("90000000TB", "x"), ValueError, "more memory than");
}

TEST(MemoryLimit, BelowWhatIsReservedReleasesTheCacheAndHoldsForNewSegments) {
  auto a = host_allocator();
  Allocation live = a->allocate(6 * MiB);
  Allocation cached = a->allocate(6 * MiB);
  a->deallocate(cached);  // a whole free segment in the cache
  EXPECT_EQ(a->stats().reserved_bytes.current, static_cast<int64_t>(12 * MiB));
  a->set_memory_limit(4 * MiB);
  // The cache went; the live block's segment stays, above the limit.
  EXPECT_EQ(a->stats().reserved_bytes.current, static_cast<int64_t>(6 * MiB));
  EXPECT_THROW_WITH(a->allocate(1 * MiB + 512), OutOfMemoryError, "lowered below what live blocks reserve");
  a->deallocate(live);
  a->empty_cache();
  Allocation fits = a->allocate(2 * MiB);  // reserved <= limit again
  EXPECT_LE(a->stats().reserved_bytes.current, static_cast<int64_t>(4 * MiB));
  a->deallocate(fits);
}

TEST(OomReport, WithNoLimitAndNothingInUseStillSaysWhatMayHelp) {
  // A backend that has nothing to give, like a full GPU.
  struct Full : HostMemoryBackend {
    void* raw_alloc(size_t) override { return nullptr; }
  };
  CachingAllocator a(std::make_unique<Full>());
  try {
    a.allocate(4 * MiB);
    FAIL() << "no error";
  } catch (const OutOfMemoryError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("none set; the device itself is full"), std::string::npos) << m;
    EXPECT_NE(m.find("nothing else is in use"), std::string::npos) << m;
  }
}

TEST(OomReport, NamesOnlyRemediesHeadroomHas) {
  auto a = host_allocator();
  a->set_memory_limit(4 * MiB);
  Allocation act, par;
  {
    CategoryScope s(MemoryCategory::activation);
    act = a->allocate(2 * MiB);
  }
  {
    CategoryScope s(MemoryCategory::optimizer_state);
    par = a->allocate(1 * MiB);
  }
  try {
    a->allocate(3 * MiB);
    FAIL() << "no error";
  } catch (const OutOfMemoryError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("micro-batches"), std::string::npos) << m;
    EXPECT_NE(m.find("optimizer with less state"), std::string::npos) << m;
    EXPECT_NE(m.find("--checkpoint block|sqrt|selective"), std::string::npos) << m;  // recompute checkpointing exists
    // Offload exists (autograd/offload.h, optim/offload.h) and is named with its API and flag.
    EXPECT_NE(m.find("ActivationOffload; --offload activations"), std::string::npos) << m;
    EXPECT_NE(m.find("optim::OffloadedAdamW; --offload optimizer"), std::string::npos) << m;
    // The device report does not send a single process to sharding.
    for (const char* missing : {"shard", "ZeRO"})
      EXPECT_EQ(m.find(missing), std::string::npos) << "the report suggests " << missing << ":\n" << m;
  }
  a->deallocate(act);
  a->deallocate(par);
}

TEST(NoAllocationScope, RefusesAllocationsAndNests) {
  auto a = host_allocator();
  {
    NoAllocationScope outer("the commit phase");
    EXPECT_THROW_WITH(a->allocate(512), Error, "the commit phase must not allocate");
    {
      NoAllocationScope inner("the inner phase");
      EXPECT_STREQ(NoAllocationScope::active(), "the inner phase");
    }
    EXPECT_STREQ(NoAllocationScope::active(), "the commit phase");
  }
  EXPECT_EQ(NoAllocationScope::active(), nullptr);
  a->deallocate(a->allocate(512));
  EXPECT_EQ(a->stats().allocated_bytes.current, 0);
}

}  // namespace
}  // namespace headroom
