// A short traced workload that writes a memory report: a small MLP trained with SGD and
// momentum for a few steps on the CPU allocator, with parameters, optimizer state,
// activations, gradients and temporaries each in their category. It exists so that
// scripts/check-memory-report.sh (and anyone curious) has a report to open without a full
// example program; the example programs do the same through --memory-report DIR.
//
//   memory_report_demo DIR [steps]
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "engine/caching_allocator.h"
#include "report/memory_report.h"
#include "headroom.h"

using namespace headroom;

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: %s DIR [steps]\n  writes a memory report of a small traced MLP run into DIR\n",
                 argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const int steps = argc == 3 ? std::atoi(argv[2]) : 4;
  if (steps < 1) {
    std::fprintf(stderr, "steps must be a positive number, got '%s'\n", argv[2]);
    return 2;
  }
  try {
    CachingAllocator& alloc = caching_allocator(Device::cpu());
    alloc.set_trace_enabled(true);

    const int64_t batch = 256, width = 512, depth = 4;
    std::vector<Tensor> weights, velocity;
    {
      CategoryScope scope(MemoryCategory::parameter);
      for (int64_t l = 0; l < depth; ++l)
        weights.push_back(mul(Tensor::randn({width, width}), Tensor::scalar(0.04)).set_requires_grad());
    }
    {
      CategoryScope scope(MemoryCategory::optimizer_state);
      for (const Tensor& w : weights) velocity.push_back(Tensor::zeros(w.shape()));
    }
    for (int step = 0; step < steps; ++step) {
      Tensor x = Tensor::randn({batch, width});
      Tensor target = Tensor::randn({batch, width});
      Tensor h = x;
      for (const Tensor& w : weights) h = relu(matmul(h, w));
      Tensor loss = mse_loss(h, target);
      loss.backward();
      NoGradGuard no_grad;
      for (size_t l = 0; l < weights.size(); ++l) {
        velocity[l].mul_(0.9).add_(weights[l].grad());
        weights[l].add_(velocity[l], -0.01);
        weights[l].zero_grad();
      }
      std::printf("step %d: loss %.4f, allocated %s, peak %s\n", step, loss.item<double>(),
                  format_bytes(alloc.stats().allocated_bytes.current).c_str(),
                  format_bytes(alloc.stats().allocated_bytes.peak).c_str());
    }
    write_memory_report(dir, Device::cpu(), "memory_report_demo: MLP 4x512, batch 256, SGD with momentum");
    std::printf("memory report written to %s\n", dir.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "memory_report_demo: %s\n", e.what());
    return 1;
  }
}
