// The out-of-memory sweep (issue 11): for one training step of a model with a set of techniques,
// fail each of the step's allocations (or segment requests, or drop the limit at each) in turn,
// through the allocator's fault injection (Note [fault injection] in engine/caching_allocator.h),
// and check every run:
//   - it recovers (the step completes) or ends with an OutOfMemoryError;
//   - a recovered step leaves every byte of training state -- parameters, optimizer state, the
//     loss scaler, the model's buffers and the global RNG -- identical to a clean run of the
//     same split (the micro-batch size the recovery ended at);
//   - a refused step leaves them identical to the state before the step;
//   - allocated bytes after the step equal the clean run's, and return to the baseline once the
//     run's objects are gone.
// A technique is one SweepCase: a function that builds the model, optimizer, scaler, batch and
// step function (deterministically, from a seed) and the number of clean steps before the step
// under test. Later techniques (checkpointing, offload, DDP, ZeRO) add entries.
#pragma once

#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/autocast.h"
#include "engine/caching_allocator.h"
#include "engine/rng.h"
#include "nn/module.h"
#include "optim/batch_split.h"
#include "optim/grad_scaler.h"
#include "optim/optimizer.h"

namespace headroom::testing {

// Every byte of a training state, on the host, by name.
struct StateSnapshot {
  std::map<std::string, std::string> entries;
  // "" when equal, else the first entry that differs (or is missing).
  std::string first_difference(const StateSnapshot& other) const {
    for (const auto& [k, v] : entries) {
      auto it = other.entries.find(k);
      if (it == other.entries.end()) return k + " (missing on the other side)";
      if (it->second != v) return k;
    }
    for (const auto& [k, v] : other.entries)
      if (!entries.count(k)) return k + " (missing on this side)";
    return "";
  }
};

// dtype, shape and the raw bytes of t in row-major order.
inline std::string tensor_bytes(const Tensor& t) {
  if (!t.defined()) return "undefined";
  Tensor host = t.to(Device::cpu()).contiguous();
  std::string out = std::string(dtype_name(t.dtype())) + shape_str(t.shape()) + ":";
  out.append(static_cast<const char*>(host.raw_data()), host.nbytes());
  return out;
}

inline StateSnapshot snapshot_state(const nn::Module& model, const optim::Optimizer& opt,
                                    const optim::GradScaler* scaler) {
  StateSnapshot s;
  for (const auto& [name, p] : model.named_parameters()) s.entries["param:" + name] = tensor_bytes(p);
  for (const auto& [name, b] : model.named_buffers()) s.entries["buffer:" + name] = tensor_bytes(b);
  for (const auto& [name, t] : opt.state_dict()) s.entries["optim:" + name] = tensor_bytes(t);
  if (scaler)
    for (const auto& [name, t] : scaler->state_dict()) s.entries["scaler:" + name] = tensor_bytes(t);
  const Generator& g = default_generator();
  s.entries["rng"] = std::to_string(g.seed()) + "/" + std::to_string(g.offset());
  return s;
}

// One technique's training setup, built the same way every time.
struct Trainer {
  std::shared_ptr<nn::Module> model;
  std::unique_ptr<optim::Optimizer> optimizer;
  std::unique_ptr<optim::GradScaler> scaler;  // or null
  Tensor inputs, targets;
  optim::BatchSplitter::StepFn fn;

  std::unique_ptr<optim::BatchSplitter> splitter(int64_t micro_batches) const {
    optim::BatchSplitter::Options options;
    options.scaler = scaler.get();
    return std::make_unique<optim::BatchSplitter>(*optimizer, micro_batches, model.get(), options);
  }
  optim::SplitStepResult step(optim::BatchSplitter& s) const {
    AutocastCacheScope cache;  // weights cast once per step (a no-op without autocast)
    return s.step(inputs, targets, fn);
  }
  StateSnapshot snapshot() const { return snapshot_state(*model, *optimizer, scaler.get()); }
};

struct SweepCase {
  std::string name;
  std::function<Trainer()> make;
  int warm_steps = 1;  // clean steps before the step under test (0: the first, which makes state)
  // The splitter of the step under test: kAuto recovers by splitting; a fixed count refuses an
  // out-of-memory error in forward or backward (and recovers one in the optimizer step).
  int64_t micro_batches = optim::BatchSplitter::kAuto;
  // Fail the pinned host pool's requests (Note [host pool]: offloaded activations and optimizer
  // state) instead of the device's.
  bool host_pool = false;
};

struct SweepCounts {
  int64_t runs = 0, recovered = 0, refused = 0, identical = 0, leaked_bytes = 0;
  std::vector<std::string> failures;  // one line per run that broke a rule (at most a few kept)
  void add(const SweepCounts& o) {
    runs += o.runs;
    recovered += o.recovered;
    refused += o.refused;
    identical += o.identical;
    leaked_bytes += o.leaked_bytes;
    failures.insert(failures.end(), o.failures.begin(), o.failures.end());
  }
};

// The sweep of one case and one fault kind: every stride-th request of the clean step's count.
inline SweepCounts sweep(const SweepCase& c, FaultKind kind, int64_t stride = 1) {
  // Faults go to `a`; bytes are counted on the device and the host pool together (what an
  // offloaded step leaves behind may be on either side).
  CachingAllocator& device = caching_allocator(Device::cpu());
  CachingAllocator& pool = headroom::host_pool();
  CachingAllocator& a = c.host_pool ? pool : device;
  struct Both {
    CachingAllocator &device, &pool;
    int64_t allocated() const { return device.stats().allocated_bytes.current + pool.stats().allocated_bytes.current; }
  } both{device, pool};
  SweepCounts counts;
  auto fail = [&](const std::string& what) {
    if (counts.failures.size() < 8) counts.failures.push_back(c.name + " (" + fault_kind_name(kind) + "): " + what);
  };
  // A trainer after its warm-up, with no gradients and an empty cache, ready for the step.
  auto prepared = [&]() {
    auto t = std::make_unique<Trainer>(c.make());
    auto s = t->splitter(c.micro_batches);
    for (int w = 0; w < c.warm_steps; ++w) t->step(*s);
    t->optimizer->zero_grad();
    t->model->zero_grad();
    device.empty_cache();
    pool.empty_cache();
    return std::make_pair(std::move(t), std::move(s));
  };
  const int64_t n = c.make().inputs.size(0);
  const int64_t baseline = both.allocated();

  // The clean run: the state before and after, and how many requests the step makes.
  StateSnapshot before;
  std::map<int64_t, std::pair<StateSnapshot, int64_t>> reference;  // micro-batch size -> after, allocated
  int64_t requests = 0;
  {
    auto [t, s] = prepared();
    before = t->snapshot();
    const MemoryStats st0 = a.stats();
    optim::SplitStepResult r = t->step(*s);
    const MemoryStats st1 = a.stats();
    requests =
        kind == FaultKind::segment ? st1.num_device_alloc - st0.num_device_alloc : st1.num_allocs - st0.num_allocs;
    const int64_t m = r.micro_batch_size;
    r = {};
    reference[m] = {t->snapshot(), both.allocated()};
  }
  // The clean run of micro-batches of m samples after the same warm-up (fixed split).
  auto reference_for = [&](int64_t m) -> const std::pair<StateSnapshot, int64_t>& {
    auto it = reference.find(m);
    if (it != reference.end()) return it->second;
    auto [t, s] = prepared();
    const int64_t k = (n + m - 1) / m;
    auto fixed = t->splitter(k);
    optim::SplitStepResult r = t->step(*fixed);
    if (r.micro_batch_size != m) fail("no fixed split gives micro-batches of " + std::to_string(m));
    r = {};
    return reference[m] = {t->snapshot(), both.allocated()};
  };

  for (int64_t k = 1; k <= requests; k += stride) {
    ++counts.runs;
    const std::string at = "request " + std::to_string(k) + " of " + std::to_string(requests);
    StateSnapshot after;
    int64_t allocated_before = 0, allocated_after = 0, micro_batch = 0;
    bool recovered = false;
    {
      auto [t, s] = prepared();
      allocated_before = both.allocated();
      a.inject_fault(kind, k);
      try {
        optim::SplitStepResult r = t->step(*s);
        recovered = true;
        micro_batch = r.micro_batch_size;
      } catch (const OutOfMemoryError& e) {
        if (std::strlen(e.what()) == 0) fail(at + ": an out-of-memory error with no message");
      } catch (const std::exception& e) {
        a.clear_fault();
        fail(at + ": not an OutOfMemoryError: " + e.what());
        continue;
      }
      const bool fired = a.fault_status().fired;
      a.clear_fault();
      if (!fired) fail(at + ": the fault never fired (the step made fewer requests than the clean run)");
      after = t->snapshot();
      allocated_after = both.allocated();
    }
    const int64_t leaked = both.allocated() - baseline;
    if (leaked != 0) {
      counts.leaked_bytes += leaked;
      fail(at + ": " + std::to_string(leaked) + " bytes still allocated after the run");
    }
    if (recovered) {
      ++counts.recovered;
      const auto& [ref, ref_allocated] = reference_for(micro_batch);
      const std::string diff = after.first_difference(ref);
      if (diff.empty()) ++counts.identical;
      else
        fail(at + ": recovered at micro-batches of " + std::to_string(micro_batch) + " but " + diff +
             " differs from a clean run of that split");
      if (allocated_after != ref_allocated)
        fail(at + ": " + std::to_string(allocated_after) + " bytes allocated after the step, the clean run has " +
             std::to_string(ref_allocated));
    } else {
      ++counts.refused;
      const std::string diff = after.first_difference(before);
      if (diff.empty()) ++counts.identical;
      else fail(at + ": refused, but " + diff + " changed");
      if (allocated_after != allocated_before)
        fail(at + ": refused, but " + std::to_string(allocated_after - allocated_before) +
             " bytes more are allocated than before the step");
    }
  }
  return counts;
}

inline std::string describe_counts(const SweepCounts& c) {
  std::ostringstream os;
  os << c.runs << " runs, " << c.recovered << " recovered, " << c.refused << " refused cleanly, " << c.identical
     << " bit-identical, " << c.leaked_bytes << " bytes leaked";
  return os.str();
}

}  // namespace headroom::testing
