// Module: the registry (names, order, counts), modes, to(), state dicts and files.
#include <unistd.h>

#include <filesystem>

#include "engine/caching_allocator.h"
#include "nn/nn.h"
#include "test_util.h"

namespace headroom {
namespace {

using testing::all_close;

std::vector<std::string> names_of(const std::vector<std::pair<std::string, Tensor>>& v) {
  std::vector<std::string> out;
  for (const auto& [n, t] : v) out.push_back(n);
  return out;
}

std::string temp_path(const std::string& leaf) {
  return (std::filesystem::temp_directory_path() / ("headroom_nn_" + std::to_string(::getpid()) + "_" + leaf)).string();
}

// A custom module using each way of registering: a member parameter, an owned slot, a buffer,
// and children (one of them a Sequential).
class Block : public nn::Module {
 public:
  Block() {
    scale = Tensor::ones({3});
    register_parameter("scale", &scale);
    shift = &register_parameter("shift", Tensor::zeros({3}));
    register_buffer("steps", Tensor::zeros({}, DType::i64));
    fc = register_module("fc", std::make_shared<nn::Linear>(4, 3));
    body = register_module("body", std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
                                       std::make_shared<nn::BatchNorm2d>(2), std::make_shared<nn::Dropout>(0.1)}));
  }
  Tensor forward(const Tensor& x) override { return x * scale + *shift; }
  std::string name() const override { return "Block"; }

  Tensor scale;
  Tensor* shift;
  std::shared_ptr<nn::Linear> fc;
  std::shared_ptr<nn::Sequential> body;
};

TEST(Module, RegistryNamesOrderAndCounts) {
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(4, 3), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(3, 2, false)});
  EXPECT_EQ(names_of(model->named_parameters()), (std::vector<std::string>{"0.weight", "0.bias", "2.weight"}));
  EXPECT_EQ(model->parameters().size(), 3u);
  EXPECT_EQ(model->num_parameters(), 4 * 3 + 3 + 3 * 2);
  EXPECT_EQ(model->named_children().size(), 3u);
  EXPECT_EQ(model->named_children()[1].first, "1");
  EXPECT_EQ(model->size(), 3);
  EXPECT_EQ(model->at(-1)->name(), "Linear(3, 2, bias=false)");
  EXPECT_THROW_WITH(model->at(3), ValueError, "out of range");
  for (const auto& p : model->parameters()) {
    EXPECT_TRUE(p.requires_grad());
    EXPECT_TRUE(p.is_leaf());
  }
  // The registry points at the layers' members.
  auto first = std::dynamic_pointer_cast<nn::Linear>(model->at(0));
  EXPECT_TRUE(model->named_parameters()[0].second.is_same(first->weight));

  Block b;
  EXPECT_EQ(names_of(b.named_parameters()),
            (std::vector<std::string>{"scale", "shift", "fc.weight", "fc.bias", "body.0.weight", "body.0.bias"}));
  EXPECT_EQ(names_of(b.named_buffers()), (std::vector<std::string>{"steps", "body.0.running_mean", "body.0.running_var",
                                                                   "body.0.num_batches_tracked"}));
  EXPECT_EQ(b.num_parameters(), 3 + 3 + 12 + 3 + 2 + 2);
  std::vector<std::string> module_names;
  for (const auto& [n, m] : b.named_modules()) module_names.push_back(n);
  EXPECT_EQ(module_names, (std::vector<std::string>{"fc", "body", "body.0", "body.1"}));
  EXPECT_EQ(b.state_dict().size(), 10u);
  const std::string s = b.summary();
  EXPECT_NE(s.find("body.0: BatchNorm2d(2)"), std::string::npos) << s;
  EXPECT_NE(s.find("fc: Linear(4, 3)  [15]"), std::string::npos) << s;
}

class BadNames : public nn::Module {
 public:
  Tensor forward(const Tensor& x) override { return x; }
  void add(const std::string& name) { register_parameter(name, Tensor::zeros({1})); }
  void add_int(const std::string& name) { register_parameter(name, Tensor::zeros({1}, DType::i64)); }
  void add_child(const std::string& name) { register_module(name, std::make_shared<nn::ReLU>()); }
};

TEST(Module, RegistrationErrors) {
  BadNames m;
  m.add("w");
  EXPECT_THROW_WITH(m.add("w"), ValueError, "'w' is already registered");
  EXPECT_THROW_WITH(m.add_child("w"), ValueError, "'w' is already registered");
  EXPECT_THROW_WITH(m.add("a.b"), ValueError, "contain no '.'");
  EXPECT_THROW_WITH(m.add(""), ValueError, "invalid name");
  EXPECT_THROW_WITH(m.add_int("n"), DTypeError, "must be a floating tensor");
}

// Two modules sharing one weight (tied embeddings): listed once, moved once, still tied.
class Tied : public nn::Module {
 public:
  Tied() {
    emb = register_module("emb", std::make_shared<nn::Embedding>(5, 3));
    head = register_module("head", std::make_shared<nn::Linear>(3, 5, false));
    head->weight = emb->weight;  // the member both registries point at now holds one tensor
  }
  Tensor forward(const Tensor& x) override { return x; }
  std::shared_ptr<nn::Embedding> emb;
  std::shared_ptr<nn::Linear> head;
};

TEST(Module, TiedParametersListedOnceAndStayTied) {
  Tied m;
  EXPECT_EQ(names_of(m.named_parameters()), (std::vector<std::string>{"emb.weight"}));
  EXPECT_EQ(m.num_parameters(), 15);
  EXPECT_EQ(m.state_dict().size(), 2u);  // both names, like PyTorch
  m.to(DType::f64);
  EXPECT_EQ(m.emb->weight.dtype(), DType::f64);
  EXPECT_TRUE(m.emb->weight.is_same(m.head->weight));
}

TEST(Module, TrainEvalPropagates) {
  Block b;
  EXPECT_TRUE(b.is_training());
  b.eval();
  EXPECT_FALSE(b.is_training());
  for (const auto& [n, m] : b.named_modules()) EXPECT_FALSE(m->is_training()) << n;
  b.train();
  for (const auto& [n, m] : b.named_modules()) EXPECT_TRUE(m->is_training()) << n;
  b.body->train(false);  // a subtree only
  EXPECT_TRUE(b.is_training());
  EXPECT_FALSE(b.body->at(0)->is_training());
}

TEST(Module, ToDtypeConvertsFloatsInPlace) {
  Block b;
  Tensor old_w = b.fc->weight;
  Tensor x = Tensor::ones({2, 3});
  (b.forward(x).sum() + b.scale.sum()).backward();
  ASSERT_TRUE(b.scale.grad().defined());
  b.to(DType::f64);
  for (const auto& [n, p] : b.named_parameters()) {
    EXPECT_EQ(p.dtype(), DType::f64) << n;
    EXPECT_TRUE(p.requires_grad()) << n;
    EXPECT_TRUE(p.is_leaf()) << n;
  }
  // The layer's own members changed (forward reads them), and their values survived.
  EXPECT_EQ(b.fc->weight.dtype(), DType::f64);
  EXPECT_EQ(b.shift->dtype(), DType::f64);
  EXPECT_TRUE(all_close(b.fc->weight, old_w.to(DType::f64)));
  EXPECT_EQ(b.scale.grad().dtype(), DType::f64);  // grads travel along
  EXPECT_TRUE(all_close(b.scale.grad(), Tensor::full({3}, 1.0 + 2.0, DType::f64)));
  auto bufs = b.named_buffers();
  EXPECT_EQ(bufs[0].second.dtype(), DType::i64);  // "steps"
  EXPECT_EQ(bufs[1].second.dtype(), DType::f64);  // running_mean
  EXPECT_EQ(bufs[3].second.dtype(), DType::i64);  // num_batches_tracked
  EXPECT_EQ(b.forward(Tensor::ones({3}, DType::f64)).dtype(), DType::f64);
  b.to(DType::bf16);
  EXPECT_EQ(b.fc->bias.dtype(), DType::bf16);
  EXPECT_THROW_WITH(b.to(DType::i32), DTypeError, "floating dtype");
}

TEST(Module, ToDeviceIsInPlaceOrLeavesTheModuleAlone) {
  nn::Linear lin(3, 2);
  Tensor w = lin.weight;
  lin.to(Device::cpu());
  EXPECT_TRUE(lin.weight.is_same(w));  // already there: nothing replaced
  bool moved = true;
  try {
    lin.to(Device::cuda());
  } catch (const DeviceError&) {
    moved = false;
  }
  if (moved) {
    EXPECT_TRUE(lin.weight.device().is_cuda());
    EXPECT_TRUE(lin.bias.device().is_cuda());
    lin.to(Device::cpu());
    EXPECT_TRUE(all_close(lin.weight, w, 0, 0));
  } else {
    EXPECT_TRUE(lin.weight.is_same(w));  // a failed move changes nothing
  }
}

// Parameters (and buffers) count as MemoryCategory::parameter in the allocator's statistics,
// and the initialisers' random draws do not stay behind as temporaries.
TEST(Module, ParametersAreTaggedParameterMemory) {
  auto& alloc = caching_allocator(Device::cpu());
  auto bytes = [&](MemoryCategory c) { return alloc.stats().category(c).current; };
  const int64_t param0 = bytes(MemoryCategory::parameter), temp0 = bytes(MemoryCategory::temporary);
  {
    nn::Linear lin(1000, 300);  // 1.2 MB of weight, 1.2 kB of bias
    const int64_t exact = (1000 * 300 + 300) * 4;
    EXPECT_GE(bytes(MemoryCategory::parameter) - param0, exact);
    EXPECT_LT(bytes(MemoryCategory::parameter) - param0, exact + 4096);  // rounding only
    EXPECT_EQ(bytes(MemoryCategory::temporary), temp0);
    lin.to(DType::f64);  // the converted tensors are parameters too; the f32 ones are gone
    EXPECT_GE(bytes(MemoryCategory::parameter) - param0, 2 * exact);
    EXPECT_LT(bytes(MemoryCategory::parameter) - param0, 2 * exact + 4096);
  }
  EXPECT_EQ(bytes(MemoryCategory::parameter), param0);
}

TEST(Module, ZeroGradDropsGrads) {
  nn::Linear lin(3, 2);
  lin.weight.set_grad(Tensor::ones({2, 3}));
  lin.bias.set_grad(Tensor::ones({2}));
  lin.zero_grad();
  EXPECT_FALSE(lin.weight.grad().defined());
  EXPECT_FALSE(lin.bias.grad().defined());
}

TEST(Module, LoadStateDictCopiesIntoTheSameTensors) {
  manual_seed(1);
  Block a;
  manual_seed(2);
  Block b;
  ASSERT_FALSE(all_close(a.fc->weight, b.fc->weight));
  Tensor w = b.fc->weight;
  const uint64_t v = w.version();
  b.load_state_dict(a.state_dict());
  EXPECT_TRUE(b.fc->weight.is_same(w));  // identity kept
  EXPECT_GT(w.version(), v);
  EXPECT_TRUE(b.fc->weight.requires_grad());
  for (const auto& [name, t] : a.state_dict()) EXPECT_TRUE(all_close(b.state_dict().at(name), t, 0, 0)) << name;
  // Copies, not aliases: changing a afterwards does not change b.
  {
    NoGradGuard g;
    a.fc->weight.fill_(7);
  }
  EXPECT_FALSE(all_close(b.fc->weight, a.fc->weight));
}

TEST(Module, LoadStateDictReportsKeysShapesAndDtypes) {
  Block b;
  auto sd = b.state_dict();
  sd.erase("fc.bias");
  sd.erase("body.0.running_var");
  sd["extra.weight"] = Tensor::zeros({1});
  EXPECT_THROW_WITH(b.load_state_dict(sd), ValueError,
                    "missing keys (in the module, not in the state dict): "
                    "fc.bias, body.0.running_var");
  EXPECT_THROW_WITH(b.load_state_dict(sd), ValueError,
                    "unexpected keys (in the state dict, not in the module): "
                    "extra.weight");
  // Non-strict: the matching keys load, the rest is ignored.
  sd["fc.weight"] = Tensor::full({3, 4}, 0.5);
  b.load_state_dict(sd, /*strict=*/false);
  EXPECT_TRUE(all_close(b.fc->weight, Tensor::full({3, 4}, 0.5)));

  auto bad_shape = b.state_dict();
  bad_shape["fc.weight"] = Tensor::zeros({4, 3});
  bad_shape["scale"] = Tensor::full({3}, 9.0);
  EXPECT_THROW_WITH(b.load_state_dict(bad_shape), ShapeError,
                    "shape mismatch for 'fc.weight': the module has (3, 4), the state dict has (4, 3)");
  EXPECT_TRUE(all_close(b.scale, Tensor::ones({3})));  // checked before anything was written
  auto bad_dtype = b.state_dict();
  bad_dtype["body.0.running_mean"] = Tensor::zeros({2}, DType::f64);
  EXPECT_THROW_WITH(
      b.load_state_dict(bad_dtype), DTypeError,
      "dtype mismatch for 'body.0.running_mean' of shape (2,): the module has f32, the state dict has f64");
}

TEST(Module, SaveAndLoadRoundTripThroughAFile) {
  const std::string path = temp_path("block.hrsd");
  manual_seed(3);
  Block a;
  {
    NoGradGuard g;
    a.named_buffers()[0].second.fill_(42);  // an i64 buffer with a value worth checking
  }
  a.save(path);
  manual_seed(4);
  Block b;
  b.load(path);
  for (const auto& [name, t] : a.state_dict()) {
    Tensor u = b.state_dict().at(name);
    EXPECT_EQ(u.dtype(), t.dtype()) << name;
    EXPECT_TRUE(all_close(u, t, 0, 0)) << name;
  }
  EXPECT_EQ(b.named_buffers()[0].second.item<int64_t>(), 42);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  // A file from another architecture is refused by name.
  nn::Linear other(4, 4);
  EXPECT_THROW_WITH(other.load(path), ValueError, "unexpected keys");
  std::filesystem::remove(path);
  EXPECT_THROW_WITH(b.load(path), IOError, path);
}

}  // namespace
}  // namespace headroom
