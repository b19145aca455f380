// The planner (optim/plan.h, Note [planning]) and what it stands on: the op recorder (Note [op
// costs]) and the cost model (Note [cost model]). The plan's claims are checked against real
// runs: the chosen mix runs in the budget with the peaks predicted, a mix it says does not fit
// runs out of memory under that budget, and capacity's batch is the largest that fits.
#include <cstdio>
#include <optional>

#include "autograd/autocast.h"
#include "autograd/offload.h"
#include "engine/backend.h"
#include "engine/meta.h"
#include "engine/op_cost.h"
#include "nn/nn.h"
#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

using testing::tokens;

TEST(OpRecorder, RecordsEachOutermostCallWithItsCost) {
  Tensor a = Tensor::ones({3, 4, 5}), b = Tensor::ones({3, 5, 6}), out = Tensor::empty({3, 4, 6});
  Tensor x = Tensor::ones({10});
  Tensor y = Tensor::empty({10});
  OpRecorder rec(true);
  backend_for(Device::cpu()).matmul(a, b, out, 0.0);
  backend_for(Device::cpu()).unary(UnaryOp::exp, x, y);
  ASSERT_EQ(rec.records().size(), 2u);
  const OpRecord& mm = rec.records()[0];
  EXPECT_EQ(mm.op, OpId::matmul);
  EXPECT_EQ(mm.dtype, DType::f32);
  EXPECT_DOUBLE_EQ(mm.cost.flops, 2.0 * 3 * 4 * 6 * 5);
  EXPECT_DOUBLE_EQ(mm.cost.bytes, 4.0 * (60 + 90 + 72));
  EXPECT_GE(mm.seconds, 0.0);
  const OpRecord& ex = rec.records()[1];
  EXPECT_EQ(ex.op, OpId::unary);
  EXPECT_EQ(ex.cost.variant, static_cast<int>(UnaryOp::exp));
  EXPECT_DOUBLE_EQ(ex.cost.bytes, 80.0);
  EXPECT_DOUBLE_EQ(ex.cost.flops, 10.0);
}

TEST(OpRecorder, DoesNotNestAndSkipsCallsTheirChecksReject) {
  Tensor a = Tensor::ones({2, 3}), out = Tensor::empty({3, 2});
  OpRecorder rec;
  EXPECT_THROW(OpRecorder second, ValueError);
  EXPECT_THROW(backend_for(Device::cpu()).unary(UnaryOp::exp, a, out), Error);  // the contract fails first
  EXPECT_TRUE(rec.records().empty());
}

TEST(OpRecorder, UnderMetaCostsAreKnownAndTimesZero) {
  MetaScope meta;
  OpRecorder rec(true);
  Tensor a = Tensor::ones({64, 32}), b = Tensor::ones({32, 16});
  Tensor c = matmul(a, b);
  ASSERT_FALSE(rec.records().empty());
  bool saw_matmul = false;
  for (const OpRecord& r : rec.records())
    if (r.op == OpId::matmul) {
      saw_matmul = true;
      EXPECT_DOUBLE_EQ(r.cost.flops, 2.0 * 64 * 16 * 32);
    }
  EXPECT_TRUE(saw_matmul);
}

OpRecord synthetic(OpId op, double flops, double bytes, double seconds) {
  OpRecord r;
  r.op = op;
  r.cost.flops = flops;
  r.cost.bytes = bytes;
  r.seconds = seconds;
  return r;
}

TEST(CostModel, FitReproducesTimedCallsAndTheTimeBetweenOps) {
  // matmul: 2 us + 1 ns per flop; copy: 1 us + 0.1 ns per byte; 5 us between ops.
  std::vector<OpRecord> ops;
  double op_time = 0;
  for (double w : {1e3, 1e4, 1e5, 1e6}) {
    ops.push_back(synthetic(OpId::matmul, w, 10, 2e-6 + w * 1e-9));
    ops.push_back(synthetic(OpId::copy, 1, w, 1e-6 + w * 1e-10));
    op_time += ops[ops.size() - 2].seconds + ops.back().seconds;
  }
  const double step = op_time + 5e-6 * static_cast<double>(ops.size());
  optim::CostModel m = optim::CostModel::fit_cpu({{ops, step}});
  EXPECT_TRUE(m.calibrated());
  EXPECT_NEAR(m.predict_seconds(ops), step, 1e-12);
  auto one = [&](OpId op, double flops, double bytes) {
    return m.predict_seconds({synthetic(op, flops, bytes, 0)}) - 5e-6;
  };
  // Between two sizes seen: between their times. Above the largest: in proportion to it. Below
  // the smallest: its time.
  const double mid = one(OpId::matmul, 3e4, 10);
  EXPECT_GT(mid, 2e-6 + 1e4 * 1e-9);
  EXPECT_LT(mid, 2e-6 + 1e5 * 1e-9);
  EXPECT_NEAR(one(OpId::matmul, 1e7, 10), (2e-6 + 1e6 * 1e-9) * 10, 1e-12);
  EXPECT_NEAR(one(OpId::matmul, 10, 10), 2e-6 + 1e3 * 1e-9, 1e-12);
  // The same op in another dtype: that op's curve. An op never seen: the rate of its kind.
  OpRecord bf = synthetic(OpId::matmul, 1e5, 10, 0);
  bf.dtype = DType::bf16;
  EXPECT_NEAR(m.predict_seconds({bf}) - 5e-6, 2e-6 + 1e5 * 1e-9, 1e-12);
  EXPECT_GT(one(OpId::softmax_forward, 1, 1e6), 0);
}

TEST(CostModel, RooflineAndItsScaledFit) {
  const optim::DeviceRates* h100 = optim::datasheet_rates("h100");
  ASSERT_NE(h100, nullptr);
  EXPECT_EQ(optim::datasheet_rates("a100"), nullptr);
  optim::CostModel roof = optim::CostModel::roofline(*h100);
  EXPECT_FALSE(roof.calibrated());
  OpRecord mm = synthetic(OpId::matmul, 989e12, 1, 0);  // one second of bf16 tensor-core work
  mm.dtype = DType::bf16;
  OpRecord copy = synthetic(OpId::copy, 1, 3.35e12, 0);  // one second of HBM traffic
  EXPECT_NEAR(roof.predict_seconds({mm, copy}), 2.0, 1e-9);
  optim::CostModel scaled = optim::CostModel::fit_scaled(*h100, {{{mm, copy}, 3.0}});
  EXPECT_TRUE(scaled.calibrated());
  EXPECT_NEAR(scaled.predict_seconds({mm}), 1.5, 1e-9);
}

// A small GPT trained by mixes, as an example program would build it.
struct Training {
  std::shared_ptr<nn::GPT> model;
  std::unique_ptr<optim::AdamW> opt;
  std::unique_ptr<optim::GradScaler> scaler;
  std::unique_ptr<optim::BatchSplitter> splitter;
  Tensor idx, targets;
  DType precision = DType::f32;
  void step() {
    AutocastCacheScope cache;
    splitter->step(idx, targets, [&](const Tensor& x, const Tensor& y) {
      AutocastGuard guard(Device::cpu(), precision == DType::f32 ? DType::bf16 : precision, precision != DType::f32);
      return optim::MicroBatchOutput{model->loss(x, y)};
    });
  }
};

optim::StepFactory small_gpt_factory() {
  return [](const optim::Mix& mix, int64_t batch) -> std::function<void()> {
    nn::GPTConfig cfg;
    cfg.vocab_size = 96;
    cfg.block_size = 32;
    cfg.n_layer = 4;
    cfg.n_head = 2;
    cfg.n_embd = 48;
    cfg.attention = mix.attention;
    cfg.checkpoint = mix.checkpoint;
    manual_seed(3);
    auto t = std::make_shared<Training>();
    t->precision = mix.precision;
    t->model = std::make_shared<nn::GPT>(cfg);
    t->opt = std::make_unique<optim::AdamW>(t->model->parameters(), 1e-3);
    optim::BatchSplitter::Options options;
    if (mix.precision == DType::f16) {
      t->scaler = std::make_unique<optim::GradScaler>();
      options.scaler = t->scaler.get();
    }
    t->splitter = std::make_unique<optim::BatchSplitter>(*t->opt, mix.micro_batches, t->model.get(), options);
    t->idx = tokens({batch, 32}, 96, 1);
    t->targets = tokens({batch, 32}, 96, 2);
    return [t] { t->step(); };
  };
}

// The mix run for real on the cpu with `budget` as the allocator's limit: its peaks, or a throw.
MemoryStats run_for_real(const optim::StepFactory& make, const optim::Mix& mix, int64_t batch, size_t budget,
                         int steps) {
  CachingAllocator& a = caching_allocator(Device::cpu());
  a.empty_cache();
  a.reset_peak_stats();
  const size_t old = a.memory_limit();
  a.set_memory_limit(budget);
  struct Restore {
    CachingAllocator& a;
    size_t old;
    ~Restore() {
      a.set_memory_limit(old);
      a.empty_cache();
    }
  } restore{a, old};
  const int64_t before = a.stats().allocated_bytes.current;
  EXPECT_EQ(before, 0) << "the test expects nothing else alive on the cpu allocator";
  std::function<void()> step = make(mix, batch);
  for (int i = 0; i < steps; ++i) step();
  return a.stats();
}

TEST(Plan, ChoiceFitsAndMixesSaidNotToFitDoNot) {
  const optim::StepFactory make = small_gpt_factory();
  optim::PlanOptions opt;
  opt.batch = 8;
  // The budget: halfway between the smallest and the largest footprint of the space.
  optim::PlanSpace space = optim::PlanSpace::for_batch(8);
  space.precisions = {DType::f32, DType::bf16};
  const optim::Plan unlimited = optim::plan(make, 0, space, opt);
  int64_t lo = INT64_MAX, hi = 0;
  for (const auto& m : unlimited.mixes) {
    ASSERT_TRUE(m.fits()) << m.mix.str() << ": " << m.status;
    lo = std::min(lo, m.peak_reserved());
    hi = std::max(hi, m.peak_reserved());
  }
  ASSERT_LT(lo, hi);
  const size_t budget = static_cast<size_t>((lo + hi) / 2);
  const optim::Plan p = optim::plan(make, budget, space, opt);
  ASSERT_NE(p.choice(), nullptr) << p.table();
  int fit = 0, not_fit = 0;
  for (const auto& m : p.mixes) (m.fits() ? fit : not_fit)++;
  EXPECT_GT(fit, 0);
  EXPECT_GT(not_fit, 0);
  std::printf("%s", p.table().c_str());

  // The choice runs in the budget, with the peaks predicted.
  const optim::MixPrediction& c = *p.choice();
  const MemoryStats real = run_for_real(make, c.mix, 8, budget, opt.steps);
  EXPECT_EQ(real.allocated_bytes.peak, c.peak_allocated());
  for (int k = 0; k < kNumMemoryCategories; ++k)
    EXPECT_EQ(real.category(static_cast<MemoryCategory>(k)).peak, c.stats.category(static_cast<MemoryCategory>(k)).peak)
        << category_name(static_cast<MemoryCategory>(k));
  EXPECT_NEAR(static_cast<double>(real.reserved_bytes.peak), static_cast<double>(c.peak_reserved()),
              0.02 * static_cast<double>(c.peak_reserved()));
  EXPECT_LE(real.reserved_bytes.peak, static_cast<int64_t>(budget));

  // The fastest mix said not to fit runs out of memory under the same budget.
  const optim::MixPrediction* no = nullptr;
  for (const auto& m : p.mixes)
    if (!m.fits()) {
      no = &m;
      break;
    }
  ASSERT_NE(no, nullptr);
  EXPECT_EQ(no->status, "oom");
  EXPECT_THROW(run_for_real(make, no->mix, 8, budget, opt.steps), OutOfMemoryError) << no->mix.str();
}

TEST(Plan, CalibratedPlanPricesEveryFittingMix) {
  const optim::StepFactory make = small_gpt_factory();
  optim::PlanOptions opt;
  opt.batch = 4;
  opt.calibrate = true;
  optim::PlanSpace space = optim::PlanSpace::for_batch(4);
  space.precisions = {DType::f32};
  space.checkpoints = {nn::CheckpointMode::none, nn::CheckpointMode::block};
  const optim::Plan p = optim::plan(make, 0, space, opt);
  // f32 naive and f32 fused, each without checkpoint, unsplit and split in 4.
  ASSERT_EQ(p.calibrated_on.size(), 4u);
  for (size_t i = 0; i < p.calibrated_on.size(); ++i) {
    EXPECT_EQ(p.calibrated_on[i].micro_batches, i % 2 ? 4 : 1);
    EXPECT_EQ(p.calibrated_on[i].checkpoint, nn::CheckpointMode::none);
  }
  for (size_t i = 0; i < p.mixes.size(); ++i) {
    EXPECT_GT(p.mixes[i].seconds, 0) << p.mixes[i].mix.str();
    if (i > 0) {
      EXPECT_LE(p.mixes[i - 1].seconds, p.mixes[i].seconds);
    }
  }
  EXPECT_NE(p.cost_model.find("fitted"), std::string::npos) << p.cost_model;
  // Checkpointing recomputes the forward: more ops, more flops than the same mix without.
  const optim::MixPrediction* none = nullptr;
  const optim::MixPrediction* block = nullptr;
  for (const auto& m : p.mixes)
    if (m.mix.attention == AttentionImpl::fused && m.mix.micro_batches == 1) {
      (m.mix.checkpoint == nn::CheckpointMode::none ? none : block) = &m;
    }
  ASSERT_TRUE(none && block);
  EXPECT_GT(block->flops, none->flops);
  EXPECT_GT(block->ops, none->ops);
}

TEST(Plan, CapacityIsTheLargestBatchThatFits) {
  const optim::StepFactory make = small_gpt_factory();
  optim::PlanOptions opt;
  const optim::Mix mix{DType::f32, AttentionImpl::fused, nn::CheckpointMode::block, 1};
  opt.batch = 4;
  const size_t budget = static_cast<size_t>(optim::predict_mix(make, mix, 0, opt).peak_reserved()) * 2;
  const int64_t c = optim::capacity(make, mix, budget, opt, 256);
  ASSERT_GE(c, 4);
  ASSERT_LT(c, 256);
  opt.batch = c;
  EXPECT_TRUE(optim::predict_mix(make, mix, budget, opt).fits());
  opt.batch = c + 1;
  EXPECT_FALSE(optim::predict_mix(make, mix, budget, opt).fits());
  EXPECT_NO_THROW(run_for_real(make, mix, c, budget, opt.steps));
  EXPECT_THROW(run_for_real(make, mix, c + 1, budget, opt.steps), OutOfMemoryError);
  // Micro-batches need an item each: a 4-way split cannot run a batch of 3.
  EXPECT_EQ(optim::capacity(make, optim::Mix{DType::f32, AttentionImpl::fused, nn::CheckpointMode::none, 4}, 1, opt, 8),
            0);
}

TEST(Plan, SpaceEnumeratesEveryCombination) {
  optim::PlanSpace s = optim::PlanSpace::for_batch(12);
  EXPECT_EQ(s.micro_batches, (std::vector<int64_t>{1, 2, 4}));
  EXPECT_EQ(s.mixes().size(), 3u * 2u * 4u * 3u);
  s.has_attention = false;
  EXPECT_EQ(s.mixes().size(), 3u * 4u * 3u);
  EXPECT_EQ((optim::Mix{DType::bf16, AttentionImpl::fused, nn::CheckpointMode::block, 2}).str(),
            "bf16 fused ckpt-block mb2");
  EXPECT_THROW(optim::PlanSpace::for_batch(0), ValueError);
}

// Offload (Note [planning offload]): an MLP whose step offloads what the mix says.
optim::StepFactory offload_factory(Device device) {
  return [device](const optim::Mix& mix, int64_t batch) -> std::function<void()> {
    manual_seed(3);
    auto model = std::make_shared<nn::Sequential>();
    for (int i = 0; i < 4; ++i) {
      model->push_back(std::make_shared<nn::Linear>(256, 256));
      model->push_back(std::make_shared<nn::ReLU>());
    }
    model->push_back(std::make_shared<nn::Linear>(256, 10));
    model->to(device);
    std::shared_ptr<optim::Optimizer> opt;
    if (mix.offload_optimizer) opt = std::make_shared<optim::OffloadedAdamW>(model->parameters(), 1e-3);
    else opt = std::make_shared<optim::AdamW>(model->parameters(), 1e-3);
    Tensor x = Tensor::randn({batch, 256}, TensorOptions().device(device));
    const bool offload = mix.offload_activations;
    return [model, opt, x, offload] {
      opt->zero_grad();
      Tensor loss;
      {
        std::optional<ActivationOffload> o;
        if (offload) o.emplace(ActivationOffloadOptions{.min_bytes = 0, .segment_bytes = 0});
        loss = model->forward(x).pow(2.0).mean();
      }
      loss.backward();
      opt->step();
    };
  };
}

TEST(Plan, OffloadIsPredictedOnBothSidesAndMatchesARealRun) {
  const Device dev = Device::cpu(6);
  const optim::StepFactory make = offload_factory(dev);
  optim::PlanOptions o;
  o.device = dev;
  o.batch = 256;
  optim::Mix plain, act, opt;
  act.offload_activations = true;
  opt.offload_optimizer = true;
  const optim::MixPrediction p0 = optim::predict_mix(make, plain, 0, o), pa = optim::predict_mix(make, act, 0, o),
                             po = optim::predict_mix(make, opt, 0, o);
  ASSERT_TRUE(p0.fits() && pa.fits() && po.fits()) << p0.status << pa.status << po.status;
  // Activations: the device keeps none above the threshold; the host pool took them.
  EXPECT_LT(pa.stats.category(MemoryCategory::activation).peak * 2, p0.stats.category(MemoryCategory::activation).peak);
  EXPECT_GE(pa.host_stats.category(MemoryCategory::activation).peak, 5 * 256 * 256 * 4);
  EXPECT_GT(pa.host_transfer_bytes, 0);
  EXPECT_EQ(p0.host_stats.allocated_bytes.peak, 0);
  // Adam's state: none on the device; moments and masters on the host.
  EXPECT_EQ(po.stats.category(MemoryCategory::optimizer_state).peak, 0);
  EXPECT_GT(p0.stats.category(MemoryCategory::optimizer_state).peak, 0);
  EXPECT_EQ(po.host_stats.category(MemoryCategory::optimizer_state).peak,
            3 * p0.stats.category(MemoryCategory::optimizer_state).peak / 2);
  EXPECT_EQ((optim::Mix{DType::f32, AttentionImpl::fused, nn::CheckpointMode::none, 1, 1, 0, 1, true, 1, true, true})
                .str(false),
            "f32 ckpt-none mb1 offload-act offload-opt");
  // The prediction is the real run's, byte for byte, on the device.
  CachingAllocator& a = caching_allocator(dev);
  a.empty_cache();
  a.reset_peak_stats();
  {
    std::function<void()> step = make(act, 256);
    step();
    step();
  }
  EXPECT_EQ(a.stats().allocated_bytes.peak, pa.peak_allocated());
  // Offload joins only one-device, one-rank mixes.
  optim::PlanSpace s = optim::PlanSpace::for_batch(4);
  s.has_attention = false;
  s.precisions = {DType::f32};
  s.checkpoints = {nn::CheckpointMode::none};
  s.micro_batches = {1};
  s.world_sizes = {1, 2};
  s.offload_activations = {false, true};
  s.offload_optimizer = {false, true};
  EXPECT_EQ(s.mixes().size(), 4u + 1u);
}

TEST(Plan, OffloadOnAGpuPaysForWhatComputeCannotHide) {
  try {
    const optim::StepFactory make = offload_factory(Device::cuda(0));
    optim::PlanOptions o;
    o.device = Device::cuda(0);
    o.batch = 4096;
    o.cost = optim::CostModel::roofline(*optim::datasheet_rates("h100"));
    o.host_update_bytes_per_second = 1e10;  // not measured here: a round number
    optim::Mix act, opt;
    act.offload_activations = true;
    opt.offload_optimizer = true;
    const optim::MixPrediction plain = optim::predict_mix(make, optim::Mix{}, 0, o);
    // A build without the CUDA side: the planner reports it as the mix's status.
    if (!plain.fits() && plain.status.find("without CUDA") != std::string::npos)
      GTEST_SKIP() << "no CUDA backend in this build: " << plain.status;
    const optim::MixPrediction pa = optim::predict_mix(make, act, 0, o);
    const optim::MixPrediction po = optim::predict_mix(make, opt, 0, o);
    ASSERT_TRUE(plain.fits() && pa.fits() && po.fits());
    const double link = optim::datasheet_rates("h100")->host_link_bytes_per_second;
    EXPECT_EQ(pa.host_update_seconds, 0);
    const double compute = pa.seconds - pa.transfer_seconds;
    EXPECT_NEAR(pa.transfer_seconds, std::max(0.0, static_cast<double>(pa.host_transfer_bytes) / link - compute),
                1e-12);
    EXPECT_GT(pa.transfer_seconds, 0);  // 4096 x 256 f32 activations move slower than a roofline computes them
    // The optimizer's update is the host's, at its rate: 4 tensors of 4 bytes per parameter.
    int64_t params = 0;
    for (int i = 0; i < 4; ++i) params += 256 * 256 + 256;
    params += 256 * 10 + 10;
    EXPECT_NEAR(po.host_update_seconds, 16.0 * static_cast<double>(params) / 1e10, 1e-9);
    EXPECT_GT(po.seconds, plain.seconds);
  } catch (const DeviceError& e) {
    GTEST_SKIP() << "no CUDA backend in this build: " << e.what();
  }
}

// Under meta, a cuda matmul takes the cuBLAS workspace once, as the first real gemm would
// (Note [meta execution]; kernels/cuda/cuda_libs.cpp) -- when this build has the CUDA side.
TEST(Plan, CudaMetaCountsTheCublasWorkspaceOnce) {
  try {
    MetaScope meta;
    CachingAllocator& a = meta.allocator(Device::cuda(0));
    Tensor x = Tensor::ones({64, 64}, TensorOptions().device(Device::cuda(0)));
    Tensor y = matmul(x, x);
    Tensor z = matmul(y, x);
    const int64_t ws = a.stats().category(MemoryCategory::workspace).current;
    EXPECT_EQ(ws, int64_t{32} << 20) << "one Hopper-sized cuBLAS workspace";
  } catch (const DeviceError& e) {
    GTEST_SKIP() << "no CUDA backend in this build: " << e.what();
  }
}

}  // namespace
}  // namespace headroom
