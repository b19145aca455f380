// The batch loader and the seeded permutation behind it.
//
// Note [epoch permutation]: the permutation of epoch e is Fisher-Yates whose k-th draw is a
// 64-bit word of philox4x32(counter = e * 2^40 + k / 2, key = seed): two draws per Philox
// block, each epoch in its own counter range (2^41 draws, far beyond any data set). A draw r
// picks j in [0, i] as the high half of r * (i + 1) (Lemire's multiply-shift); its bias,
// (i + 1) / 2^64, is below anything measurable.
#include "nn/data/loader.h"

#include <cstring>
#include <numeric>

#include "engine/error.h"
#include "engine/rng.h"

namespace headroom::data {

namespace {
__extension__ typedef unsigned __int128 u128;  // for the multiply-shift (GCC/Clang)
}  // namespace

Dataset subset(const Dataset& dataset, int64_t begin, int64_t end) {
  const int64_t n = dataset.size();
  HR_CHECK(0 <= begin && begin <= end && end <= n, ValueError, "subset: range [", begin, ", ", end,
           ") is not within a data set of ", n, " samples");
  return {dataset.images.slice(0, begin, end), dataset.labels.slice(0, begin, end)};
}

std::vector<int64_t> shuffled_indices(int64_t n, uint64_t seed, int64_t epoch) {
  HR_CHECK(n >= 0 && epoch >= 0, ValueError, "shuffled_indices: need n >= 0 and epoch >= 0, got n ", n, ", epoch ",
           epoch);
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  const uint64_t base = static_cast<uint64_t>(epoch) << 40;
  std::array<uint32_t, 4> block{};
  for (int64_t i = n - 1, k = 0; i > 0; --i, ++k) {
    if (k % 2 == 0) block = philox4x32(base + static_cast<uint64_t>(k / 2), seed);
    const size_t w = static_cast<size_t>(k % 2) * 2;
    const uint64_t r = (uint64_t{block[w]} << 32) | block[w + 1];
    const auto j = static_cast<int64_t>((static_cast<u128>(r) * static_cast<uint64_t>(i + 1)) >> 64);
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  return order;
}

BatchLoader::BatchLoader(const Dataset& dataset, int64_t batch_size, bool shuffle, uint64_t seed, bool drop_last)
    : batch_size_(batch_size), shuffle_(shuffle), seed_(seed), drop_last_(drop_last) {
  HR_CHECK(dataset.images.defined() && dataset.labels.defined(), ValueError,
           "BatchLoader: the data set has no images or no labels");
  HR_CHECK(batch_size > 0, ValueError, "BatchLoader: batch_size must be positive, got ", batch_size);
  HR_CHECK(dataset.images.dim() >= 1 && dataset.labels.dim() >= 1 && dataset.images.size(0) == dataset.labels.size(0),
           ShapeError, "BatchLoader: images ", describe(dataset.images), " and labels ", describe(dataset.labels),
           " differ in their number of samples (first dim)");
  // Own contiguous host copies (or the same tensors when they already are), so a gather is a
  // memcpy a sample.
  for (auto [src, dst] : {std::pair{&dataset.images, &images_}, std::pair{&dataset.labels, &labels_}}) {
    if (src->is_contiguous() && src->device().is_cpu()) {
      *dst = src->detach();
    } else {
      *dst = Tensor::empty(src->shape(), src->dtype());
      copy_tensor(*dst, *src);
    }
  }
  n_ = images_.size(0);
  start_epoch(0);
}

int64_t BatchLoader::num_batches() const {
  return drop_last_ ? n_ / batch_size_ : (n_ + batch_size_ - 1) / batch_size_;
}

void BatchLoader::start_epoch(int64_t epoch) {
  HR_CHECK(epoch >= 0, ValueError, "BatchLoader::start_epoch: epoch must be >= 0, got ", epoch);
  if (shuffle_) {
    order_ = shuffled_indices(n_, seed_, epoch);
  } else {
    order_.resize(static_cast<size_t>(n_));
    std::iota(order_.begin(), order_.end(), int64_t{0});
  }
  cursor_ = 0;
}

void BatchLoader::resume(int64_t epoch, const std::vector<int64_t>& order, int64_t next_batch) {
  HR_CHECK(next_batch >= 0 && next_batch <= num_batches(), ValueError, "BatchLoader::resume: batch ", next_batch,
           " is not within the epoch's ", num_batches(), " batches of ", batch_size_);
  HR_CHECK(static_cast<int64_t>(order.size()) == n_, ValueError, "BatchLoader::resume: the saved order has ",
           order.size(), " samples, the data set ", n_, " (another data set or --train-limit?)");
  start_epoch(epoch);
  HR_CHECK(order == order_, ValueError, "BatchLoader::resume: the saved order of epoch ", epoch,
           " is not the one this loader makes (another seed, data set or shuffle setting?)");
  cursor_ = next_batch * batch_size_;
}

bool BatchLoader::next(Tensor& images, Tensor& labels) {
  const int64_t remaining = n_ - cursor_;
  if (remaining <= 0 || (drop_last_ && remaining < batch_size_)) return false;
  const int64_t b = std::min(batch_size_, remaining);

  auto gather = [&](const Tensor& src) {
    Shape shape = src.shape();
    shape[0] = b;
    Tensor out = Tensor::empty(shape, src.dtype());
    const size_t row = src.nbytes() / static_cast<size_t>(n_);
    const auto* from = static_cast<const uint8_t*>(src.raw_data());
    auto* to = static_cast<uint8_t*>(out.raw_data());
    for (int64_t i = 0; i < b; ++i)
      std::memcpy(to + static_cast<size_t>(i) * row,
                  from + static_cast<size_t>(order_[static_cast<size_t>(cursor_ + i)]) * row, row);
    return out;
  };
  images = gather(images_);
  labels = gather(labels_);
  cursor_ += b;
  return true;
}

}  // namespace headroom::data
