// Sequential: runs its children in order; they are named "0", "1", ... so parameter names
// match PyTorch's nn.Sequential ("0.weight", "2.bias").
//
//   auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
//       std::make_shared<nn::Linear>(784, 256), std::make_shared<nn::ReLU>(),
//       std::make_shared<nn::Linear>(256, 10)});
//   model->set_checkpoint(nn::CheckpointMode::block);  // each child recomputed in backward
//
// With a checkpoint mode (nn/checkpoint.h) forward runs the children through
// nn::run_checkpointed: block checkpoints each block -- each child, or the runs of children
// that begin at block_starts (a CNN's conv-norm-relu-pool stages) -- and sqrt runs
// checkpoint_sequential over the children.
#pragma once

#include <memory>
#include <vector>

#include "nn/checkpoint.h"
#include "nn/module.h"

namespace headroom::nn {

class Sequential : public Module {
 public:
  Sequential() = default;
  explicit Sequential(std::vector<std::shared_ptr<Module>> modules);
  void push_back(std::shared_ptr<Module> m);
  int64_t size() const { return static_cast<int64_t>(modules_.size()); }
  std::shared_ptr<Module> at(int64_t i) const;  // negative counts from the end
  Tensor forward(const Tensor& x) override;
  std::string name() const override;
  // block_starts: increasing child indices, the first 0 (ValueError otherwise); empty: every
  // child is a block.
  void set_checkpoint(CheckpointMode mode, std::vector<int64_t> block_starts = {});
  CheckpointMode checkpoint_mode() const { return checkpoint_; }

 private:
  std::vector<std::shared_ptr<Module>> modules_;
  CheckpointMode checkpoint_ = CheckpointMode::none;
  std::vector<std::shared_ptr<Module>> blocks_;  // what run_checkpointed runs
};

}  // namespace headroom::nn
