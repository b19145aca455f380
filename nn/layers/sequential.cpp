// Sequential: children registered under their index.
#include "nn/layers/sequential.h"

namespace headroom::nn {

Sequential::Sequential(std::vector<std::shared_ptr<Module>> modules) {
  for (auto& m : modules) push_back(std::move(m));
}

void Sequential::push_back(std::shared_ptr<Module> m) {
  register_module(std::to_string(modules_.size()), m);
  modules_.push_back(std::move(m));
}

std::shared_ptr<Module> Sequential::at(int64_t i) const {
  const int64_t n = size();
  HR_CHECK(i >= -n && i < n, ValueError, "Sequential::at: index ", i, " out of range for ", n, " modules");
  return modules_[static_cast<size_t>(i < 0 ? i + n : i)];
}

Tensor Sequential::forward(const Tensor& x) {
  if (checkpoint_ != CheckpointMode::none) return run_checkpointed(modules_, x, checkpoint_);
  Tensor h = x;
  for (auto& m : modules_) h = m->forward(h);
  return h;
}

std::string Sequential::name() const { return str_cat("Sequential(", size(), " modules)"); }

}  // namespace headroom::nn
