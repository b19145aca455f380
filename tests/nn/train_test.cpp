// End to end: small models that must actually learn (XOR, Gaussian blobs, a tiny conv net on
// synthetic images), evaluated for accuracy, then saved and reloaded to give identical outputs.
#include <unistd.h>

#include <filesystem>

#include "nn/nn.h"
#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

double accuracy(nn::Module& model, const Tensor& x, const Tensor& y) {
  NoGradGuard no_grad;
  model.eval();
  Tensor pred = model(x).argmax(1);
  model.train();
  return eq(pred, y).to(DType::f32).mean().item<double>();
}

TEST(Train, MlpLearnsXor) {
  manual_seed(10);
  Tensor x = Tensor::from_vector({0, 0, 0, 1, 1, 0, 1, 1}, {4, 2});
  Tensor y = Tensor::from_vector({0, 1, 1, 0}, {4}, DType::i64);
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(2, 16), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(16, 2)});
  optim::Adam opt(model->parameters(), 0.05);
  nn::CrossEntropyLoss criterion;
  double first = 0, last = 0;
  for (int step = 0; step < 300; ++step) {
    opt.zero_grad();
    Tensor loss = criterion((*model)(x), y);
    loss.backward();
    opt.step();
    last = loss.item<double>();
    if (step == 0) first = last;
  }
  EXPECT_GT(first, 0.5);
  EXPECT_LT(last, 0.05);
  EXPECT_EQ(accuracy(*model, x, y), 1.0);
}

// Three Gaussian blobs in the plane, 100 points each, full-batch SGD with momentum.
TEST(Train, MlpClassifiesBlobsAndReloadsExactly) {
  manual_seed(20);
  const int64_t per = 100;
  Tensor noise = Tensor::randn({3 * per, 2}) * 0.5;
  std::vector<float> centres;
  std::vector<int64_t> labels;
  const float cx[3] = {2.0f, -1.0f, -1.0f}, cy[3] = {0.0f, 1.7f, -1.7f};
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t i = 0; i < per; ++i) {
      centres.push_back(cx[c]);
      centres.push_back(cy[c]);
      labels.push_back(c);
    }
  Tensor x = Tensor::from_vector(centres, {3 * per, 2}) + noise;
  Tensor y = Tensor::from_vector(labels, {3 * per}, DType::i64);

  auto make = [] {
    return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
        std::make_shared<nn::Linear>(2, 32), std::make_shared<nn::GELU>(), std::make_shared<nn::Dropout>(0.1),
        std::make_shared<nn::Linear>(32, 3)});
  };
  auto model = make();
  optim::SGD opt(model->parameters(), 0.1, 0.9, 1e-4);
  optim::StepLR sched(opt, 100, 0.5);
  nn::CrossEntropyLoss criterion;
  for (int step = 0; step < 200; ++step) {
    opt.zero_grad();
    criterion((*model)(x), y).backward();
    optim::clip_grad_norm_(model->parameters(), 5.0);
    opt.step();
    sched.step();
  }
  EXPECT_DOUBLE_EQ(opt.lr(), 0.025);
  EXPECT_GT(accuracy(*model, x, y), 0.97);

  const std::string path =
      (std::filesystem::temp_directory_path() / ("headroom_train_" + std::to_string(::getpid()) + ".hrsd")).string();
  model->save(path);
  auto reloaded = make();
  reloaded->load(path);
  std::filesystem::remove(path);
  model->eval();
  reloaded->eval();
  NoGradGuard no_grad;
  EXPECT_TRUE(testing::all_close((*reloaded)(x), (*model)(x), 0, 0));
}

// A conv net (Conv2d, BatchNorm2d, ReLU, MaxPool2d, Flatten, Linear) tells whether a bright
// 2x2 patch is in the left or the right half of a noisy 8x8 image.
TEST(Train, ConvNetFindsThePatch) {
  manual_seed(30);
  const int64_t n = 64;
  Tensor images = Tensor::randn({n, 1, 8, 8}) * 0.3;
  std::vector<int64_t> labels;
  {
    NoGradGuard g;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t side = i % 2, row = (i * 5) % 7, col = side * 4 + (i / 2) % 3;
      images.select(0, i).slice(1, row, row + 2).slice(2, col, col + 2).add_(Tensor::full({1}, 2.0));
      labels.push_back(side);
    }
  }
  Tensor y = Tensor::from_vector(labels, {n}, DType::i64);
  nn::Sequential model(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Conv2d>(1, 4, 3, 1, 1), std::make_shared<nn::BatchNorm2d>(4), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::MaxPool2d>(2), std::make_shared<nn::Flatten>(), std::make_shared<nn::Linear>(4 * 4 * 4, 2)});
  optim::AdamW opt(model.parameters(), 0.02);
  optim::CosineWithWarmup sched(opt, 5, 60, 0.002);
  nn::CrossEntropyLoss criterion;
  for (int step = 0; step < 60; ++step) {
    opt.zero_grad();
    criterion(model(images), y).backward();
    opt.step();
    sched.step();
  }
  auto bn = std::dynamic_pointer_cast<nn::BatchNorm2d>(model.at(1));
  EXPECT_EQ(bn->num_batches_tracked.item<int64_t>(), 60);
  EXPECT_GE(accuracy(model, images, y), 0.95);
}

// A module built from elementwise ops only (logistic regression): exercises registration of
// owned parameters, autograd and the optimizers without matmul.
class Logistic : public nn::Module {
 public:
  Logistic() {
    w = &register_parameter("w", Tensor::zeros({2}));
    b = &register_parameter("b", Tensor::zeros({}));
  }
  Tensor forward(const Tensor& x) override { return sigmoid((x * *w).sum({1}) + *b); }
  Tensor* w;
  Tensor* b;
};

TEST(Train, ElementwiseLogisticRegression) {
  manual_seed(40);
  Tensor x = Tensor::randn({200, 2});
  Tensor y = gt(x.select(1, 0) * 2.0 - x.select(1, 1), Tensor::scalar(0.3)).to(DType::f32);
  Logistic model;
  optim::SGD opt(model.parameters(), 0.5, 0.9, 0.0, /*nesterov=*/true);
  for (int step = 0; step < 150; ++step) {
    opt.zero_grad();
    Tensor p = clamp(model(x), 1e-6, 1 - 1e-6);
    Tensor loss = -(y * log(p) + (1.0 - y) * log(1.0 - p)).mean();
    loss.backward();
    opt.step();
  }
  NoGradGuard g;
  Tensor pred = gt(model(x), Tensor::scalar(0.5)).to(DType::f32);
  EXPECT_GT(eq(pred, y).to(DType::f32).mean().item<double>(), 0.95);
  // The learned direction is (2, -1) up to scale.
  std::vector<float> w = model.w->to_vector<float>();
  EXPECT_NEAR(w[0] / -w[1], 2.0, 0.4);
}

}  // namespace
}  // namespace headroom
