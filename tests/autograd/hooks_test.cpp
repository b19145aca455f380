// Autograd's hook points: saved-tensor hooks (Note [saved-tensor hooks]), node pre/post hooks
// (Note [node hooks]) and post-accumulate-gradient hooks (Note [post-accumulate-gradient hooks]).
#include <thread>

#include "nn/nn.h"
#include "test_util.h"

namespace headroom {
namespace {

using testing::rand_f64;
using testing::tokens;

std::vector<double> values(const Tensor& t) { return t.to(DType::f64).to_vector<double>(); }

// A small net whose backward reads saved tensors of several ops.
Tensor small_loss(const Tensor& x, const Tensor& w) { return (tanh(matmul(x, w)) * exp(x.sum({1}, true) * 0.1)).sum(); }

TEST(SavedTensorHooks, PackSeesEverySavedTensorWithItsOpAndUnpackFeedsBackward) {
  Tensor x = rand_f64({4, 3}), w = rand_f64({3, 2});
  small_loss(x, w).backward();
  const Tensor gx = x.grad(), gw = w.grad();
  x.zero_grad();
  w.zero_grad();

  std::vector<std::string> ops;
  int unpacks = 0;
  Tensor loss;
  {
    SavedTensorHooks hooks(
        [&](const Tensor& t, const char* op) -> std::any {
          ops.emplace_back(op);
          return t.clone();
        },
        [&](const std::any& p) {
          ++unpacks;
          return std::any_cast<Tensor>(p);
        });
    EXPECT_TRUE(SavedTensorHooks::active());
    loss = small_loss(x, w);
  }
  EXPECT_FALSE(SavedTensorHooks::active());
  ASSERT_FALSE(ops.empty());
  EXPECT_NE(std::find(ops.begin(), ops.end(), "matmul"), ops.end());
  EXPECT_NE(std::find(ops.begin(), ops.end(), "tanh"), ops.end());
  loss.backward();  // outside the scope: the unpack of the scope that packed is used
  EXPECT_EQ(unpacks, static_cast<int>(ops.size()));
  EXPECT_EQ(values(x.grad()), values(gx));
  EXPECT_EQ(values(w.grad()), values(gw));
}

TEST(SavedTensorHooks, ScopesNestAndAreThreadLocal) {
  int outer = 0, inner = 0, other_thread = 0;
  auto keep = [](const std::any& p) { return std::any_cast<Tensor>(p); };
  Tensor x = rand_f64({3});
  SavedTensorHooks a(
      [&](const Tensor& t, const char*) -> std::any {
        ++outer;
        return t;
      },
      keep);
  Tensor y = exp(x);
  {
    SavedTensorHooks b(
        [&](const Tensor& t, const char*) -> std::any {
          ++inner;
          return t;
        },
        keep);
    y = exp(y);
    std::thread([&] {
      Tensor z = exp(rand_f64({3}));  // no scope on this thread
      other_thread = SavedTensorHooks::active() ? 1 : 0;
    }).join();
  }
  y = exp(y);
  EXPECT_EQ(outer, 2);
  EXPECT_EQ(inner, 1);
  EXPECT_EQ(other_thread, 0);
  y.sum().backward();
  EXPECT_TRUE(x.grad().defined());
}

TEST(SavedTensorHooks, APackHookSavesNormallyInsideAndCannotRecurse) {
  int packs = 0;
  SavedTensorHooks hooks(
      [&](const Tensor& t, const char*) -> std::any {
        ++packs;
        EXPECT_FALSE(SavedTensorHooks::active());
        Tensor w = rand_f64({3});
        return exp(w * t);  // an op that saves, inside the pack: not packed again
      },
      [](const std::any& p) { return std::any_cast<Tensor>(p).detach(); });
  Tensor x = rand_f64({3});
  Tensor y = exp(x);
  EXPECT_EQ(packs, 1);
  EXPECT_TRUE(SavedTensorHooks::active());
}

// Every op saves through SavedTensor: with hooks that keep nothing, a forward in grad mode holds
// the same bytes as the same forward under no_grad -- no closure holds a tensor of its own.
// (Closures may hold index tensors the caller also holds: targets, tokens.)
int64_t forward_bytes(const std::function<Tensor()>& forward, bool with_hooks) {
  Allocator& alloc = allocator_for(Device::cpu());
  const auto before = static_cast<int64_t>(alloc.bytes_in_use());
  Tensor out;
  if (with_hooks) {
    SavedTensorHooks drop([](const Tensor&, const char*) -> std::any { return {}; },
                          [](const std::any&) -> Tensor { throw AutogradError("dropped"); });
    out = forward();
  } else {
    NoGradGuard no_grad;
    out = forward();
  }
  return static_cast<int64_t>(alloc.bytes_in_use()) - before;
}

TEST(SavedTensorHooks, EveryOpOfTheReferenceModelsSavesThroughThem) {
  manual_seed(3);
  nn::GPTConfig cfg;
  cfg.vocab_size = 64;
  cfg.block_size = 16;
  cfg.n_layer = 2;
  cfg.n_head = 2;
  cfg.n_embd = 32;
  cfg.dropout = 0.1;
  nn::GPT gpt(cfg);
  Tensor idx = tokens({2, 16}, 64, 1), targets = tokens({2, 16}, 64, 2);
  auto gpt_loss = [&] { return gpt.loss(idx, targets); };
  EXPECT_EQ(forward_bytes(gpt_loss, true), forward_bytes(gpt_loss, false));

  nn::Sequential cnn({std::make_shared<nn::Conv2d>(1, 4, 3, 1, 1), std::make_shared<nn::BatchNorm2d>(4),
                      std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(2),
                      std::make_shared<nn::GroupNorm>(2, 4), std::make_shared<nn::Flatten>(),
                      std::make_shared<nn::Linear>(4 * 4 * 4, 10)});
  Tensor images = Tensor::randn({3, 1, 8, 8}), labels = tokens({3}, 10, 3);
  auto cnn_loss = [&] { return cross_entropy(cnn.forward(images), labels); };
  EXPECT_EQ(forward_bytes(cnn_loss, true), forward_bytes(cnn_loss, false));
}

TEST(SavedTensorHooks, TheVersionCheckHoldsAcrossPackAndUnpack) {
  Tensor w = rand_f64({3});
  Tensor x = rand_f64({3}, false);
  Tensor loss;
  {
    // Keeps a copy, so the original may be freed: the check uses the original's counter.
    SavedTensorHooks hooks([](const Tensor& t, const char*) -> std::any { return t.clone(); },
                           [](const std::any& p) { return std::any_cast<Tensor>(p); });
    loss = (w * x).sum();
  }
  x.mul_(2.0);
  EXPECT_THROW_WITH(loss.backward(), AutogradError,
                    "backward of mul (f64 (3,) on cpu, packed by a saved-tensor hook) was modified in place");
}

TEST(SavedTensorHooks, AnUnpackOfTheWrongShapeOrDtypeIsRefusedNamingTheOp) {
  Tensor x = rand_f64({3});
  Tensor loss;
  {
    SavedTensorHooks hooks([](const Tensor&, const char*) -> std::any { return 0; },
                           [](const std::any&) { return Tensor::zeros({4}, DType::f64); });
    loss = exp(x).sum();
  }
  EXPECT_THROW_WITH(loss.backward(), AutogradError, "exp");
  Tensor loss2;
  {
    SavedTensorHooks hooks([](const Tensor&, const char*) -> std::any { return 0; },
                           [](const std::any&) { return Tensor(); });
    loss2 = exp(x).sum();
  }
  EXPECT_THROW_WITH(loss2.backward(), AutogradError, "undefined tensor");
  EXPECT_THROW_WITH(SavedTensorHooks(nullptr, nullptr), ValueError, "pack");
}

TEST(NodeHooks, PreAndPostHooksSeeAndMayReplaceGradients) {
  Tensor x = rand_f64({3});
  Tensor y = x * 2.0;
  Tensor z = exp(y);
  std::vector<std::string> order;
  auto h1 = z.grad_fn()->add_pre_hook([&](const Tensor& g) {
    order.push_back("pre");
    return g * 3.0;  // the gradient reaching exp's backward, tripled
  });
  auto h2 = y.grad_fn()->add_post_hook([&](const std::vector<Tensor>& gi, const Tensor&) {
    order.push_back("post");
    EXPECT_EQ(gi.size(), 2u);  // mul by a scalar: x and the scalar
    return std::vector<Tensor>{};
  });
  z.sum().backward(Tensor(), true);
  EXPECT_EQ(order, (std::vector<std::string>{"pre", "post"}));
  std::vector<double> expect;
  for (double v : values(x)) expect.push_back(3.0 * 2.0 * std::exp(2.0 * v));
  const std::vector<double> got = values(x.grad());
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(got[i], expect[i], 1e-12 * std::abs(expect[i]));

  h1.remove();
  h1.remove();  // twice: nothing
  x.zero_grad();
  z.sum().backward(Tensor(), true);
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(values(x.grad())[i], expect[i] / 3.0, 1e-12 * std::abs(expect[i]));
  EXPECT_EQ(order.size(), 3u);  // only the post-hook ran again
}

TEST(NodeHooks, AHookMayNotChangeAShape) {
  Tensor x = rand_f64({3});
  Tensor z = exp(x * 2.0);
  auto h = z.grad_fn()->add_pre_hook([](const Tensor&) { return Tensor::ones({4}, DType::f64); });
  EXPECT_THROW_WITH(z.sum().backward(Tensor(), true), ShapeError, "pre-hook 0 of exp");
  h.remove();
  auto d = z.grad_fn()->add_pre_hook([](const Tensor& g) { return g.to(DType::f32); });
  EXPECT_THROW_WITH(z.sum().backward(Tensor(), true), ShapeError, "must keep the shape, dtype and device");
  d.remove();
  auto p = z.grad_fn()->add_post_hook(
      [](const std::vector<Tensor>&, const Tensor&) { return std::vector<Tensor>{Tensor::ones({2}, DType::f64)}; });
  EXPECT_THROW_WITH(z.sum().backward(Tensor(), true), ShapeError, "post-hook 0 of exp");
}

TEST(TensorHook, SeesTheSummedGradientOfATensorAndMayReplaceIt) {
  Tensor x = rand_f64({3});
  Tensor y = x * 2.0;
  std::vector<std::vector<double>> seen;
  auto h = register_hook(y, [&](const Tensor& g) {
    seen.push_back(values(g));
    return g * 10.0;
  });
  (y * 3.0 + y).sum().backward(Tensor(), true);  // y used twice: one call, with 3 + 1
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], (std::vector<double>{4, 4, 4}));
  EXPECT_EQ(values(x.grad()), (std::vector<double>{80, 80, 80}));  // 10 * 4 * 2

  // On a leaf: the hook survives between backwards (its AccumulateGrad is kept for it).
  Tensor w = rand_f64({2});
  int calls = 0;
  auto hw = register_hook(w, [&](const Tensor&) {
    ++calls;
    return Tensor();
  });
  (w * 2.0).sum().backward();
  (w * 3.0).sum().backward();
  EXPECT_EQ(calls, 2);
  hw.remove();
  (w * 3.0).sum().backward();
  EXPECT_EQ(calls, 2);

  h.remove();
  auto bad = register_hook(y, [](const Tensor&) { return Tensor::ones({5}, DType::f64); });
  EXPECT_THROW_WITH((y * 1.0).sum().backward(Tensor(), true), ShapeError, "pre-hook 0 of mul");
  EXPECT_THROW_WITH(register_hook(rand_f64({2}, false), [](const Tensor& g) { return g; }), AutogradError,
                    "requires grad");
}

TEST(PostAccumulateGradHook, CalledOnceWithTheFinalSumAsSoonAsItIsFinal) {
  // Two layers: w2's gradient is final before the first layer's backward runs.
  Tensor x = rand_f64({2, 3}, false);
  Tensor w1 = rand_f64({3, 3}), w2 = rand_f64({3, 1});
  std::vector<std::string> events;
  std::vector<double> seen;
  auto h = register_post_accumulate_grad_hook(w1, [&](const Tensor& leaf) {
    events.push_back("w1 final");
    seen = values(leaf.grad());
  });
  register_post_accumulate_grad_hook(w2, [&](const Tensor&) { events.push_back("w2 final"); });
  Tensor a = matmul(x, w1);
  Tensor hdn = tanh(a) + a * 0.5;  // w1's gradient fans in from two uses of a
  Tensor out = matmul(hdn, w2).sum();
  a.grad_fn()->add_pre_hook([&](const Tensor&) {
    events.push_back("layer 1 backward");
    return Tensor();
  });
  out.backward();
  EXPECT_EQ(events, (std::vector<std::string>{"w2 final", "layer 1 backward", "w1 final"}));
  EXPECT_EQ(seen, values(w1.grad()));

  // A second backward: called again, seeing the accumulated .grad.
  Tensor out2 = matmul(tanh(matmul(x, w1)), w2).sum();
  out2.backward();
  EXPECT_EQ(std::count(events.begin(), events.end(), "w1 final"), 2);
  EXPECT_EQ(seen, values(w1.grad()));
  h.remove();
  matmul(matmul(x, w1), w2).sum().backward();
  EXPECT_EQ(std::count(events.begin(), events.end(), "w1 final"), 2);
}

TEST(PostAccumulateGradHook, RefusesNonLeavesAndShapeChanges) {
  Tensor w = rand_f64({3});
  Tensor y = w * 2.0;
  EXPECT_THROW_WITH(register_post_accumulate_grad_hook(y, [](const Tensor&) {}), AutogradError, "made by mul");
  EXPECT_THROW_WITH(register_post_accumulate_grad_hook(rand_f64({3}, false), [](const Tensor&) {}), AutogradError,
                    "leaf that requires grad");
  register_post_accumulate_grad_hook(w, [](const Tensor& leaf) { leaf.set_grad(Tensor::ones({4}, DType::f64)); });
  EXPECT_THROW_WITH((w * 2.0).sum().backward(), ShapeError, "set_grad");
}

}  // namespace
}  // namespace headroom
