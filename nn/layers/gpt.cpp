// GPT, Block and MLP: modules composed of the existing layers; the lm head is the embedding
// weight used a second time (tied), by chunked_cross_entropy in loss() or linear() in forward().
#include "nn/layers/gpt.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "nn/chunked_cross_entropy.h"
#include "nn/init.h"

namespace headroom::nn {

// ---- config ----

GPTConfig GPTConfig::gpt2_small() { return GPTConfig{}; }

void GPTConfig::validate() const {
  const char* op = "GPTConfig";
  HR_CHECK(vocab_size > 0, ValueError, op, ": vocab_size must be positive, got ", vocab_size);
  HR_CHECK(block_size > 0, ValueError, op, ": block_size must be positive, got ", block_size);
  HR_CHECK(n_layer > 0, ValueError, op, ": n_layer must be positive, got ", n_layer);
  HR_CHECK(n_head > 0, ValueError, op, ": n_head must be positive, got ", n_head);
  HR_CHECK(n_embd > 0, ValueError, op, ": n_embd must be positive, got ", n_embd);
  HR_CHECK(n_embd % n_head == 0, ValueError, op, ": n_embd ", n_embd, " is not divisible by n_head ", n_head);
  HR_CHECK(dropout >= 0 && dropout < 1, ValueError, op, ": dropout must be in [0, 1), got ", dropout);
  HR_CHECK(loss_chunk_rows >= 0, ValueError, op, ": loss_chunk_rows must be >= 0 (0: default), got ", loss_chunk_rows);
}

std::string GPTConfig::str() const {
  return str_cat("GPT(vocab=", vocab_size, ", block=", block_size, ", layers=", n_layer, ", heads=", n_head,
                 ", embd=", n_embd, ", ", attention_impl_name(attention), " attention",
                 checkpoint == CheckpointMode::none ? "" : str_cat(", checkpoint=", checkpoint_mode_name(checkpoint)),
                 ")");
}

// ---- MLP and Block ----

MLP::MLP(int64_t n_embd, double p, bool bias) {
  c_fc = register_module("c_fc", std::make_shared<Linear>(n_embd, 4 * n_embd, bias));
  gelu = register_module("gelu", std::make_shared<GELU>());
  c_proj = register_module("c_proj", std::make_shared<Linear>(4 * n_embd, n_embd, bias));
  dropout = register_module("dropout", std::make_shared<Dropout>(p));
}

Tensor MLP::forward(const Tensor& x) { return dropout->forward(c_proj->forward(gelu->forward(c_fc->forward(x)))); }

Block::Block(const GPTConfig& cfg) {
  ln_1 = register_module("ln_1", std::make_shared<LayerNorm>(Shape{cfg.n_embd}));
  attn = register_module(
      "attn", std::make_shared<CausalSelfAttention>(cfg.n_embd, cfg.n_head, cfg.dropout, cfg.attention, cfg.bias));
  ln_2 = register_module("ln_2", std::make_shared<LayerNorm>(Shape{cfg.n_embd}));
  mlp = register_module("mlp", std::make_shared<MLP>(cfg.n_embd, cfg.dropout, cfg.bias));
}

Tensor Block::forward(const Tensor& x) {
  Tensor y = x + attn->forward(ln_1->forward(x));
  return y + mlp->forward(ln_2->forward(y));
}

// ---- GPT ----

GPT::GPT(const GPTConfig& cfg) : config(cfg) {
  config.validate();
  wte = register_module("wte", std::make_shared<Embedding>(cfg.vocab_size, cfg.n_embd));
  wpe = register_module("wpe", std::make_shared<Embedding>(cfg.block_size, cfg.n_embd));
  drop = register_module("drop", std::make_shared<Dropout>(cfg.dropout));
  h = register_module("h", std::make_shared<Sequential>());
  for (int64_t i = 0; i < cfg.n_layer; ++i) {
    blocks.push_back(std::make_shared<Block>(cfg));
    h->push_back(blocks.back());
  }
  ln_f = register_module("ln_f", std::make_shared<LayerNorm>(Shape{cfg.n_embd}));

  // GPT-2's initialisation (the layers' own defaults are PyTorch's, meant for other nets).
  const double proj_std = 0.02 / std::sqrt(2.0 * static_cast<double>(cfg.n_layer));
  init::normal_(wte->weight, 0.0, 0.02);
  init::normal_(wpe->weight, 0.0, 0.02);
  for (auto& b : blocks) {
    for (auto* lin : {b->attn->c_attn.get(), b->attn->c_proj.get(), b->mlp->c_fc.get(), b->mlp->c_proj.get()}) {
      const bool residual = lin == b->attn->c_proj.get() || lin == b->mlp->c_proj.get();
      init::normal_(lin->weight, 0.0, residual ? proj_std : 0.02);
      if (lin->bias.defined()) init::zeros_(lin->bias);
    }
  }
}

Tensor GPT::hidden(const Tensor& idx) {
  HR_CHECK(idx.dim() == 2, ShapeError, name(), ": idx must be [B, T] tokens, got ", describe(idx));
  HR_CHECK(!is_floating(idx.dtype()) && idx.dtype() != DType::boolean, DTypeError, name(),
           ": idx must be an integer tensor of tokens, got ", describe(idx));
  const int64_t t = idx.size(1);
  HR_CHECK(t <= config.block_size, ValueError, name(), ": sequence of ", t, " tokens is longer than block_size ",
           config.block_size);
  Tensor pos = Tensor::arange(static_cast<double>(t), TensorOptions().dtype(DType::i64).device(idx.device()));
  Tensor x = drop->forward(wte->forward(idx) + wpe->forward(pos));  // [B, T, C] + [T, C]
  std::vector<std::shared_ptr<Module>> mods(blocks.begin(), blocks.end());
  return ln_f->forward(run_checkpointed(mods, x, config.checkpoint));
}

Tensor GPT::forward(const Tensor& idx) { return linear(hidden(idx), wte->weight, Tensor()); }

Tensor GPT::loss(const Tensor& idx, const Tensor& targets, int64_t ignore_index) {
  HR_CHECK(targets.shape() == idx.shape(), ShapeError, name(), ": targets ", shape_str(targets.shape()),
           " must have the shape of idx ", shape_str(idx.shape()));
  Tensor hid = hidden(idx);
  const int64_t n = idx.size(0) * idx.size(1);
  Tensor rows = hid.reshape({n, config.n_embd});
  Tensor t = targets.reshape({n});
  if (config.chunked_loss) return chunked_cross_entropy(rows, wte->weight, t, config.loss_chunk_rows, ignore_index);
  return cross_entropy(linear(rows, wte->weight, Tensor()), t, "mean", ignore_index);
}

Tensor GPT::generate(const Tensor& idx, int64_t max_new_tokens, double temperature, int64_t top_k) {
  const char* op = "GPT::generate";
  HR_CHECK(idx.dim() == 2 && idx.size(0) > 0 && idx.size(1) > 0, ShapeError, op,
           ": idx must be a non-empty [B, T] of tokens, got ", describe(idx));
  HR_CHECK(max_new_tokens >= 0, ValueError, op, ": max_new_tokens must be >= 0, got ", max_new_tokens);
  HR_CHECK(temperature > 0, ValueError, op, ": temperature must be positive, got ", temperature);
  HR_CHECK(top_k >= 0, ValueError, op, ": top_k must be >= 0 (0: all tokens), got ", top_k);
  NoGradGuard no_grad;
  const bool was_training = is_training();
  eval();
  struct Restore {
    GPT* m;
    bool on;
    ~Restore() { m->train(on); }
  } restore{this, was_training};

  const int64_t b = idx.size(0), vocab = config.vocab_size;
  std::vector<std::vector<int64_t>> seqs(static_cast<size_t>(b));
  {
    std::vector<int64_t> flat = idx.to(Device::cpu()).to(DType::i64).to_vector<int64_t>();
    for (int64_t r = 0; r < b; ++r)
      seqs[static_cast<size_t>(r)].assign(flat.begin() + r * idx.size(1), flat.begin() + (r + 1) * idx.size(1));
  }
  const TensorOptions opts = TensorOptions().dtype(DType::i64).device(idx.device());
  std::vector<double> probs(static_cast<size_t>(vocab));
  std::vector<int64_t> order(static_cast<size_t>(vocab));
  for (int64_t step = 0; step < max_new_tokens; ++step) {
    const auto len = static_cast<int64_t>(seqs[0].size());
    const int64_t tc = std::min(len, config.block_size);
    std::vector<int64_t> ctx;
    ctx.reserve(static_cast<size_t>(b * tc));
    for (const auto& s : seqs) ctx.insert(ctx.end(), s.end() - tc, s.end());
    Tensor logits = forward(Tensor::from_vector(ctx, {b, tc}, opts));  // [B, tc, V]
    std::vector<double> last = logits.select(1, tc - 1).to(DType::f64).to_vector<double>();
    std::vector<double> u = Tensor::rand({b}, TensorOptions().dtype(DType::f64)).to_vector<double>();
    for (int64_t r = 0; r < b; ++r) {
      const double* row = last.data() + r * vocab;
      // Optionally keep the top_k logits, then softmax(logits / temperature) and an inverse-CDF draw.
      double cutoff = -std::numeric_limits<double>::infinity();
      if (top_k > 0 && top_k < vocab) {
        std::iota(order.begin(), order.end(), int64_t{0});
        std::nth_element(order.begin(), order.begin() + (top_k - 1), order.end(),
                         [&](int64_t x, int64_t y) { return row[x] > row[y]; });
        cutoff = row[order[static_cast<size_t>(top_k - 1)]];
      }
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < vocab; ++j) mx = std::max(mx, row[j]);
      double total = 0;
      for (int64_t j = 0; j < vocab; ++j) {
        const double pj = row[j] >= cutoff ? std::exp((row[j] - mx) / temperature) : 0.0;
        probs[static_cast<size_t>(j)] = pj;
        total += pj;
      }
      const double target = u[static_cast<size_t>(r)] * total;
      int64_t pick = -1;
      double acc = 0;
      for (int64_t j = 0; j < vocab; ++j) {
        if (probs[static_cast<size_t>(j)] <= 0) continue;
        pick = j;  // the last possible token, should rounding leave acc <= target at the end
        acc += probs[static_cast<size_t>(j)];
        if (acc > target) break;
      }
      HR_CHECK(pick >= 0, ValueError, op, ": the logits of row ", r, " give no token a probability (NaN logits?)");
      seqs[static_cast<size_t>(r)].push_back(pick);
    }
  }
  std::vector<int64_t> flat;
  for (const auto& s : seqs) flat.insert(flat.end(), s.begin(), s.end());
  return Tensor::from_vector(flat, {b, static_cast<int64_t>(seqs[0].size())}, opts);
}

void GPT::set_attention(AttentionImpl impl) {
  config.attention = impl;
  for (auto& blk : blocks) blk->attn->impl = impl;
}

}  // namespace headroom::nn
