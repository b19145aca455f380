// Parameter-free layers: activations (ReLU, GELU, Tanh, Sigmoid, SiLU, LeakyReLU, ELU, Softmax,
// LogSoftmax), Dropout and Flatten. They hold no tensors; they exist so
// that a Sequential can name them and so Dropout can read the module's training mode.
#pragma once

#include "nn/module.h"

namespace headroom::nn {

class ReLU : public Module {
 public:
  // inplace: relu_ on the input (Note [differentiable in-place]), which saves the bytes of a
  // second tensor; the input must not be needed afterwards (a later use sees the new values,
  // and an op that saved it fails in backward, by the version check).
  explicit ReLU(bool in_place = false) : inplace(in_place) {}
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return inplace ? "ReLU(inplace)" : "ReLU()"; }
  bool inplace;
};

// The tanh approximation, as in GPT-2: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
class GELU : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "GELU()"; }
};

// tanh and sigmoid; inplace as ReLU's (tanh_, sigmoid_: their backward needs only the output).
class Tanh : public Module {
 public:
  explicit Tanh(bool in_place = false) : inplace(in_place) {}
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return inplace ? "Tanh(inplace)" : "Tanh()"; }
  bool inplace;
};

class Sigmoid : public Module {
 public:
  explicit Sigmoid(bool in_place = false) : inplace(in_place) {}
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return inplace ? "Sigmoid(inplace)" : "Sigmoid()"; }
  bool inplace;
};

// x sigmoid(x) (also called swish).
class SiLU : public Module {
 public:
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "SiLU()"; }
};

// x > 0 ? x : negative_slope x.
class LeakyReLU : public Module {
 public:
  explicit LeakyReLU(double slope = 0.01) : negative_slope(slope) {}
  Tensor forward(const Tensor& x) override;
  std::string name() const override;
  double negative_slope;
};

// x > 0 ? x : alpha (exp(x) - 1).
class ELU : public Module {
 public:
  explicit ELU(double alpha_in = 1.0) : alpha(alpha_in) {}
  Tensor forward(const Tensor& x) override;
  std::string name() const override;
  double alpha;
};

// softmax / log_softmax over dim (negative counts from the end), as PyTorch's Softmax(dim).
class Softmax : public Module {
 public:
  explicit Softmax(int64_t dim_in) : dim(dim_in) {}
  Tensor forward(const Tensor& x) override;
  std::string name() const override;
  int64_t dim;
};

class LogSoftmax : public Module {
 public:
  explicit LogSoftmax(int64_t dim_in) : dim(dim_in) {}
  Tensor forward(const Tensor& x) override;
  std::string name() const override;
  int64_t dim;
};

// Zeroes each element with probability p and scales the rest by 1/(1-p) in training; the
// identity in eval. The mask comes from the global Philox generator.
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5);
  Tensor forward(const Tensor& x) override;
  std::string name() const override;
  double p;
};

// Merges dims start..end (inclusive, negative counts from the end) into one: [N, C, H, W] ->
// [N, C*H*W] with the defaults. A view when the input's strides allow.
class Flatten : public Module {
 public:
  explicit Flatten(int64_t start_dim = 1, int64_t end_dim = -1);
  Tensor forward(const Tensor& x) override;
  std::string name() const override;
  int64_t start_dim, end_dim;
};

}  // namespace headroom::nn
