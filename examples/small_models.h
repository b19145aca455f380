// The Fashion-MNIST models of the smaller-models examples (docs/smaller-models.md): the plain
// CNN of cnn_fashion_mnist (BatchNorm, the layout its --save-model files have, so a saved CNN
// loads here as a teacher) and a small MobileNet-style net of depthwise-separable blocks.
// Header-only, like common.h: each example is its own program.
#pragma once

#include <cstdint>
#include <memory>
#include <tuple>
#include <utility>
#include <vector>

#include "autograd/grad_mode.h"
#include "engine/caching_allocator.h"
#include "nn/nn.h"

namespace headroom::examples {

// cnn_fashion_mnist's default CNN (BatchNorm, no bias on the convs):
//   conv 1->c 3x3 pad 1, BN, ReLU, maxpool 2      28x28 -> 14x14
//   conv c->2c 3x3 pad 1, BN, ReLU, maxpool 2     14x14 -> 7x7
//   flatten, linear 2c*49 -> hidden, ReLU, linear hidden -> 10
// stage_starts (optional): where each conv stage and the head begin (--checkpoint block).
inline std::shared_ptr<nn::Sequential> make_fashion_cnn(int64_t c, int64_t hidden = 128,
                                                        std::vector<int64_t>* stage_starts = nullptr) {
  auto model = std::make_shared<nn::Sequential>();
  for (auto [in, out] : {std::pair{int64_t{1}, c}, std::pair{c, 2 * c}}) {
    if (stage_starts) stage_starts->push_back(model->size());
    model->push_back(std::make_shared<nn::Conv2d>(in, out, 3, 1, 1, 1, /*bias=*/false));
    model->push_back(std::make_shared<nn::BatchNorm2d>(out));
    model->push_back(std::make_shared<nn::ReLU>());
    model->push_back(std::make_shared<nn::MaxPool2d>(2));
  }
  if (stage_starts) stage_starts->push_back(model->size());
  model->push_back(std::make_shared<nn::Flatten>());
  model->push_back(std::make_shared<nn::Linear>(2 * c * 7 * 7, hidden));
  model->push_back(std::make_shared<nn::ReLU>());
  model->push_back(std::make_shared<nn::Linear>(hidden, 10));
  return model;
}

// A MobileNet-style net (Howard et al. 2017) sized for 28x28 images: a plain 3x3 stem, then
// depthwise-separable blocks (nn::DepthwiseSeparableConv2d) that downsample by stride, not by
// pooling, then global average pooling and one Linear:
//   conv 1->c 3x3, BN, ReLU                      28x28
//   separable c->2c, stride 2                     14x14
//   separable 2c->2c                              14x14
//   separable 2c->4c, stride 2                    7x7
//   separable 4c->4c                              7x7
//   average pool 7, flatten, linear 4c -> 10
// Global pooling is where most of the saving is: the CNN's flatten + linear 2c*49 -> 128 holds
// 96% of its parameters. stage_starts: the stem, each block, the head.
inline std::shared_ptr<nn::Sequential> make_fashion_mobilenet(int64_t c, std::vector<int64_t>* stage_starts = nullptr) {
  auto model = std::make_shared<nn::Sequential>();
  auto stage = [&] {
    if (stage_starts) stage_starts->push_back(model->size());
  };
  stage();
  model->push_back(std::make_shared<nn::Conv2d>(1, c, 3, 1, 1, 1, /*bias=*/false));
  model->push_back(std::make_shared<nn::BatchNorm2d>(c));
  model->push_back(std::make_shared<nn::ReLU>());
  const std::vector<std::tuple<int64_t, int64_t, int64_t>> blocks = {
      {c, 2 * c, 2}, {2 * c, 2 * c, 1}, {2 * c, 4 * c, 2}, {4 * c, 4 * c, 1}};
  for (auto [in, out, stride] : blocks) {
    stage();
    model->push_back(std::make_shared<nn::DepthwiseSeparableConv2d>(in, out, stride));
  }
  stage();
  model->push_back(std::make_shared<nn::AvgPool2d>(7));
  model->push_back(std::make_shared<nn::Flatten>());
  model->push_back(std::make_shared<nn::Linear>(4 * c, 10));
  return model;
}

}  // namespace headroom::examples

namespace headroom::examples {

// The activation peak of one training step of `model` -- forward and backward of cross-entropy on
// (images, labels), in training mode, no optimizer step -- as the device allocator measures it:
// the bytes saved for backward at their highest. The model is left as it was: BatchNorm's
// running statistics are put back and the gradients dropped. (The run's own peaks, printed at the
// end, also cover evaluation and the optimizer; this one number compares models.) The step runs
// twice and the second is measured: the first after an evaluation measured up to 1 MiB more on the
// CNN (22.66 against 21.70 MiB, the same model), which would flatter any comparison with it.
inline int64_t step_activation_peak(nn::Module& model, const Tensor& images, const Tensor& labels) {
  std::vector<std::pair<Tensor, Tensor>> buffers;  // (buffer, its value now)
  for (auto& [name, b] : model.named_buffers()) buffers.emplace_back(b, b.clone());
  const bool was_training = model.is_training();
  model.train();
  CachingAllocator& allocator = caching_allocator(images.device());
  int64_t peak = 0;
  for (int run = 0; run < 2; ++run) {
    allocator.reset_peak_stats();
    cross_entropy(model(images), labels).backward();
    peak = allocator.stats().category(MemoryCategory::activation).peak;
    model.zero_grad();
  }
  model.train(was_training);
  NoGradGuard no_grad;
  for (auto& [b, value] : buffers) b.copy_(value);
  return peak;
}

}  // namespace headroom::examples
