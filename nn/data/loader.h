// BatchLoader: mini-batches of a Dataset, shuffled reproducibly.
//
// The order of an epoch is a permutation computed from (seed, epoch) alone -- Fisher-Yates
// driven by counter-based Philox (engine/rng.h) -- so a run is repeatable, a resumed run can
// jump to any epoch, and the global generator (weight init, dropout) is not disturbed by data
// shuffling. Each batch is gathered into fresh contiguous tensors (one memcpy a sample), so a
// batch stays valid however long the caller keeps it. The last, partial batch is kept unless
// drop_last.
//
//   data::BatchLoader loader(train, /*batch_size=*/128, /*shuffle=*/true, /*seed=*/1);
//   for (int64_t epoch = 0; epoch < epochs; ++epoch) {
//     loader.start_epoch(epoch);
//     Tensor x, y;
//     while (loader.next(x, y)) { ... }
//   }
#pragma once

#include <cstdint>
#include <vector>

#include "nn/data/dataset.h"

namespace headroom::data {

// The permutation of 0..n-1 used for epoch `epoch` under `seed`.
std::vector<int64_t> shuffled_indices(int64_t n, uint64_t seed, int64_t epoch);

class BatchLoader {
 public:
  BatchLoader(const Dataset& dataset, int64_t batch_size, bool shuffle, uint64_t seed, bool drop_last = false);

  int64_t num_batches() const;
  int64_t batch_size() const { return batch_size_; }
  int64_t num_samples() const { return n_; }
  // Starts epoch `epoch` (0-based): reorders the samples from (seed, epoch) when shuffling,
  // and rewinds. The constructor starts epoch 0.
  void start_epoch(int64_t epoch);
  // Resumes inside epoch `epoch` (a training checkpoint, optim/checkpoint.h): the epoch's saved
  // sample order and the index of the next batch. The order must be a permutation of the data
  // set's samples, and it must be the one start_epoch(epoch) makes -- otherwise the checkpoint was
  // saved with another seed, data set or batch order, and a ValueError says so.
  void resume(int64_t epoch, const std::vector<int64_t>& order, int64_t next_batch);
  // The index of the next batch next() returns, within the epoch.
  int64_t next_batch() const { return cursor_ / batch_size_; }
  // The next batch of the epoch into images/labels; false (and both left alone) at its end.
  bool next(Tensor& images, Tensor& labels);
  // The dataset indices of the current epoch, in batch order.
  const std::vector<int64_t>& order() const { return order_; }

 private:
  Tensor images_;  // contiguous, CPU
  Tensor labels_;
  int64_t n_ = 0;
  int64_t batch_size_;
  bool shuffle_;
  uint64_t seed_;
  bool drop_last_;
  std::vector<int64_t> order_;
  int64_t cursor_ = 0;
};

}  // namespace headroom::data
