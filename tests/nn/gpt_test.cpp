// The Transformer pieces: chunked cross-entropy against the plain one (value, gradients, peak
// memory), CausalSelfAttention and GPT shapes, naive and fused attention giving one model, the
// tied lm head, a few training steps learning a repeating sequence, sampling, and the errors.
#include <cmath>
#include <set>

#include "autograd/functions/attention.h"
#include "engine/caching_allocator.h"
#include "nn/chunked_cross_entropy.h"
#include "nn/layers/attention.h"
#include "nn/layers/gpt.h"
#include "optim/adam.h"
#include "test_util.h"

namespace headroom {
namespace {

using testing::all_close;
using testing::grad_ok;
using V = std::vector<Tensor>;

Tensor tokens(const std::vector<int64_t>& v, const Shape& shape, Device dev = Device::cpu()) {
  return Tensor::from_vector(v, shape, TensorOptions().dtype(DType::i64).device(dev));
}

// ---- chunked cross-entropy ----

void expect_chunked_equals_plain(Device dev, DType dtype, int64_t n, int64_t c, int64_t vocab, int64_t rows) {
  const TensorOptions opts = TensorOptions().dtype(dtype).device(dev);
  Tensor h0 = Tensor::randn({n, c}, opts), w0 = Tensor::randn({vocab, c}, opts);
  std::vector<int64_t> tv(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) tv[static_cast<size_t>(i)] = i % 7 == 3 ? -100 : (i * 13 + 5) % vocab;
  Tensor target = tokens(tv, {n}, dev);

  Tensor h1 = h0.clone().set_requires_grad(true), w1 = w0.clone().set_requires_grad(true);
  Tensor plain = cross_entropy(linear(h1, w1, Tensor()), target);
  plain.backward();
  Tensor h2 = h0.clone().set_requires_grad(true), w2 = w0.clone().set_requires_grad(true);
  Tensor chunked = nn::chunked_cross_entropy(h2, w2, target, rows);
  chunked.backward();

  const double tol = dtype == DType::f64 ? 1e-10 : 1e-5;
  const std::string what = str_cat(dtype_name(dtype), " n=", n, " rows=", rows);
  EXPECT_EQ(chunked.dim(), 0);
  EXPECT_EQ(chunked.dtype(), dtype);
  EXPECT_TRUE(all_close(chunked, plain, tol, tol)) << what;
  EXPECT_TRUE(all_close(h2.grad(), h1.grad(), tol, tol)) << what << " dh";
  EXPECT_TRUE(all_close(w2.grad(), w1.grad(), tol, tol)) << what << " dweight";
}

TEST(ChunkedCrossEntropy, EqualsPlainValueAndGradients) {
  manual_seed(200);
  const Device cpu = Device::cpu();
  for (int64_t rows : {1, 5, 37, 0}) {  // a tail chunk of 2, one chunk, the default
    expect_chunked_equals_plain(cpu, DType::f32, 37, 8, 50, rows);
    expect_chunked_equals_plain(cpu, DType::f64, 37, 8, 50, rows);
  }
  expect_chunked_equals_plain(cpu, DType::f32, 3, 4, 11, 64);  // a chunk larger than the data
}

TEST(ChunkedCrossEntropy, Gradcheck) {
  manual_seed(201);
  Tensor h = testing::rand_f64({7, 3}), w = testing::rand_f64({5, 3});
  Tensor target = tokens({0, 4, -100, 2, 2, 1, 3}, {7});
  EXPECT_TRUE(grad_ok([&target](const V& x) { return nn::chunked_cross_entropy(x[0], x[1], target, 3); }, {h, w}));
  // Only one input needing a gradient, and a non-contiguous h.
  Tensor ht = testing::rand_f64({3, 7}, false).t().set_requires_grad(true);
  EXPECT_TRUE(
      grad_ok([&target, &w](const V& x) { return nn::chunked_cross_entropy(x[0], w.detach(), target, 2); }, {ht}));
}

// Peak bytes above the live ones during forward + backward of `loss_fn`.
template <typename F>
int64_t peak_during(Device dev, F&& loss_fn) {
  CachingAllocator& alloc = caching_allocator(dev);
  alloc.reset_peak_stats();
  const int64_t before = alloc.stats().allocated_bytes.current;
  loss_fn().backward();
  return alloc.stats().allocated_bytes.peak - before;
}

TEST(ChunkedCrossEntropy, PeakMemoryBelowMaterialisedLogits) {
  manual_seed(202);
  const Device cpu = Device::cpu();
  const int64_t n = 512, c = 16, vocab = 4096;
  Tensor h = Tensor::randn({n, c}).set_requires_grad(true), w = Tensor::randn({vocab, c}).set_requires_grad(true);
  std::vector<int64_t> tv(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) tv[static_cast<size_t>(i)] = (i * 31) % vocab;
  Tensor target = tokens(tv, {n});
  const int64_t logits_bytes = n * vocab * 4;  // 8 MiB
  // Both runs allocate the gradients of h and w (dropped in between).
  const int64_t plain = peak_during(cpu, [&] { return cross_entropy(linear(h, w, Tensor()), target); });
  h.zero_grad();
  w.zero_grad();
  const int64_t chunked = peak_during(cpu, [&] { return nn::chunked_cross_entropy(h, w, target, 32); });
  EXPECT_GE(plain, logits_bytes) << plain;
  EXPECT_LT(chunked, logits_bytes / 4) << chunked;
  EXPECT_LT(chunked * 4, plain) << chunked << " vs " << plain;
}

TEST(ChunkedCrossEntropy, ErrorsAndIgnoredRows) {
  Tensor h = Tensor::randn({4, 3}), w = Tensor::randn({6, 3});
  EXPECT_THROW_WITH(nn::chunked_cross_entropy(h, Tensor::randn({6, 2}), tokens({0, 1, 2, 3}, {4})), ShapeError,
                    "(6, 2)");
  EXPECT_THROW_WITH(nn::chunked_cross_entropy(h, w.to(DType::f64), tokens({0, 1, 2, 3}, {4})), DTypeError, "f64");
  EXPECT_THROW_WITH(nn::chunked_cross_entropy(h, w, tokens({0, 1, 2}, {3})), ShapeError, "target");
  EXPECT_THROW_WITH(nn::chunked_cross_entropy(h, w, tokens({0, -5, 2, 3}, {4})), ValueError, "-5");
  EXPECT_THROW_WITH(nn::chunked_cross_entropy(h, w, tokens({0, 1, 2, 3}, {4}), -1), ValueError, "chunk_rows");
  // A row whose target is ignore_index adds nothing: the mean is over the other rows.
  Tensor all = nn::chunked_cross_entropy(h, w, tokens({0, 1, 2, 3}, {4}), 3);
  Tensor some = nn::chunked_cross_entropy(h, w, tokens({0, 1, 2, 7}, {4}), 3, 7);
  Tensor first3 = cross_entropy(linear(h.slice(0, 0, 3), w, Tensor()), tokens({0, 1, 2}, {3}));
  EXPECT_TRUE(all_close(some, first3, 1e-6, 1e-6));
  EXPECT_FALSE(all_close(all, first3, 1e-6, 1e-6));
}

// ---- the model ----

nn::GPTConfig tiny_config(AttentionImpl impl = AttentionImpl::fused) {
  nn::GPTConfig cfg;
  cfg.vocab_size = 11;
  cfg.block_size = 16;
  cfg.n_layer = 2;
  cfg.n_head = 2;
  cfg.n_embd = 16;
  cfg.attention = impl;
  return cfg;
}

TEST(GPT, ShapesParametersAndBackward) {
  manual_seed(210);
  nn::GPT model(tiny_config());
  const int64_t b = 2, t = 9, c = 16, vocab = 11, layers = 2;
  // wte + wpe + per block (2 LayerNorms, qkv, proj, fc, proj) + ln_f; no separate lm head.
  const int64_t per_block = 2 * 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c);
  EXPECT_EQ(model.num_parameters(), vocab * c + 16 * c + layers * per_block + 2 * c);
  std::vector<int64_t> iv(static_cast<size_t>(b * t));
  for (size_t i = 0; i < iv.size(); ++i) iv[i] = static_cast<int64_t>((i * 7) % 11);
  Tensor idx = tokens(iv, {b, t});
  Tensor logits = model.forward(idx);
  EXPECT_EQ(logits.shape(), (Shape{b, t, vocab}));
  EXPECT_EQ(model.hidden(idx).shape(), (Shape{b, t, c}));
  Tensor loss = model.loss(idx, idx);
  EXPECT_EQ(loss.dim(), 0);
  // At initialisation (weights ~0.02) the predictions are nearly uniform.
  EXPECT_NEAR(loss.item<double>(), std::log(11.0), 0.3);
  loss.backward();
  for (const auto& [name, p] : model.named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_EQ(p.grad().shape(), p.shape()) << name;
  }
  // Attention is causal: logits at position 3 do not depend on tokens after it.
  std::vector<int64_t> iv2 = iv;
  iv2[5] = (iv2[5] + 1) % 11;
  Tensor logits2 = model.forward(tokens(iv2, {b, t}));
  EXPECT_TRUE(all_close(logits2.slice(0, 0, 1).slice(1, 0, 5), logits.slice(0, 0, 1).slice(1, 0, 5), 1e-6, 1e-6));
  EXPECT_FALSE(all_close(logits2.slice(0, 0, 1).slice(1, 5, 6), logits.slice(0, 0, 1).slice(1, 5, 6), 1e-6, 1e-6));
}

TEST(GPT, LmHeadIsTiedToTheTokenEmbedding) {
  manual_seed(211);
  nn::GPT model(tiny_config());
  EXPECT_TRUE(model.lm_head_weight().is_same(model.wte->weight));
  for (const auto& [name, p] : model.named_parameters()) {
    if (name != "wte.weight") {
      EXPECT_NE(p.storage().get(), model.wte->weight.storage().get()) << name;
    }
  }
  // Tokens 0..4 only: rows 5..10 of wte get no gradient through the embedding, so a nonzero
  // gradient there can only come from the lm head using the same tensor.
  Tensor idx = tokens({0, 1, 2, 3, 4, 0, 1, 2}, {1, 8});
  model.loss(idx, tokens({1, 2, 3, 4, 0, 1, 2, 3}, {1, 8})).backward();
  Tensor unused_rows = model.wte->weight.grad().slice(0, 5, 11);
  EXPECT_GT(unused_rows.abs().sum().item<double>(), 1e-6);
  // And the head's gradient equals the one of an explicit (untied) computation.
  Tensor w = model.wte->weight.detach().clone().set_requires_grad(true);
  Tensor hid = model.hidden(idx).detach();
  cross_entropy(linear(hid.reshape({8, 16}), w, Tensor()), tokens({1, 2, 3, 4, 0, 1, 2, 3}, {8})).backward();
  EXPECT_TRUE(all_close(unused_rows, w.grad().slice(0, 5, 11), 1e-6, 1e-5));
}

TEST(GPT, NaiveAndFusedAttentionGiveOneModel) {
  manual_seed(212);
  nn::GPT model(tiny_config(AttentionImpl::naive));
  Tensor idx = tokens({3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8}, {2, 6});
  Tensor tgt = tokens({1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9}, {2, 6});
  auto grads = [&] {
    model.zero_grad();
    Tensor loss = model.loss(idx, tgt);
    loss.backward();
    std::vector<Tensor> g{loss.detach()};
    for (const Tensor& p : model.parameters()) g.push_back(p.grad());
    return g;
  };
  std::vector<Tensor> naive = grads();
  model.set_attention(AttentionImpl::fused);
  EXPECT_EQ(model.blocks[1]->attn->impl, AttentionImpl::fused);
  std::vector<Tensor> fused = grads();
  ASSERT_EQ(naive.size(), fused.size());
  for (size_t i = 0; i < naive.size(); ++i) EXPECT_TRUE(all_close(fused[i], naive[i], 1e-5, 1e-4)) << i;
  // The chunked loss and the materialised one agree as well.
  model.config.chunked_loss = false;
  std::vector<Tensor> plain = grads();
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_TRUE(all_close(plain[i], fused[i], 1e-5, 1e-4)) << i;
}

TEST(GPT, TrainingLearnsARepeatingSequence) {
  manual_seed(213);
  nn::GPTConfig cfg = tiny_config();
  cfg.dropout = 0.1;
  nn::GPT model(cfg);
  // "0 1 2 3 4 5 6 0 1 2 ..." : every next token is determined by the current one.
  const int64_t b = 4, t = 12;
  std::vector<int64_t> xs, ys;
  for (int64_t r = 0; r < b; ++r)
    for (int64_t i = 0; i < t; ++i) {
      xs.push_back((r + i) % 7);
      ys.push_back((r + i + 1) % 7);
    }
  Tensor x = tokens(xs, {b, t}), y = tokens(ys, {b, t});
  optim::AdamW opt(model.parameters(), 1e-2, 0.9, 0.99, 1e-8, 0.0);
  double first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    opt.zero_grad();
    Tensor loss = model.loss(x, y);
    loss.backward();
    opt.step();
    if (step == 0) first = loss.item<double>();
    last = loss.item<double>();
  }
  EXPECT_GT(first, 2.0);
  EXPECT_LT(last, 0.3) << "first " << first;
  // Sampling with top_k = 1 continues the pattern.
  manual_seed(7);
  Tensor out = model.generate(tokens({2, 3, 4}, {1, 3}), 6, 1.0, 1);
  EXPECT_EQ(out.shape(), (Shape{1, 9}));
  EXPECT_EQ(out.to_vector<int64_t>(), (std::vector<int64_t>{2, 3, 4, 5, 6, 0, 1, 2, 3}));
  EXPECT_TRUE(model.is_training());  // generate restores the mode
}

TEST(GPT, GenerateSamplesValidTokensAndCropsTheContext) {
  manual_seed(214);
  nn::GPT model(tiny_config());
  Tensor out = model.generate(tokens({1, 2, 3, 4, 5, 6}, {2, 3}), 20, 0.8, 5);  // beyond block_size 16
  EXPECT_EQ(out.shape(), (Shape{2, 23}));
  std::set<int64_t> seen;
  for (int64_t v : out.to_vector<int64_t>()) {
    EXPECT_GE(v, 0);
    EXPECT_LT(v, 11);
    seen.insert(v);
  }
  EXPECT_GT(seen.size(), 3u);  // an untrained model samples broadly
  EXPECT_THROW_WITH(model.generate(tokens({1}, {1, 1}), 2, 0.0), ValueError, "temperature");
}

TEST(GPT, ConfigAndInputErrors) {
  nn::GPTConfig cfg = tiny_config();
  cfg.n_head = 3;
  EXPECT_THROW_WITH(nn::GPT{cfg}, ValueError, "divisible");
  cfg = tiny_config();
  cfg.dropout = 1.0;
  EXPECT_THROW_WITH(cfg.validate(), ValueError, "dropout");
  nn::GPT model(tiny_config());
  std::vector<int64_t> long_seq(17, 1);
  EXPECT_THROW_WITH(model.forward(tokens(long_seq, {1, 17})), ValueError, "block_size");
  EXPECT_THROW_WITH(model.forward(Tensor::zeros({1, 4})), DTypeError, "integer");
  EXPECT_THROW_WITH(model.loss(tokens({1, 2}, {1, 2}), tokens({1, 2, 3}, {1, 3})), ShapeError, "targets");
  nn::CausalSelfAttention attn(16, 4);
  EXPECT_THROW_WITH(attn.forward(Tensor::randn({2, 5, 8})), ShapeError, "(2, 5, 8)");
  EXPECT_EQ(attn.forward(Tensor::randn({2, 5, 16})).shape(), (Shape{2, 5, 16}));
  EXPECT_NE(nn::GPTConfig::gpt2_small().str().find("embd=768"), std::string::npos);
}

}  // namespace
}  // namespace headroom
