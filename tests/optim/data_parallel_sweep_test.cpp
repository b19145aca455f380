// DDP and ZeRO in the out-of-memory sweep (tests/optim/sweep_harness.h), under mpirun (label mpi;
// alone it is a world of one and checks the same rules): each run fails one allocation of the
// step on ONE rank -- rank k mod N fails its k-th -- and the others run clean. Note [agreed
// failure] says what must happen, and every run checks it:
//   - every rank ends the step the same way: all recovered (at the same micro-batch size) or
//     all refused;
//   - a recovered step leaves each rank's state (parameters, optimizer state or its shard, RNG)
//     identical to a clean run of that split, a refused one as it was before the step;
//   - the parameters are identical on every rank;
//   - nothing leaks: allocated bytes return to the baseline.
#include <gtest/gtest.h>

#include <functional>

#include "dist/process_group.h"
#include "nn/nn.h"
#include "optim/optim.h"
#include "data_parallel_util.h"
#include "sweep_harness.h"
#include "test_util.h"

namespace headroom {
namespace {

using headroom::testing::StateSnapshot;

using headroom::testing::pg;

struct DPTrainer {
  std::shared_ptr<nn::Module> model;
  std::shared_ptr<nn::DistributedDataParallel> ddp;
  std::unique_ptr<optim::Optimizer> optimizer;
  std::unique_ptr<optim::BatchSplitter> splitter;
  Tensor inputs, targets;
  optim::SplitStepResult step() {
    return splitter->step(inputs, targets, [this](const Tensor& x, const Tensor& y) {
      return optim::MicroBatchOutput{cross_entropy((*ddp)(x), y)};
    });
  }
  StateSnapshot snapshot() const { return headroom::testing::snapshot_state(*model, *optimizer, nullptr); }
};

struct DPCase {
  std::string name;
  int zero_stage = 0;
  int64_t micro_batches = optim::BatchSplitter::kAuto;
};

std::unique_ptr<DPTrainer> make_trainer(const DPCase& c, int64_t micro_batches) {
  auto t = std::make_unique<DPTrainer>();
  manual_seed(31);
  t->model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(12, 40), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(40, 5)});
  nn::DDPOptions o;
  o.zero_stage = c.zero_stage;
  o.first_bucket_cap_bytes = 256;
  o.bucket_cap_bytes = 1024;
  t->ddp = std::make_shared<nn::DistributedDataParallel>(t->model, pg(), o);
  auto adamw = [](std::vector<Tensor> ps) { return std::make_unique<optim::AdamW>(std::move(ps), 0.01); };
  if (c.zero_stage > 0) t->optimizer = std::make_unique<optim::ZeroRedundancyOptimizer>(*t->ddp, adamw);
  else t->optimizer = adamw(t->ddp->parameters());
  optim::BatchSplitter::Options so;
  so.ddp = t->ddp.get();
  t->splitter = std::make_unique<optim::BatchSplitter>(*t->optimizer, micro_batches, t->ddp.get(), so);
  manual_seed(77);
  const int64_t per = 8, n = per * pg().size();
  Tensor x = Tensor::randn({n, 12});
  std::vector<int64_t> y(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) y[static_cast<size_t>(i)] = i % 5;
  t->inputs = x.slice(0, pg().rank() * per, (pg().rank() + 1) * per).contiguous();
  t->targets =
      Tensor::from_vector(y, {n}, DType::i64).slice(0, pg().rank() * per, (pg().rank() + 1) * per).contiguous();
  return t;
}

int64_t max_over_ranks(int64_t v) {
  Tensor t = Tensor::full({1}, static_cast<double>(v), DType::f64);
  pg().all_reduce(t, dist::ReduceOp::max)->wait();
  return static_cast<int64_t>(t.item<double>());
}

bool same_on_every_rank(const std::string& bytes) {
  const double h = static_cast<double>(std::hash<std::string>{}(bytes) % (uint64_t{1} << 52));
  Tensor lo = Tensor::full({1}, h, DType::f64), hi = Tensor::full({1}, h, DType::f64);
  pg().all_reduce(lo, dist::ReduceOp::min)->wait();
  pg().all_reduce(hi, dist::ReduceOp::max)->wait();
  return lo.item<double>() == hi.item<double>();
}

std::string parameter_bytes(const DPTrainer& t) {
  std::string s;
  for (const auto& [name, p] : t.model->named_parameters()) s += name + headroom::testing::tensor_bytes(p);
  return s;
}

testing::SweepCounts sweep(const DPCase& c) {
  CachingAllocator& a = caching_allocator(Device::cpu());
  testing::SweepCounts counts;
  auto fail = [&](const std::string& what) {
    if (counts.failures.size() < 8) counts.failures.push_back(str_cat(c.name, " (rank ", pg().rank(), "): ", what));
  };
  auto prepared = [&](int64_t micro_batches) {
    auto t = make_trainer(c, micro_batches);
    t->step();  // a warm step: the optimizer state exists
    t->optimizer->zero_grad();
    t->model->zero_grad();
    a.empty_cache();
    return t;
  };
  const int64_t baseline = a.stats().allocated_bytes.current;
  StateSnapshot before;
  std::map<int64_t, StateSnapshot> reference;  // micro-batch size -> state after a clean step
  int64_t requests = 0;
  {
    auto t = prepared(c.micro_batches);
    before = t->snapshot();
    const int64_t a0 = a.stats().num_allocs;
    const int64_t m = t->step().micro_batch_size;
    requests = max_over_ranks(a.stats().num_allocs - a0);
    reference[m] = t->snapshot();
  }
  // Collective: every rank asks for the same sizes in the same order (the outcome is agreed).
  auto reference_for = [&](int64_t m) -> const StateSnapshot& {
    auto it = reference.find(m);
    if (it != reference.end()) return it->second;
    auto t = prepared(c.micro_batches);  // the same warm step, then the step as a fixed split
    optim::BatchSplitter::Options so;
    so.ddp = t->ddp.get();
    t->splitter = std::make_unique<optim::BatchSplitter>(*t->optimizer, (8 + m - 1) / m, t->ddp.get(), so);
    if (t->step().micro_batch_size != m) fail(str_cat("no fixed split gives micro-batches of ", m));
    return reference[m] = t->snapshot();
  };
  for (int64_t k = 1; k <= requests; ++k) {
    ++counts.runs;
    const bool mine = k % pg().size() == pg().rank();
    const std::string at = str_cat("allocation ", k, " of ", requests, mine ? " failed here" : " failed on a peer");
    bool recovered = false;
    int64_t micro_batch = 0;
    StateSnapshot after;
    std::string params;
    {
      auto t = prepared(c.micro_batches);
      if (mine) a.inject_fault(FaultKind::allocation, k);
      try {
        micro_batch = t->step().micro_batch_size;
        recovered = true;
      } catch (const OutOfMemoryError&) {
      } catch (const std::exception& e) {
        a.clear_fault();
        fail(at + ": not an OutOfMemoryError: " + e.what());
      }
      a.clear_fault();
      after = t->snapshot();
      params = parameter_bytes(*t);
    }
    if (a.stats().allocated_bytes.current != baseline) {
      counts.leaked_bytes += a.stats().allocated_bytes.current - baseline;
      fail(at + ": " + std::to_string(a.stats().allocated_bytes.current - baseline) + " bytes still allocated");
    }
    // The outcome, agreed: the same on every rank.
    const int64_t outcome = recovered ? micro_batch : 0;
    if (max_over_ranks(outcome) != -max_over_ranks(-outcome)) fail(at + ": the ranks ended the step differently");
    if (!same_on_every_rank(params)) fail(at + ": the parameters differ between ranks");
    const StateSnapshot& expected = recovered ? reference_for(micro_batch) : before;
    const std::string diff = after.first_difference(expected);
    if (recovered) ++counts.recovered;
    else ++counts.refused;
    if (diff.empty()) ++counts.identical;
    else fail(at + (recovered ? ": recovered, but " : ": refused, but ") + diff + " differs");
  }
  return counts;
}

TEST(DataParallelSweep, AnOutOfMemoryErrorOnOneRankIsAgreedByAll) {
  const std::vector<DPCase> cases = {
      {"ddp auto", 0},
      {"zero1 auto", 1},
      {"zero2 auto", 2},
      {"ddp 2 micro-batches", 0, 2},  // fixed: refuses a forward/backward failure, on every rank
  };
  testing::SweepCounts total;
  for (const DPCase& c : cases) {
    const testing::SweepCounts counts = sweep(c);
    for (const std::string& f : counts.failures) ADD_FAILURE() << f;
    if (c.micro_batches == optim::BatchSplitter::kAuto) {
      EXPECT_GT(counts.recovered, 0) << c.name;
    } else {
      EXPECT_GT(counts.refused, 0) << c.name;
    }
    total.add(counts);
  }
  if (pg().rank() == 0)
    std::cout << "data-parallel sweep over " << pg().size() << " ranks: " << testing::describe_counts(total) << "\n";
  EXPECT_EQ(total.identical, total.runs);
  EXPECT_EQ(total.leaked_bytes, 0);
}

}  // namespace
}  // namespace headroom
