// MaxPool2d and AvgPool2d: argument checks naming the layer, then the functional ops.
#include "nn/layers/pooling.h"

#include "autograd/functions.h"

namespace headroom::nn {

namespace {
void check_pool_args(const char* layer, int64_t kernel, int64_t stride, int64_t padding) {
  HR_CHECK(kernel > 0 && (stride > 0 || stride == -1) && padding >= 0 && 2 * padding <= kernel, ValueError, layer,
           ": invalid kernel=", kernel, ", stride=", stride, ", padding=", padding,
           " (padding may be at most half the kernel)");
}
std::string pool_name(const char* layer, int64_t kernel, int64_t stride, int64_t padding) {
  std::string s = str_cat(layer, "(", kernel);
  if (stride != -1 && stride != kernel) s += str_cat(", stride=", stride);
  if (padding != 0) s += str_cat(", padding=", padding);
  return s + ")";
}
}  // namespace

MaxPool2d::MaxPool2d(int64_t k, int64_t s, int64_t p) : kernel(k), stride(s), padding(p) {
  check_pool_args("MaxPool2d", k, s, p);
}
Tensor MaxPool2d::forward(const Tensor& x) { return max_pool2d(x, kernel, stride, padding); }
std::string MaxPool2d::name() const { return pool_name("MaxPool2d", kernel, stride, padding); }

AvgPool2d::AvgPool2d(int64_t k, int64_t s, int64_t p) : kernel(k), stride(s), padding(p) {
  check_pool_args("AvgPool2d", k, s, p);
}
Tensor AvgPool2d::forward(const Tensor& x) { return avg_pool2d(x, kernel, stride, padding); }
std::string AvgPool2d::name() const { return pool_name("AvgPool2d", kernel, stride, padding); }

}  // namespace headroom::nn
