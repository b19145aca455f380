// Pipeline and tensor parallelism in issue 11's out-of-memory sweep (tests/optim/sweep_harness.h
// for the one-device version): for each device of the split and every third allocation request
// a clean step makes there (every one: 330 and 348 runs, all passing, 2026-12-07; a third keeps
// the sanitizers' CI share short), a run fails that request, through that device's fault injection (Note
// [fault injection]); the step must end with an OutOfMemoryError on the caller (no hang, no other
// error), and then:
//   - every device's parameters and optimizer state are as before the step (the pipeline's one
//     optimizer is all-or-nothing; the tensor-parallel ranks agree before committing, Note
//     [agreed failure]), and once the partial gradients are dropped (zero_grad) every device's
//     allocator holds what it held before the step;
//   - the next step, run clean, ends where a clean run ends: the same state, to the bit, and the
//     same bytes on every device -- the in-process groups mended after the failure.
#include <gtest/gtest.h>

#include "dist/local_group.h"
#include "nn/nn.h"
#include "nn/parallel/gpt_parallel.h"
#include "optim/optim.h"
#include "optim/sweep_harness.h"
#include "test_util.h"

namespace headroom {
namespace {

using headroom::testing::StateSnapshot;
using headroom::testing::tensor_bytes;

nn::GPTConfig tiny() {
  nn::GPTConfig c;
  c.vocab_size = 32;
  c.block_size = 8;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 16;
  return c;
}

std::pair<Tensor, Tensor> tokens() {
  std::vector<int64_t> x(4 * 8), y(4 * 8);
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = static_cast<int64_t>((i * 5) % 32);
    y[i] = static_cast<int64_t>((i * 3 + 1) % 32);
  }
  return {Tensor::from_vector(x, {4, 8}, DType::i64), Tensor::from_vector(y, {4, 8}, DType::i64)};
}

// A split model and what steps it: built alike every time.
struct Split {
  std::vector<Device> devices;
  std::vector<std::shared_ptr<nn::Module>> parts;  // stages, or ranks
  std::vector<std::unique_ptr<optim::Optimizer>> optimizers;
  std::function<void()> step;
  std::function<void()> zero_grad;
  // keep-alive
  std::unique_ptr<nn::GPT> model;
  std::vector<std::shared_ptr<nn::GPTStage>> stages;
  std::unique_ptr<nn::Pipeline> pipe;
  std::vector<std::unique_ptr<dist::ProcessGroup>> groups;
  std::vector<std::shared_ptr<nn::TensorParallelGPT>> ranks;
  Tensor x, y;

  StateSnapshot snapshot() const {
    StateSnapshot s;
    for (size_t k = 0; k < parts.size(); ++k)
      for (const auto& [name, p] : parts[k]->named_parameters())
        s.entries[str_cat("part", k, ":", name)] = tensor_bytes(p);
    for (size_t k = 0; k < optimizers.size(); ++k)
      for (const auto& [name, t] : optimizers[k]->state_dict())
        s.entries[str_cat("optim", k, ":", name)] = tensor_bytes(t);
    return s;
  }
  std::vector<int64_t> allocated() const {
    std::vector<int64_t> out;
    for (const Device& d : devices) out.push_back(caching_allocator(d).stats().allocated_bytes.current);
    return out;
  }
};

std::unique_ptr<Split> make_pipeline() {
  auto s = std::make_unique<Split>();
  s->devices = {Device::cpu(0), Device::cpu(1)};
  manual_seed(8);
  s->model = std::make_unique<nn::GPT>(tiny());
  s->stages = nn::GPTStage::split(*s->model, s->devices);
  s->pipe = std::make_unique<nn::Pipeline>(nn::GPTStage::pipeline_stages(s->stages));
  for (const auto& st : s->stages) s->parts.push_back(st);
  s->optimizers.push_back(std::make_unique<optim::AdamW>(s->pipe->parameters(), 1e-2));
  std::tie(s->x, s->y) = tokens();
  Split* p = s.get();
  s->step = [p] {
    p->pipe->run(p->x, p->y, 2, nn::GPTStage::loss_fn(p->stages));
    nn::GPTStage::tie_gradients(p->stages);
    p->optimizers[0]->step();
  };
  s->zero_grad = [p] { p->optimizers[0]->zero_grad(); };
  return s;
}

std::unique_ptr<Split> make_tensor_parallel() {
  auto s = std::make_unique<Split>();
  s->devices = {Device::cpu(0), Device::cpu(1)};
  manual_seed(9);
  nn::GPT full(tiny());
  s->groups = dist::make_local_groups(s->devices);
  for (size_t r = 0; r < s->devices.size(); ++r) {
    s->ranks.push_back(nn::TensorParallelGPT::from(full, *s->groups[r], s->devices[r]));
    s->parts.push_back(s->ranks.back());
    s->optimizers.push_back(std::make_unique<optim::AdamW>(s->ranks.back()->parameters(), 1e-2));
    // Note [agreed failure]: every rank commits its step, or none.
    s->optimizers.back()->set_step_agreement(dist::step_agreement(*s->groups[r], s->devices[r]));
  }
  std::tie(s->x, s->y) = tokens();
  Split* p = s.get();
  s->step = [p] {
    dist::run_on_groups(p->groups, [p](int r, dist::ProcessGroup&) {
      const size_t i = static_cast<size_t>(r);
      const Device d = p->devices[i];
      p->ranks[i]->loss(p->x.to(d), p->y.to(d)).backward();
      p->optimizers[i]->step();
    });
  };
  s->zero_grad = [p] {
    for (auto& o : p->optimizers) o->zero_grad();
  };
  return s;
}

struct Counts {
  int64_t runs = 0, refused = 0, intact = 0, recovered = 0;
  std::vector<std::string> failures;
};

Counts sweep(const std::function<std::unique_ptr<Split>()>& make, int64_t stride) {
  Counts c;
  auto fail = [&](const std::string& what) {
    if (c.failures.size() < 8) c.failures.push_back(what);
  };
  // After one clean step (the optimizer state exists), gradients dropped, caches empty.
  auto prepared = [&] {
    auto s = make();
    s->step();
    s->zero_grad();
    for (const Device& d : s->devices) caching_allocator(d).empty_cache();
    return s;
  };
  // The clean step: the state and bytes it ends with, and the requests it makes per device.
  StateSnapshot clean_after;
  std::vector<int64_t> clean_allocated, requests;
  {
    auto s = prepared();
    std::vector<int64_t> before;
    for (const Device& d : s->devices) before.push_back(caching_allocator(d).stats().num_allocs);
    s->step();
    s->zero_grad();
    for (size_t k = 0; k < s->devices.size(); ++k)
      requests.push_back(caching_allocator(s->devices[k]).stats().num_allocs - before[k]);
    clean_after = s->snapshot();
    clean_allocated = s->allocated();
  }
  for (size_t d = 0; d < requests.size(); ++d)
    for (int64_t k = 1; k <= requests[d]; k += stride) {
      ++c.runs;
      auto s = prepared();
      const Device dev = s->devices[d];
      const std::string at = str_cat(dev.str(), " request ", k, " of ", requests[d]);
      const StateSnapshot before = s->snapshot();
      const std::vector<int64_t> allocated_before = s->allocated();
      caching_allocator(dev).inject_fault(FaultKind::allocation, k);
      bool oom = false;
      try {
        s->step();
      } catch (const OutOfMemoryError&) {
        oom = true;
      } catch (const std::exception& e) {
        fail(at + ": not an OutOfMemoryError: " + e.what());
      }
      const bool fired = caching_allocator(dev).fault_status().fired;
      caching_allocator(dev).clear_fault();
      if (!fired) {
        fail(at + ": the fault never fired");
        continue;
      }
      if (!oom) {
        fail(at + ": the step did not fail");
        continue;
      }
      ++c.refused;
      s->zero_grad();
      const std::string diff = s->snapshot().first_difference(before);
      if (!diff.empty()) fail(at + ": " + diff + " changed");
      else if (s->allocated() != allocated_before) fail(at + ": the allocators do not hold what they held before");
      else ++c.intact;
      // The next step, clean, as a clean run's.
      try {
        s->step();
        s->zero_grad();
        const std::string d2 = s->snapshot().first_difference(clean_after);
        if (!d2.empty()) fail(at + ": the next step's " + d2 + " differs from a clean run's");
        else if (s->allocated() != clean_allocated) fail(at + ": the next step ends with other bytes allocated");
        else ++c.recovered;
      } catch (const std::exception& e) {
        fail(at + ": the next step failed: " + e.what());
      }
    }
  return c;
}

void check(const Counts& c, const char* what) {
  for (const auto& f : c.failures) ADD_FAILURE() << what << ": " << f;
  EXPECT_GT(c.runs, 10) << what;
  EXPECT_EQ(c.refused, c.runs) << what;
  EXPECT_EQ(c.intact, c.runs) << what;
  EXPECT_EQ(c.recovered, c.runs) << what;
  std::cout << what << ": " << c.runs << " runs, " << c.refused << " refused, " << c.intact << " left intact, "
            << c.recovered << " then stepped as a clean run\n";
}

TEST(ModelParallelSweep, APipelineStageOutOfMemoryLeavesEveryDeviceAsItWas) {
  check(sweep(make_pipeline, 3), "pipeline");
}

TEST(ModelParallelSweep, ATensorParallelRankOutOfMemoryLeavesEveryDeviceAsItWas) {
  check(sweep(make_tensor_parallel, 3), "tensor parallel");
}

}  // namespace
}  // namespace headroom
