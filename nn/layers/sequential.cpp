// Sequential: children registered under their index.
#include "nn/layers/sequential.h"

namespace headroom::nn {

Sequential::Sequential(std::vector<std::shared_ptr<Module>> modules) {
  for (auto& m : modules) push_back(std::move(m));
}

void Sequential::push_back(std::shared_ptr<Module> m) {
  register_module(std::to_string(modules_.size()), m);
  if (checkpoint_ != CheckpointMode::none) blocks_.push_back(m);  // a block of its own
  modules_.push_back(std::move(m));
}

std::shared_ptr<Module> Sequential::at(int64_t i) const {
  const int64_t n = size();
  HR_CHECK(i >= -n && i < n, ValueError, "Sequential::at: index ", i, " out of range for ", n, " modules");
  return modules_[static_cast<size_t>(i < 0 ? i + n : i)];
}

void Sequential::set_checkpoint(CheckpointMode mode, std::vector<int64_t> block_starts) {
  const int64_t n = size();
  for (size_t i = 0; i < block_starts.size(); ++i)
    HR_CHECK((i == 0 ? block_starts[i] == 0 : block_starts[i] > block_starts[i - 1]) && block_starts[i] < n, ValueError,
             "Sequential::set_checkpoint: block_starts must increase from 0 and stay below ", n,
             " (the number of children); entry ", i, " is ", block_starts[i]);
  std::vector<std::shared_ptr<Module>> blocks;
  if (block_starts.empty() || (mode != CheckpointMode::block && mode != CheckpointMode::selective)) {
    blocks = modules_;
  } else {
    for (size_t i = 0; i < block_starts.size(); ++i) {
      const int64_t end = i + 1 < block_starts.size() ? block_starts[i + 1] : n;
      // An unregistered holder: the children stay registered here, under their own names.
      auto block = std::make_shared<Sequential>();
      for (int64_t k = block_starts[i]; k < end; ++k) block->modules_.push_back(modules_[static_cast<size_t>(k)]);
      blocks.push_back(block);
    }
  }
  checkpoint_ = mode;
  blocks_ = std::move(blocks);
}

Tensor Sequential::forward(const Tensor& x) {
  if (checkpoint_ != CheckpointMode::none) return run_checkpointed(blocks_, x, checkpoint_);
  Tensor h = x;
  for (auto& m : modules_) h = m->forward(h);
  return h;
}

std::string Sequential::name() const { return str_cat("Sequential(", size(), " modules)"); }

}  // namespace headroom::nn
