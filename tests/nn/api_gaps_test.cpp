// Issue 17's module API gaps: the activation modules, layers built in a given dtype on a given
// device (nn::LayerOptions), and modules whose forward takes several tensors
// (Note [several inputs] in nn/module.h).
#include <cmath>
#include <functional>
#include <memory>

#include "nn/nn.h"
#include "test_util.h"

namespace headroom {
namespace {

using testing::all_close;
using testing::grad_ok;
using testing::rand_f64;

// ---- activations ----

// The module's output equals the functional op's, and so does the gradient it sends back.
void expect_module_matches(nn::Module& m, const std::function<Tensor(const Tensor&)>& f, const Tensor& x0) {
  SCOPED_TRACE(m.name());
  Tensor a = x0.detach().clone().set_requires_grad(true);
  Tensor b = x0.detach().clone().set_requires_grad(true);
  Tensor y = m(a * 1.0);  // a non-leaf input, so in-place modules may overwrite it
  Tensor ref = f(b * 1.0);
  EXPECT_TRUE(all_close(y, ref));
  Tensor w = Tensor::randn(ref.shape(), DType::f64);
  (y * w).sum().backward();
  (ref * w).sum().backward();
  ASSERT_TRUE(a.grad().defined());
  EXPECT_TRUE(all_close(a.grad(), b.grad()));
}

TEST(ActivationModules, MatchTheFunctionalOpsAndPassGradients) {
  manual_seed(3);
  Tensor x = Tensor::randn({4, 5}, DType::f64) * 2.0;
  nn::Tanh tanh_m;
  nn::Tanh tanh_inplace(true);
  nn::Sigmoid sigmoid_m;
  nn::Sigmoid sigmoid_inplace(true);
  nn::SiLU silu_m;
  nn::LeakyReLU leaky(0.2);
  nn::ELU elu_m(0.5);
  nn::Softmax softmax_m(-1);
  nn::LogSoftmax log_softmax_m(0);
  nn::GELU gelu_m;
  expect_module_matches(
      tanh_m, [](const Tensor& t) { return tanh(t); }, x);
  expect_module_matches(
      tanh_inplace, [](const Tensor& t) { return tanh(t); }, x);
  expect_module_matches(
      sigmoid_m, [](const Tensor& t) { return sigmoid(t); }, x);
  expect_module_matches(
      sigmoid_inplace, [](const Tensor& t) { return sigmoid(t); }, x);
  expect_module_matches(
      silu_m, [](const Tensor& t) { return t * sigmoid(t); }, x);
  expect_module_matches(
      leaky, [](const Tensor& t) { return where(gt(t, scalar_like(t, 0)), t, t * 0.2); }, x);
  expect_module_matches(
      elu_m, [](const Tensor& t) { return where(gt(t, scalar_like(t, 0)), t, (exp(t) - 1.0) * 0.5); }, x);
  expect_module_matches(
      softmax_m, [](const Tensor& t) { return softmax(t, 1); }, x);
  expect_module_matches(
      log_softmax_m, [](const Tensor& t) { return log_softmax(t, 0); }, x);
  expect_module_matches(
      gelu_m, [](const Tensor& t) { return gelu(t); }, x);
  EXPECT_EQ(tanh_m.name(), "Tanh()");
  EXPECT_EQ(sigmoid_inplace.name(), "Sigmoid(inplace)");
  EXPECT_EQ(silu_m.name(), "SiLU()");
  EXPECT_EQ(leaky.name(), "LeakyReLU(negative_slope=0.2)");
  EXPECT_EQ(elu_m.name(), "ELU(alpha=0.5)");
  EXPECT_EQ(softmax_m.name(), "Softmax(dim=-1)");
  EXPECT_EQ(log_softmax_m.name(), "LogSoftmax(dim=0)");
}

TEST(ActivationModules, NewCompositesHaveHandValuesAndPassGradcheck) {
  Tensor x = Tensor::from_vector({-2.0, -0.5, 0.5, 3.0}, {4}, DType::f64);
  EXPECT_TRUE(all_close(leaky_relu(x, 0.1), Tensor::from_vector({-0.2, -0.05, 0.5, 3.0}, {4}, DType::f64)));
  EXPECT_TRUE(all_close(
      elu(x, 2.0),
      Tensor::from_vector({2.0 * (std::exp(-2.0) - 1), 2.0 * (std::exp(-0.5) - 1), 0.5, 3.0}, {4}, DType::f64)));
  EXPECT_TRUE(all_close(silu(x), Tensor::from_vector({-2.0 / (1 + std::exp(2.0)), -0.5 / (1 + std::exp(0.5)),
                                                      0.5 / (1 + std::exp(-0.5)), 3.0 / (1 + std::exp(-3.0))},
                                                     {4}, DType::f64)));
  manual_seed(4);
  Tensor r = rand_f64({3, 4});
  EXPECT_TRUE(grad_ok([](const std::vector<Tensor>& in) { return silu(in[0]); }, {r}));
  EXPECT_TRUE(grad_ok([](const std::vector<Tensor>& in) { return leaky_relu(in[0], 0.3); }, {r}));
  EXPECT_TRUE(grad_ok([](const std::vector<Tensor>& in) { return elu(in[0], 1.5); }, {r}));
  // ELU of a large input: gradient 1, not NaN from exp's overflow in the unselected branch.
  Tensor big = Tensor::from_vector({1000.0}, {1}, DType::f32).set_requires_grad(true);
  elu(big).sum().backward();
  EXPECT_EQ(big.grad().item<double>(), 1.0);
}

// ---- LayerOptions: parameters made in the dtype, on the device ----

int64_t rounded(int64_t bytes) { return (bytes + 511) / 512 * 512; }

TEST(LayerOptions, LinearIsBuiltOnTheDeviceInTheDtypeWithNoF32Copy) {
  const Device dev = Device::cpu(2);
  CachingAllocator& target = caching_allocator(dev);
  CachingAllocator& cpu0 = caching_allocator(Device::cpu(0));
  const MemoryStats t0 = target.stats(), c0 = cpu0.stats();
  nn::Linear lin(64, 32, nn::LayerOptions{.dtype = DType::bf16, .device = dev});
  const MemoryStats t1 = target.stats(), c1 = cpu0.stats();
  for (const Tensor& p : lin.parameters()) {
    EXPECT_EQ(p.dtype(), DType::bf16);
    EXPECT_EQ(p.device(), dev);
    EXPECT_TRUE(p.requires_grad());
  }
  // Nothing at all on cpu:0, and on the device the parameter allocations are exactly the two
  // bf16 tensors: no f32 parameter made first and converted.
  EXPECT_EQ(c1.num_allocs, c0.num_allocs);
  EXPECT_EQ(c1.allocated_bytes.allocated, c0.allocated_bytes.allocated);
  const auto param_bytes = [](const MemoryStats& s) { return s.category(MemoryCategory::parameter).allocated; };
  EXPECT_EQ(param_bytes(t1) - param_bytes(t0), rounded(64 * 32 * 2) + rounded(32 * 2));
  EXPECT_EQ(t1.category(MemoryCategory::parameter).current - t0.category(MemoryCategory::parameter).current,
            rounded(64 * 32 * 2) + rounded(32 * 2));

  // The check can fail: the old way (build, then convert) allocates f32 parameters on cpu:0.
  const MemoryStats c2 = cpu0.stats();
  nn::Linear old(64, 32);
  old.to(DType::bf16);
  old.to(dev);
  EXPECT_GE(param_bytes(cpu0.stats()) - param_bytes(c2), 64 * 32 * 4);
  // Either way the layer works on the device.
  Tensor x = Tensor::randn({3, 64}, TensorOptions().dtype(DType::bf16).device(dev));
  EXPECT_EQ(lin(x).device(), dev);
  EXPECT_EQ(lin(x).dtype(), DType::bf16);
}

TEST(LayerOptions, EveryLayerWithParametersTakesThem) {
  const Device dev = Device::cpu(1);
  const nn::LayerOptions f64_dev{.dtype = DType::f64, .device = dev};
  const MemoryStats c0 = caching_allocator(Device::cpu(0)).stats();
  std::vector<std::shared_ptr<nn::Module>> layers = {
      std::make_shared<nn::Linear>(3, 2, false, f64_dev),
      std::make_shared<nn::Conv2d>(2, 4, 3, 1, 1, 1, true, f64_dev),
      std::make_shared<nn::Embedding>(10, 4, f64_dev),
      std::make_shared<nn::LayerNorm>(Shape{4}, 1e-5, f64_dev),
      std::make_shared<nn::BatchNorm2d>(4, 1e-5, 0.1, f64_dev),
      std::make_shared<nn::GroupNorm>(2, 4, 1e-5, true, f64_dev),
  };
  EXPECT_EQ(caching_allocator(Device::cpu(0)).stats().num_allocs, c0.num_allocs);
  for (const auto& m : layers) {
    SCOPED_TRACE(m->name());
    EXPECT_FALSE(m->parameters().empty());
    for (const Tensor& p : m->parameters()) {
      EXPECT_EQ(p.dtype(), DType::f64);
      EXPECT_EQ(p.device(), dev);
    }
    for (const auto& [name, b] : m->named_buffers()) {
      EXPECT_EQ(b.device(), dev) << name;
      EXPECT_EQ(b.dtype(), name == "num_batches_tracked" ? DType::i64 : DType::f64) << name;
    }
  }
  // Values as the defaults: norms start at weight 1, bias 0.
  auto ln = std::static_pointer_cast<nn::LayerNorm>(layers[3]);
  EXPECT_EQ(ln->weight.to_vector<double>(), std::vector<double>(4, 1.0));
  EXPECT_EQ(ln->bias.to_vector<double>(), std::vector<double>(4, 0.0));
  // Forward on the device.
  Tensor img = Tensor::randn({2, 2, 5, 5}, TensorOptions().dtype(DType::f64).device(dev));
  Tensor h = (*layers[1])(img);
  EXPECT_EQ(h.device(), dev);
  EXPECT_EQ((*layers[5])((*layers[4])(h)).dtype(), DType::f64);
  Tensor ids = Tensor::from_vector({1, 7, 3}, {3}, TensorOptions().dtype(DType::i64).device(dev));
  EXPECT_EQ((*layers[3])((*layers[2])(ids)).shape(), (Shape{3, 4}));
  // Integer parameters make no sense: the message names the layer.
  EXPECT_THROW_WITH(nn::Linear(3, 2, nn::LayerOptions{.dtype = DType::i32}), DTypeError, "Linear");
  EXPECT_THROW_WITH(nn::GroupNorm(2, 4, 1e-5, true, nn::LayerOptions{.dtype = DType::i64}), DTypeError, "GroupNorm");
  // The old constructors are unchanged: f32 on cpu:0.
  nn::Linear plain(3, 2);
  EXPECT_EQ(plain.weight.dtype(), DType::f32);
  EXPECT_EQ(plain.weight.device(), Device::cpu());
}

// ---- several inputs ----

// out = a * b * scale: forward takes two tensors.
class ScaledProduct : public nn::Module {
 public:
  ScaledProduct() {
    scale = Tensor::full({1}, 2.0, DType::f64);
    register_parameter("scale", &scale);
  }
  using Module::forward;  // keep forward(const Tensor&) visible beside the override
  Tensor forward(const std::vector<Tensor>& in) override {
    HR_CHECK(in.size() == 2, ValueError, name(), ": takes 2 inputs, got ", in.size());
    return in[0] * in[1] * scale;
  }
  std::string name() const override { return "ScaledProduct()"; }
  Tensor scale;
};

// A model that uses the two-input module inside its own one-input forward.
class Gated : public nn::Module {
 public:
  Gated() {
    fc = register_module("fc", std::make_shared<nn::Linear>(3, 3, nn::LayerOptions{.dtype = DType::f64}));
    gate = register_module("gate", std::make_shared<ScaledProduct>());
  }
  Tensor forward(const Tensor& x) override { return (*gate)(fc->forward(x), sigmoid(x)); }
  std::shared_ptr<nn::Linear> fc;
  std::shared_ptr<ScaledProduct> gate;
};

TEST(SeveralInputs, ForwardTakesAListAndTheCallTakesSeveralTensors) {
  manual_seed(6);
  Tensor a = rand_f64({2, 3}), b = rand_f64({2, 3});
  ScaledProduct m;
  Tensor y = m(a, b);
  EXPECT_TRUE(all_close(y, a * b * 2.0));
  EXPECT_TRUE(all_close(m({a, b}), y));
  EXPECT_TRUE(all_close(m.forward({a, b}), y));
  nn::Module& base = m;
  EXPECT_TRUE(all_close(base(a, b), y));
  // Gradients reach both inputs and the parameter.
  y.sum().backward();
  EXPECT_TRUE(all_close(a.grad(), b.detach() * 2.0));
  EXPECT_TRUE(all_close(b.grad(), a.detach() * 2.0));
  EXPECT_TRUE(all_close(m.scale.grad(), (a * b).sum().detach().reshape({1})));
  // One tensor to a module that needs two, and the module's own count check.
  EXPECT_THROW_WITH(m(a), ValueError, "ScaledProduct(): forward takes several inputs");
  EXPECT_THROW_WITH(m(a, b, a), ValueError, "takes 2 inputs, got 3");
  // Inside another module, which the registry and parameters see as usual.
  Gated g;
  EXPECT_EQ(g.named_parameters().size(), 3u);  // fc.weight, fc.bias, gate.scale
  Tensor x = rand_f64({4, 3}, false);
  EXPECT_TRUE(all_close(g(x), g.fc->forward(x) * sigmoid(x) * 2.0));
}

TEST(SeveralInputs, OneInputModulesAndSequentialAcceptAOneElementList) {
  manual_seed(7);
  auto seq = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(3, 4, nn::LayerOptions{.dtype = DType::f64}), std::make_shared<nn::Tanh>()});
  Tensor x = rand_f64({2, 3}, false);
  Tensor y = (*seq)(x);
  EXPECT_TRUE(all_close((*seq)(std::vector<Tensor>{x}), y));
  nn::Module& base = *seq;
  EXPECT_TRUE(all_close(base.forward(std::vector<Tensor>{x}), y));
  EXPECT_THROW_WITH((*seq)(x, x), ValueError, "forward takes one input, got 2");
  EXPECT_THROW_WITH((*seq)(std::vector<Tensor>{}), ValueError, "got 0");
}

}  // namespace
}  // namespace headroom
