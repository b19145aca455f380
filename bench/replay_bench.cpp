// Replays the allocations of one training step of the Fashion-MNIST CNN through a fresh caching
// allocator and reports how much it reserves beyond what is in use at the peak:
// peak reserved / peak allocated (target: at most 1.10). Caching trades memory for speed; this
// ratio is the memory side of that trade, measured on a real workload rather than a synthetic
// one.
//
//   ./bench/replay_bench [--batch-size 128] [--steps 3] [--verbose]
//
// It trains the example's CNN (conv 16 and 32 channels with BatchNorm, Adam) on synthetic
// images of Fashion-MNIST's shape for a few warm-up steps, records the allocator's event trace
// for one more step, and replays each alloc (by requested size) and free, in order, through a
// new CachingAllocator over host memory.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "engine/caching_allocator.h"
#include "headroom.h"
#include "nn/nn.h"
#include "optim/optim.h"

using namespace headroom;

namespace {

bool g_verbose = false;  // --verbose: the recorded trace and each new segment of the replay

std::shared_ptr<nn::Sequential> make_cnn() {
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Conv2d>(1, 16, 3, 1, 1, 1, false), std::make_shared<nn::BatchNorm2d>(16),
      std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(2),
      std::make_shared<nn::Conv2d>(16, 32, 3, 1, 1, 1, false), std::make_shared<nn::BatchNorm2d>(32),
      std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(2), std::make_shared<nn::Flatten>(),
      std::make_shared<nn::Linear>(32 * 7 * 7, 128), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(128, 10)});
}

struct ReplayResult {
  int64_t peak_allocated = 0;
  int64_t peak_reserved = 0;
  int64_t allocs = 0;
  int64_t device_allocs = 0;
};

ReplayResult replay(const std::vector<TraceEvent>& trace) {
  CachingAllocator alloc(std::make_unique<HostMemoryBackend>());
  std::map<uint64_t, Allocation> live;  // recorded address -> replayed allocation
  ReplayResult r;
  for (const TraceEvent& e : trace) {
    if (e.kind == TraceKind::alloc) {
      const int64_t before = alloc.stats().num_device_alloc;
      live[e.address] = alloc.allocate(static_cast<size_t>(e.requested), Stream{Device::cpu(), e.stream}, e.category);
      if (g_verbose && alloc.stats().num_device_alloc != before) {
        std::printf("new segment for %s: allocated %s reserved %s; free blocks:", format_bytes(e.requested).c_str(),
                    format_bytes(alloc.stats().allocated_bytes.current).c_str(),
                    format_bytes(alloc.stats().reserved_bytes.current).c_str());
        for (const auto& seg : alloc.snapshot())
          for (const auto& b : seg.blocks)
            if (b.state == "free") std::printf(" %s", format_bytes(b.size).c_str());
        std::printf("\n");
      }
      ++r.allocs;
      if (g_verbose && alloc.stats().allocated_bytes.current == alloc.stats().allocated_bytes.peak &&
          alloc.stats().allocated_bytes.current > (1 << 20) * 25) {
        std::printf("at a peak of %s (reserved %s):\n", format_bytes(alloc.stats().allocated_bytes.current).c_str(),
                    format_bytes(alloc.stats().reserved_bytes.current).c_str());
        for (const auto& seg : alloc.snapshot()) {
          std::printf("  segment %s%s:", format_bytes(seg.size).c_str(), seg.small_pool ? " (small)" : "");
          for (const auto& b : seg.blocks)
            std::printf(" %s%s", b.state == "free" ? "FREE " : "", format_bytes(b.size).c_str());
          std::printf("\n");
        }
      }
    } else if (e.kind == TraceKind::free) {
      auto it = live.find(e.address);
      if (it == live.end()) continue;  // allocated before the recording began
      alloc.deallocate(it->second);
      live.erase(it);
    }
  }
  for (auto& [addr, a] : live) alloc.deallocate(a);
  MemoryStats s = alloc.stats();
  r.peak_allocated = s.allocated_bytes.peak;
  r.peak_reserved = s.reserved_bytes.peak;
  r.device_allocs = s.num_device_alloc;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t batch = 128, warmup = 3;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--verbose") g_verbose = true;
    else if (flag == "--batch-size" && i + 1 < argc) batch = std::atoll(argv[++i]);
    else if (flag == "--steps" && i + 1 < argc) warmup = std::atoll(argv[++i]);
    else {
      std::fprintf(stderr, "usage: replay_bench [--batch-size N] [--steps N] [--verbose]\n");
      return 2;
    }
  }
  if (batch < 1 || warmup < 0) {
    std::fprintf(stderr, "replay_bench: --batch-size must be >= 1 and --steps >= 0\n");
    return 2;
  }
  manual_seed(1);
  auto model = make_cnn();
  optim::Adam opt(model->parameters(), 1e-3);
  Tensor images = Tensor::rand({batch, 1, 28, 28});
  Tensor labels = (Tensor::rand({batch}) * 10.0).to(DType::i64);
  auto step = [&] {
    opt.zero_grad();
    Tensor loss = cross_entropy((*model)(images), labels);
    loss.backward();
    opt.step();
  };
  for (int64_t i = 0; i < warmup; ++i) step();

  CachingAllocator& cpu = caching_allocator(Device::cpu());
  cpu.clear_trace();
  cpu.set_trace_enabled(true);
  step();
  cpu.set_trace_enabled(false);
  std::vector<TraceEvent> trace = cpu.trace();

  if (g_verbose)
    for (const TraceEvent& e : trace)
      std::printf("%-13s %10lld %-16s alloc %s reserved %s\n", trace_kind_name(e.kind),
                  static_cast<long long>(e.requested ? e.requested : e.bytes), category_name(e.category),
                  format_bytes(e.allocated_after).c_str(), format_bytes(e.reserved_after).c_str());
  ReplayResult r = replay(trace);
  const double ratio = static_cast<double>(r.peak_reserved) / static_cast<double>(r.peak_allocated);
  std::printf("replay of one CNN training step (batch %lld): %lld allocations, %lld segments\n",
              static_cast<long long>(batch), static_cast<long long>(r.allocs), static_cast<long long>(r.device_allocs));
  std::printf("| peak allocated | peak reserved | reserved / allocated |\n|---|---|---|\n");
  std::printf("| %s | %s | %.3f |\n", format_bytes(r.peak_allocated).c_str(), format_bytes(r.peak_reserved).c_str(),
              ratio);
  std::printf("target: <= 1.10 -> %s\n", ratio <= 1.10 ? "met" : "NOT met");
  return 0;
}
