// headroom.h is the one include the README promises: this file includes nothing else of
// headroom's (not even test_util.h), and writes the README's snippets -- the memory section's
// caching_allocator(device).stats(), limits, out-of-memory errors, empty_host, the denormal
// switch, the memory report -- in the way a user would. It fails to compile when headroom.h
// lacks a header they need.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <unistd.h>

#include "headroom.h"

namespace {

using namespace headroom;

TEST(HeadroomH, TheReadmesMemorySnippetsCompileThroughHeadroomHAlone) {
  const Device device = Device::parse("cpu");
  CachingAllocator& allocator = caching_allocator(device);
  const size_t old_limit = allocator.memory_limit();
  allocator.set_memory_limit(parse_memory_size("64MiB", "the test's limit"));
  {
    Tensor x = Tensor::randn({256, 256});
    Tensor y = x.sum();
    const MemoryStats s = allocator.stats();
    EXPECT_GE(s.allocated_bytes.current, 256 * 256 * 4);
    EXPECT_GE(s.category(MemoryCategory::temporary).peak, 0);
    EXPECT_FALSE(format_bytes(s.reserved_bytes.peak).empty());
    EXPECT_GE(s.num_cache_hits + s.num_alloc_retries + s.num_ooms, 0);
  }
  bool out_of_memory = false;
  try {
    Tensor big = Tensor::empty({int64_t{1} << 30});  // 4 GiB under a 64 MiB limit
  } catch (const OutOfMemoryError& e) {
    out_of_memory = true;
    EXPECT_GT(e.requested_bytes(), e.limit_bytes());
  }
  EXPECT_TRUE(out_of_memory);
  allocator.empty_cache();
  allocator.set_memory_limit(old_limit);

  Tensor host = Tensor::empty_host({4}, DType::u8);  // data sets: outside the allocator
  EXPECT_EQ(host.storage()->allocator(), nullptr);
  Tensor pinned = Tensor::empty_pinned({4}, DType::f32);
  EXPECT_EQ(pinned.to(device, /*non_blocking=*/true).numel(), 4);
  const bool was = set_flush_denormal(false);
  set_flush_denormal(was);

  // --memory-report DIR (docs/memory-report.md).
  allocator.set_trace_enabled(true);
  { Tensor t = Tensor::ones({16}); }
  const auto dir = std::filesystem::temp_directory_path() / ("headroom_h_test_" + std::to_string(::getpid()));
  write_memory_report(dir.string(), device, "headroom.h test");
  EXPECT_TRUE(std::filesystem::exists(dir / "stats.json"));
  std::filesystem::remove_all(dir);
  allocator.set_trace_enabled(false);
  allocator.clear_trace();
}

TEST(HeadroomH, TheReadmesAutogradSnippetCompilesThroughHeadroomHAlone) {
  manual_seed(1);
  Tensor images = Tensor::randn({8, 784});
  Tensor labels = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}, {8}, DType::i64);
  Tensor w = (Tensor::randn({784, 10}) * 0.01).set_requires_grad(true);
  Tensor loss;
  {
    AutocastGuard amp(Device::cpu(), DType::bf16, /*enabled=*/false);
    loss = cross_entropy(matmul(images, w), labels);
  }
  loss.backward();
  EXPECT_EQ(w.grad().shape(), (Shape{784, 10}));
  {
    NoGradGuard no_grad;
    w.sub_(w.grad() * 0.1);
  }
  EXPECT_EQ(shape_numel(w.shape()), 7840);
}

}  // namespace
