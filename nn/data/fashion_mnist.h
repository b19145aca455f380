// Fashion-MNIST (Xiao, Rasul, Vollgraf 2017) from Debian's dataset-fashion-mnist package:
// 60000 training and 10000 test images, 28x28 grey, ten clothing classes.
//
// The package installs the four original gzip IDX files in kFashionMnistDir. Loading checks
// that images and labels agree (count, rank, label range) so a mismatched pair of files is an
// error, not a silently wrong data set. The same loader reads MNIST files placed in a folder
// under the same names.
//
//   data::Dataset train = data::load_fashion_mnist(data::kFashionMnistDir, /*train=*/true);
//   // train.images: f32 [60000, 1, 28, 28] in [0, 1]; train.labels: i64 [60000] in 0..9
#pragma once

#include <string>

#include "nn/data/dataset.h"

namespace headroom::data {

inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";
inline constexpr int64_t kFashionMnistClasses = 10;

// The class names, index = label.
const char* fashion_mnist_class_name(int64_t label);

// The train split (train-*) or the test split (t10k-*) of the files in dir.
Dataset load_fashion_mnist(const std::string& dir, bool train);

}  // namespace headroom::data
