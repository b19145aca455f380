// GPT: a decoder-only Transformer language model in GPT-2's layout (as nanoGPT writes it).
//
//   nn::GPTConfig cfg = nn::GPTConfig::gpt2_small();     // or fill the fields yourself
//   cfg.attention = AttentionImpl::naive;                 // the textbook form, for comparison
//   auto model = std::make_shared<nn::GPT>(cfg);
//   Tensor loss = model->loss(idx, targets);              // idx, targets: [B, T] integer tokens
//   loss.backward();
//   Tensor logits = model->forward(idx);                  // [B, T, vocab]
//   Tensor more = model->generate(prompt, 100);           // sampling, one token at a time
//
// tokens -> token embedding (wte) + learned position embedding (wpe) -> dropout -> n_layer
// Blocks -> final LayerNorm (ln_f) -> lm head. Each Block is pre-LayerNorm with residuals:
// x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)), the MLP being C -> 4C, GELU (tanh form), 4C -> C.
// The lm head has no weight of its own: it is TIED to wte.weight (logits = h @ wte.weight^T),
// so the one [vocab, C] tensor gets gradient from both uses and is listed once in parameters().
//
// Memory: loss() does not build the [B*T, vocab] logits when chunked_loss is on (the default);
// it uses nn::chunked_cross_entropy, whose peak is one chunk of rows. The attention form is
// chosen per model (cfg.attention) and can be switched on a built model (set_attention).
// Initialisation follows GPT-2: N(0, 0.02) for linear and embedding weights, zero biases, and
// N(0, 0.02 / sqrt(2 n_layer)) for the projections that write into the residual stream.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "autograd/functions/attention.h"
#include "nn/checkpoint.h"
#include "nn/layers/activation.h"
#include "nn/layers/attention.h"
#include "nn/layers/embedding.h"
#include "nn/layers/linear.h"
#include "nn/layers/norm.h"
#include "nn/layers/sequential.h"
#include "nn/module.h"

namespace headroom::nn {

struct GPTConfig {
  int64_t vocab_size = 50304;  // GPT-2's 50257 padded to a multiple of 64
  int64_t block_size = 1024;   // the longest sequence (positions)
  int64_t n_layer = 12;
  int64_t n_head = 12;
  int64_t n_embd = 768;
  double dropout = 0.0;
  bool bias = true;  // biases in the Linears (the LayerNorms always have theirs)
  AttentionImpl attention = AttentionImpl::fused;
  bool chunked_loss = true;     // loss() through chunked_cross_entropy; false: materialised logits
  int64_t loss_chunk_rows = 0;  // rows per chunk (0: nn::default_chunk_rows(vocab_size))
  // Recompute checkpointing of the blocks in training (nn/checkpoint.h): none, block, sqrt.
  CheckpointMode checkpoint = CheckpointMode::none;

  static GPTConfig gpt2_small();  // 124M parameters: 12 layers, 12 heads, 768 wide, vocab 50304
  // Throws ValueError naming the field when a size is not positive, n_embd is not divisible by
  // n_head, or dropout is outside [0, 1).
  void validate() const;
  std::string str() const;  // "GPT(vocab=..., block=..., layers=..., heads=..., embd=..., fused)"
};

// C -> 4C -> GELU -> C -> dropout.
class MLP : public Module {
 public:
  MLP(int64_t n_embd, double dropout = 0.0, bool bias = true);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "MLP"; }

  std::shared_ptr<Linear> c_fc, c_proj;
  std::shared_ptr<GELU> gelu;
  std::shared_ptr<Dropout> dropout;
};

// Pre-LayerNorm residual block: x + attn(ln_1(x)), then + mlp(ln_2(x)).
class Block : public Module {
 public:
  explicit Block(const GPTConfig& cfg);
  Tensor forward(const Tensor& x) override;  // [B, T, C] -> [B, T, C]
  std::string name() const override { return "Block"; }

  std::shared_ptr<LayerNorm> ln_1, ln_2;
  std::shared_ptr<CausalSelfAttention> attn;
  std::shared_ptr<MLP> mlp;
};

class GPT : public Module {
 public:
  explicit GPT(const GPTConfig& cfg);

  // idx: [B, T] integer tokens, T <= block_size. The final hidden states [B, T, C] (after ln_f).
  Tensor hidden(const Tensor& idx);
  // Logits [B, T, vocab] (materialised: for sampling and evaluation; training uses loss()).
  Tensor forward(const Tensor& idx) override;
  // Mean cross-entropy of predicting targets [B, T] (class indices; ignore_index is skipped).
  Tensor loss(const Tensor& idx, const Tensor& targets, int64_t ignore_index = -100);
  // Appends max_new_tokens sampled tokens to idx [B, T0] (no history; the context is cropped
  // to the last block_size tokens). temperature > 0 scales the logits; top_k > 0 keeps only the
  // k most likely tokens. Draws come from the global Philox generator (manual_seed fixes them).
  // Returns [B, T0 + max_new_tokens] i64 on idx's device.
  Tensor generate(const Tensor& idx, int64_t max_new_tokens, double temperature = 1.0, int64_t top_k = 0);

  // Switches every block's attention form.
  void set_attention(AttentionImpl impl);
  // Switches how the blocks are checkpointed (config.checkpoint).
  void set_checkpoint(CheckpointMode mode) { config.checkpoint = mode; }
  // The tied lm-head weight (wte.weight): [vocab, C].
  const Tensor& lm_head_weight() const { return wte->weight; }
  std::string name() const override { return config.str(); }

  GPTConfig config;
  std::shared_ptr<Embedding> wte, wpe;
  std::shared_ptr<Dropout> drop;
  std::shared_ptr<Sequential> h;  // the blocks, "h.0", "h.1", ...
  std::shared_ptr<LayerNorm> ln_f;
  std::vector<std::shared_ptr<Block>> blocks;
};

}  // namespace headroom::nn
