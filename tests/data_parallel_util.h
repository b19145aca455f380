// What the data-parallel tests share (tests/nn/parallel/ddp_test.cpp, tests/optim/zero_test.cpp,
// tests/optim/data_parallel_sweep_test.cpp): the world, a small MLP, a batch every rank builds
// alike from a seed, this rank's rows of it, and a check that a tensor is the same on every
// rank. They run alone (world size 1) and under mpirun (label mpi).
#pragma once

#include <gtest/gtest.h>

#include "dist/process_group.h"
#include "nn/nn.h"
#include "test_util.h"

namespace headroom::testing {

inline dist::ProcessGroup& pg() { return dist::world(); }

// 12 -> hidden1 -> hidden2 -> 5 with ReLUs, initialised from `seed`.
inline std::shared_ptr<nn::Sequential> make_mlp(uint64_t seed, int64_t hidden1 = 32, int64_t hidden2 = 24) {
  manual_seed(seed);
  return std::make_shared<nn::Sequential>(
      std::vector<std::shared_ptr<nn::Module>>{std::make_shared<nn::Linear>(12, hidden1), std::make_shared<nn::ReLU>(),
                                               std::make_shared<nn::Linear>(hidden1, hidden2),
                                               std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(hidden2, 5)});
}

// The whole batch of step `step` (per_rank rows for each rank, 12 features, 5 classes), the
// same on every rank: drawn from seed_base + step.
inline std::pair<Tensor, Tensor> global_batch(int64_t step, int64_t per_rank = 4, uint64_t seed_base = 1000) {
  manual_seed(seed_base + static_cast<uint64_t>(step));
  const int64_t n = per_rank * pg().size();
  Tensor x = Tensor::randn({n, 12});
  std::vector<int64_t> y(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) y[static_cast<size_t>(i)] = (i * 7 + step) % 5;
  return {x, Tensor::from_vector(y, {n}, DType::i64)};
}

// This rank's equal share of a batch's rows.
inline Tensor my_share(const Tensor& t) {
  const int64_t per = t.size(0) / pg().size();
  return t.slice(0, pg().rank() * per, (pg().rank() + 1) * per).contiguous();
}

// Every rank's copy of t is the same (all_gather and compare with rank 0's, exactly).
inline ::testing::AssertionResult same_on_every_rank(const Tensor& t) {
  Tensor flat = t.detach().contiguous().reshape({t.numel()}).to(DType::f64);
  Tensor all = Tensor::zeros({pg().size(), t.numel()}, DType::f64);
  pg().all_gather(all, flat)->wait();
  for (int r = 1; r < pg().size(); ++r)
    if (!all_close(all.select(0, r), all.select(0, 0), 0, 0))
      return ::testing::AssertionFailure() << "rank " << r << " differs";
  return ::testing::AssertionSuccess();
}

}  // namespace headroom::testing
