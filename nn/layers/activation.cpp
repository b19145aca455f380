// The activations, Dropout, Flatten: each forwards to one functional op.
#include "nn/layers/activation.h"

#include "autograd/functions.h"

namespace headroom::nn {

Tensor ReLU::forward(const Tensor& x) {
  if (!inplace) return relu(x);
  Tensor y = x;  // the same tensor: relu_ continues its history
  return relu_(y);
}

Tensor GELU::forward(const Tensor& x) { return gelu(x); }

Tensor Tanh::forward(const Tensor& x) {
  if (!inplace) return tanh(x);
  Tensor y = x;
  return tanh_(y);
}

Tensor Sigmoid::forward(const Tensor& x) {
  if (!inplace) return sigmoid(x);
  Tensor y = x;
  return sigmoid_(y);
}

Tensor SiLU::forward(const Tensor& x) { return silu(x); }

Tensor LeakyReLU::forward(const Tensor& x) { return leaky_relu(x, negative_slope); }
std::string LeakyReLU::name() const { return str_cat("LeakyReLU(negative_slope=", negative_slope, ")"); }

Tensor ELU::forward(const Tensor& x) { return elu(x, alpha); }
std::string ELU::name() const { return str_cat("ELU(alpha=", alpha, ")"); }

Tensor Softmax::forward(const Tensor& x) { return softmax(x, dim); }
std::string Softmax::name() const { return str_cat("Softmax(dim=", dim, ")"); }

Tensor LogSoftmax::forward(const Tensor& x) { return log_softmax(x, dim); }
std::string LogSoftmax::name() const { return str_cat("LogSoftmax(dim=", dim, ")"); }

Dropout::Dropout(double p_in) : p(p_in) {
  HR_CHECK(p >= 0.0 && p <= 1.0, ValueError, "Dropout: p must be in [0, 1], got ", p);
}

Tensor Dropout::forward(const Tensor& x) { return dropout(x, p, is_training()); }

std::string Dropout::name() const { return str_cat("Dropout(p=", p, ")"); }

Flatten::Flatten(int64_t start, int64_t end) : start_dim(start), end_dim(end) {}

Tensor Flatten::forward(const Tensor& x) { return x.flatten(start_dim, end_dim); }

std::string Flatten::name() const { return str_cat("Flatten(", start_dim, ", ", end_dim, ")"); }

}  // namespace headroom::nn
