// Fashion-MNIST loading: the four IDX files, their cross-checks, and the conversion to
// training form (f32 in [0, 1] with a channel dim, i64 labels) done once here so that every
// batch is a plain gather.
#include "nn/data/fashion_mnist.h"

#include <filesystem>

#include "engine/error.h"
#include "nn/data/idx.h"

namespace headroom::data {

namespace {

constexpr const char* kPackageHint =
    "install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)";

std::string join_path(const std::string& dir, const std::string& name) {
  return (std::filesystem::path(dir) / name).string();
}

}  // namespace

const char* fashion_mnist_class_name(int64_t label) {
  static const char* const names[kFashionMnistClasses] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                          "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  HR_CHECK(label >= 0 && label < kFashionMnistClasses, ValueError, "fashion_mnist_class_name: label ", label,
           " is not in 0..9");
  return names[label];
}

Dataset load_fashion_mnist(const std::string& dir, bool train) {
  std::error_code ec;
  HR_CHECK(std::filesystem::is_directory(dir, ec), IOError, "load_fashion_mnist: folder ", dir, " not found; ",
           kPackageHint, ", or pass the folder that holds the IDX files");
  const std::string split = train ? "train" : "t10k";
  const std::string images_path = join_path(dir, split + "-images-idx3-ubyte.gz");
  const std::string labels_path = join_path(dir, split + "-labels-idx1-ubyte.gz");
  for (const std::string& p : {images_path, labels_path})
    HR_CHECK(std::filesystem::exists(p, ec), IOError, "load_fashion_mnist: file not found: ", p, " (", kPackageHint,
             ")");

  Tensor raw_images = read_idx_gz(images_path);
  Tensor raw_labels = read_idx_gz(labels_path);
  HR_CHECK(raw_images.dtype() == DType::u8 && raw_images.dim() == 3, IOError, "load_fashion_mnist: ", images_path,
           " holds ", describe(raw_images), "; expected u8 images [N, rows, cols]");
  HR_CHECK(raw_labels.dtype() == DType::u8 && raw_labels.dim() == 1, IOError, "load_fashion_mnist: ", labels_path,
           " holds ", describe(raw_labels), "; expected u8 labels [N]");
  const int64_t n = raw_images.size(0);
  HR_CHECK(raw_labels.size(0) == n, IOError, "load_fashion_mnist: ", images_path, " holds ", n, " images but ",
           labels_path, " holds ", raw_labels.size(0), " labels");

  const int64_t rows = raw_images.size(1), cols = raw_images.size(2);
  Dataset out;
  // The data set lives in host memory, outside the device allocator (as on a GPU run).
  out.images = Tensor::empty_host({n, 1, rows, cols}, DType::f32);
  out.labels = Tensor::empty_host({n}, DType::i64);
  const uint8_t* src = raw_images.data<uint8_t>();
  float* dst = out.images.data<float>();
  for (int64_t i = 0, total = n * rows * cols; i < total; ++i) dst[i] = static_cast<float>(src[i]) / 255.0f;
  const uint8_t* lab = raw_labels.data<uint8_t>();
  int64_t* lab_out = out.labels.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    HR_CHECK(lab[i] < kFashionMnistClasses, IOError, "load_fashion_mnist: ", labels_path, ": label ",
             static_cast<int>(lab[i]), " of sample ", i, " is not in 0..9");
    lab_out[i] = lab[i];
  }
  return out;
}

}  // namespace headroom::data
