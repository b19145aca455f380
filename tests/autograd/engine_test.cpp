// The backward engine: dependency order, fan-in, release of saved tensors, retain_graph,
// version checks, grad modes and detach.
#include "test_util.h"

namespace headroom {
namespace {

using testing::all_close;
using testing::rand_f64;

TEST(Autograd, ChainAndFanIn) {
  Tensor x = Tensor::from_vector({1.0, 2.0, 3.0}, {3}, DType::f64).set_requires_grad();
  Tensor y = x * x;  // used twice below: gradients fan in
  Tensor z = (y + y * x).sum();
  z.backward();
  // dz/dx = 2x + 3x^2
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{5, 16, 33}));
  EXPECT_TRUE(x.is_leaf());
  EXPECT_FALSE(y.is_leaf());
  EXPECT_EQ(y.grad_fn()->name(), "mul");
}

TEST(Autograd, GradientsAccumulateAcrossBackwards) {
  Tensor x = Tensor::ones({2}, DType::f64).set_requires_grad();
  (x * 3.0).sum().backward();
  (x * 4.0).sum().backward();
  EXPECT_EQ(x.grad().to_vector<double>(), (std::vector<double>{7, 7}));
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
}

TEST(Autograd, SavedTensorsAreReleasedAfterTheirNodeRuns) {
  Tensor x = rand_f64({64, 64});
  Allocator& alloc = allocator_for(Device::cpu());
  size_t before = alloc.bytes_in_use();
  Tensor loss;
  {
    Tensor h = x;
    for (int i = 0; i < 4; ++i) h = exp(h * 0.01);  // each exp saves its 32 KiB output
    loss = h.sum();
  }
  size_t with_graph = alloc.bytes_in_use();
  EXPECT_GE(with_graph - before, 4u * 64 * 64 * 8);
  loss.backward();
  // Only x.grad (32 KiB) and the scalar loss stay; the saved activations are gone.
  EXPECT_LE(alloc.bytes_in_use() - before, 64u * 64 * 8 + 1024);
  EXPECT_THROW_WITH(loss.backward(), AutogradError, "a second time");
}

TEST(Autograd, RetainGraphAllowsASecondBackward) {
  Tensor x = rand_f64({3});
  Tensor loss = exp(x).sum();
  loss.backward({}, /*retain_graph=*/true);
  Tensor first = x.grad().clone();
  loss.backward();
  EXPECT_TRUE(all_close(x.grad(), first * 2.0));
}

TEST(Autograd, InPlaceChangeOfASavedTensorIsCaught) {
  Tensor x = rand_f64({4});
  Tensor y = exp(x);  // saves its output y
  Tensor loss = (y * 2.0).sum();
  {
    NoGradGuard g;
    y.add_(Tensor::ones({4}, DType::f64));  // changes what exp saved
  }
  EXPECT_THROW_WITH(loss.backward(), AutogradError, "backward of exp");
}

TEST(Autograd, InPlaceOnATensorThatRequiresGradIsRefused) {
  Tensor x = rand_f64({4});
  EXPECT_THROW_WITH(x.add_(Tensor::ones({4}, DType::f64)), AutogradError, "NoGradGuard");
  NoGradGuard g;
  EXPECT_NO_THROW(x.add_(Tensor::ones({4}, DType::f64)));
}

TEST(Autograd, NoGradAndInferenceRecordNothing) {
  Tensor x = rand_f64({4});
  {
    NoGradGuard g;
    Tensor y = x * 2.0;
    EXPECT_FALSE(y.requires_grad());
    {
      EnableGradGuard e;
      EXPECT_TRUE((x * 2.0).requires_grad());
    }
  }
  {
    InferenceGuard g;
    Tensor y = exp(x);
    EXPECT_FALSE(y.requires_grad());
  }
  EXPECT_TRUE((x * 2.0).requires_grad());
  // An edit inside inference mode of a tensor that a graph saved outside it is still caught.
  Tensor w = rand_f64({2}), v = rand_f64({2}, false);
  Tensor loss = (w * v).sum();
  {
    InferenceGuard g;
    v.add_(Tensor::ones({2}, DType::f64));
  }
  EXPECT_THROW_WITH(loss.backward(), AutogradError, "backward of mul");
}

TEST(Autograd, InPlaceOpsHandleOverlapAndRefuseExpandedDestinations) {
  Tensor x = Tensor::from_vector({1, 2, 3, 4}, {2, 2}, DType::f64);
  x.add_(x.t());  // reads x.t() before any of it is overwritten
  EXPECT_EQ(x.to_vector<double>(), (std::vector<double>{2, 5, 5, 8}));
  Tensor y = Tensor::arange(4, DType::f64);
  y.slice(0, 1, 4).copy_(y.slice(0, 0, 3));  // overlapping shift
  EXPECT_EQ(y.to_vector<double>(), (std::vector<double>{0, 0, 1, 2}));
  Tensor e = Tensor::zeros({1, 3}, DType::f64).expand({4, 3});
  EXPECT_THROW_WITH(e.add_(Tensor::ones({4, 3}, DType::f64)), ValueError, "expanded");
  EXPECT_THROW_WITH(Tensor::ones({2}, DType::i64).add_(Tensor::ones({2}, DType::i64), 0.5), DTypeError, "add_");
}

TEST(Autograd, AnIndexOverwrittenBeforeBackwardIsCaught) {
  Tensor w = rand_f64({4, 3});
  Tensor idx = Tensor::from_vector({0, 1}, {2}, DType::i64);
  Tensor loss = embedding(w, idx).sum();
  {
    NoGradGuard g;
    idx.fill_(2);  // a reused token buffer, refilled too early
  }
  EXPECT_THROW_WITH(loss.backward(), AutogradError, "index_select");
}

TEST(Autograd, DetachSharesStorageWithoutHistory) {
  Tensor x = rand_f64({3});
  Tensor y = x * 2.0;
  Tensor d = y.detach();
  EXPECT_FALSE(d.requires_grad());
  EXPECT_EQ(d.storage(), y.storage());
  Tensor loss = (d * x).sum();  // gradient reaches x only through the direct use
  loss.backward();
  EXPECT_TRUE(all_close(x.grad(), d));
}

TEST(Autograd, RequiresGradPropagatesAndChecks) {
  Tensor a = rand_f64({2}, false), b = rand_f64({2});
  EXPECT_FALSE((a * a).requires_grad());
  EXPECT_TRUE((a * b).requires_grad());
  EXPECT_THROW_WITH(Tensor::ones({2}, DType::i64).set_requires_grad(), DTypeError, "floating");
  EXPECT_THROW_WITH((a * a).sum().backward(), AutogradError, "does not require grad");
  EXPECT_THROW_WITH((b * 2.0).backward(), AutogradError, "one-element");
  EXPECT_THROW_WITH((b * 2.0).backward(Tensor::ones({3}, DType::f64)), ShapeError, "(3,)");
}

TEST(Autograd, GradFunctionLeavesDotGradAlone) {
  Tensor x = rand_f64({3});
  std::vector<Tensor> g = grad({(x * x).sum()}, {x}, {});
  EXPECT_TRUE(all_close(g[0], x * 2.0));
  EXPECT_FALSE(x.grad().defined());
}

TEST(Autograd, MixedDtypeGradientsComeBackInTheInputsDtype) {
  Tensor a = Tensor::randn({3}, DType::f32).set_requires_grad();
  Tensor b = Tensor::randn({3}, DType::f64).set_requires_grad();
  (a * b).sum().backward();
  EXPECT_EQ(a.grad().dtype(), DType::f32);
  EXPECT_EQ(b.grad().dtype(), DType::f64);
  Tensor h = Tensor::randn({3}, DType::f16).set_requires_grad();
  (h.to(DType::f32) * 2.0f).sum().backward();
  EXPECT_EQ(h.grad().dtype(), DType::f16);
  EXPECT_EQ(h.grad().to_vector<float>(), (std::vector<float>{2, 2, 2}));
}

}  // namespace
}  // namespace headroom

namespace headroom {
namespace {

TEST(Autograd, AGraphDroppedWithoutBackwardIsFreed) {
  // Ops that save their own output (exp, relu, sigmoid, ...) must not keep it alive in a cycle.
  Allocator& alloc = allocator_for(Device::cpu());
  Tensor x = testing::rand_f64({128, 128});
  size_t before = alloc.bytes_in_use();
  {
    Tensor y = sigmoid(relu(exp(x * 0.01))) / sqrt(abs(x) + 1.0);
    Tensor z = tanh(amax(y, {1}));
    EXPECT_GT(alloc.bytes_in_use(), before);
  }
  EXPECT_EQ(alloc.bytes_in_use(), before);
}

}  // namespace
}  // namespace headroom
