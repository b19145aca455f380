// A GPT cut for pipeline parallelism (stages of blocks) and for tensor parallelism (each block's
// matrices split), built from an unsplit nn::GPT -- what gpt_fortunes, headroom-bench and
// headroom-plan run with --pipeline and --tensor-parallel.
//
//   auto stages = nn::GPTStage::split(*model, {Device::cpu(0), Device::cpu(1)});
//   nn::Pipeline pipe(nn::GPTStage::pipeline_stages(stages), {...});
//   double loss = pipe.run(idx, targets, M, nn::GPTStage::loss_fn(stages));
//   nn::GPTStage::tie_gradients(stages);                 // before the optimizer step
//
// Note [tied weights across stages]: GPT-2's lm head is the token embedding's weight (wte). Cut
// into stages, wte lives with the first stage and the head with the last, on another device. The
// last stage holds a copy of the weight (`head`); after each step's backward tie_gradients adds
// the two gradients and gives both the sum, so the two copies -- equal at the start -- take the
// same update and stay equal, bit for bit, as Megatron-LM does between its first and last stages.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dist/process_group.h"
#include "nn/layers/gpt.h"
#include "nn/parallel/pipeline.h"
#include "nn/parallel/tensor_parallel.h"

namespace headroom::nn {

// One pipeline stage of a GPT: the embeddings (first stage), a run of blocks, and the final
// LayerNorm with the (tied) head (last stage).
class GPTStage final : public Module {
 public:
  // Cuts `model` into devices.size() stages, the blocks as evenly as the count allows (the first
  // stages one more). The stages share the model's modules (moved to their devices: the model
  // itself no longer runs whole); the last stage's head is a copy of wte.weight when there are
  // several. ValueError for no devices or more stages than blocks.
  static std::vector<std::shared_ptr<GPTStage>> split(GPT& model, const std::vector<Device>& devices);
  // Stages for a Pipeline (each on its device; `checkpoint` per stage).
  static std::vector<PipelineStage> pipeline_stages(const std::vector<std::shared_ptr<GPTStage>>& stages,
                                                    bool checkpoint = false);
  // The loss a Pipeline runs on the last stage: the mean cross-entropy of the head's logits.
  static Pipeline::LossFn loss_fn(const std::vector<std::shared_ptr<GPTStage>>& stages);
  // Note [tied weights across stages]. A no-op for one stage.
  static void tie_gradients(const std::vector<std::shared_ptr<GPTStage>>& stages);
  // Clipping the stages by the unsplit model's norm (after tie_gradients) is optim's:
  // optim::clip_grad_norm_(stages, max_norm) in optim/clip.h.
  // The unsplit model's state dict, every tensor copied to `device` (the tied head left out):
  // for evaluating or sampling with a whole GPT on one device (GPT::load_state_dict).
  static std::map<std::string, Tensor> state_dict_on(const std::vector<std::shared_ptr<GPTStage>>& stages,
                                                     Device device);

  // First stage: tokens [B, T] -> hidden [B, T, C]; others: hidden -> hidden (the last after ln_f).
  Tensor forward(const Tensor& x) override;
  // Last stage: the mean cross-entropy of (hidden [B, T, C], targets [B, T]).
  Tensor loss(const Tensor& hidden, const Tensor& targets);
  std::string name() const override;

  GPTConfig config;
  Device device;
  std::shared_ptr<Embedding> wte, wpe;  // first stage
  std::vector<std::shared_ptr<Block>> blocks;
  std::shared_ptr<LayerNorm> ln_f;  // last stage
  Tensor head;                      // last stage: wte.weight itself (one stage) or its copy
  size_t first_block = 0;
};

// A GPT over the T ranks of a group (across processes, or the devices of one process): the
// embeddings, the final LayerNorm and the tied head whole on every rank, each block a
// TensorParallelBlock (Megatron-LM's layout). Every rank runs the whole batch; the replicated
// parameters get the same gradients on every rank, so every rank's optimizer keeps them equal.
class TensorParallelGPT final : public Module {
 public:
  // This rank's part of `model` (its values copied), on `device`. The model's dropout must be 0.
  static std::shared_ptr<TensorParallelGPT> from(const GPT& model, dist::ProcessGroup& group, Device device);
  Tensor hidden(const Tensor& idx);  // [B, T] -> [B, T, C] after ln_f
  Tensor forward(const Tensor& idx) override { return hidden(idx); }
  Tensor loss(const Tensor& idx, const Tensor& targets);
  std::string name() const override { return "TensorParallelGPT"; }
  // Clipping by the unsplit model's norm, collectively, is optim's:
  // optim::clip_grad_norm_(model, max_norm, group) in optim/clip.h.
  // Every rank's part, in rank order, joined back into the unsplit model's state dict on
  // `device` (in one process, where all ranks' modules are at hand).
  static std::map<std::string, Tensor> unsplit_state_dict(const std::vector<std::shared_ptr<TensorParallelGPT>>& ranks,
                                                          Device device);

  GPTConfig config;
  std::shared_ptr<Embedding> wte, wpe;
  std::vector<std::shared_ptr<TensorParallelBlock>> blocks;
  std::shared_ptr<LayerNorm> ln_f;
};

}  // namespace headroom::nn
