// In-place ops: not differentiable; each bumps the storage's version counter so that autograd
// notices if a saved tensor was overwritten (Note [version counter]).
#include <cmath>

#include "autograd/functions/internal.h"

namespace headroom {

using namespace detail;

namespace {
void check_inplace(const Tensor& t, const char* op) {
  HR_CHECK(!(t.requires_grad() && GradMode::is_enabled()), AutogradError, op, ": in-place op on a tensor that ",
           "requires grad (", describe(t), "); do it under NoGradGuard (as optimizers do) or use the ",
           "out-of-place form");
  for (int64_t d = 0; d < t.dim(); ++d)
    HR_CHECK(t.stride(d) != 0 || t.size(d) <= 1, ValueError, op, ": the destination ", describe(t),
             " is expanded (stride 0 in dim ", d, "), so one element would be written many times; clone() it first");
}
void finish(const Tensor& t) { t.bump_version(); }
bool same_view(const Tensor& a, const Tensor& b) {
  return a.offset() == b.offset() && a.shape() == b.shape() && a.strides() == b.strides();
}
// An operand that shares the destination's storage but is not the identical view (x.add_(x.t()))
// would be read after parts of it were overwritten: use a copy of it.
Tensor unaliased(const Tensor& self, const Tensor& other) {
  if (other.storage() != self.storage() || same_view(other, self)) return other;
  Tensor copy = empty_like(other);
  backend_for(other.device()).copy(copy, other);
  return copy;
}
Tensor broadcast_operand(const Tensor& self, const Tensor& other, const char* op) {
  check_same_device(op, {self, other});
  Shape shape = broadcast_shapes(self.shape(), other.shape(), op);
  HR_CHECK(shape == self.shape(), ShapeError, op, ": operand of shape ", shape_str(other.shape()),
           " does not broadcast to the destination's shape ", shape_str(self.shape()));
  HR_CHECK(is_floating(self.dtype()) || !is_floating(other.dtype()), DTypeError, op, ": cannot write ", describe(other),
           " into ", describe(self), " in place");
  return expand(unaliased(self, cast_raw(other, self.dtype())), self.shape());
}
}  // namespace

Tensor& Tensor::fill_(double value) {
  check_inplace(*this, "fill_");
  if (numel() > 0) backend_for(device()).fill(*this, value);
  finish(*this);
  return *this;
}

Tensor& Tensor::copy_(const Tensor& src) {
  check_inplace(*this, "copy_");
  Shape shape = broadcast_shapes(this->shape(), src.shape(), "copy_");
  HR_CHECK(shape == this->shape(), ShapeError, "copy_: source of shape ", shape_str(src.shape()),
           " does not broadcast to the destination's shape ", shape_str(this->shape()));
  {
    NoGradGuard no_grad;
    Tensor from = src.device() == device() ? unaliased(*this, src) : src;
    copy_tensor(*this, from.expand(this->shape()));
  }
  finish(*this);
  return *this;
}

Tensor& Tensor::add_(const Tensor& other, double alpha) {
  check_inplace(*this, "add_");
  NoGradGuard no_grad;
  Tensor o = broadcast_operand(*this, other, "add_");
  HR_CHECK(is_floating(dtype()) || alpha == std::floor(alpha), DTypeError, "add_: alpha ", alpha,
           " is not a whole number, and the destination ", describe(*this), " is an integer tensor");
  if (alpha != 1.0) o = binary_raw(BinaryOp::mul, o, scalar_like(*this, alpha)).expand(shape());
  if (numel() > 0) backend_for(device()).binary(BinaryOp::add, *this, o, *this);
  finish(*this);
  return *this;
}

Tensor& Tensor::mul_(const Tensor& other) {
  check_inplace(*this, "mul_");
  NoGradGuard no_grad;
  Tensor o = broadcast_operand(*this, other, "mul_");
  if (numel() > 0) backend_for(device()).binary(BinaryOp::mul, *this, o, *this);
  finish(*this);
  return *this;
}

Tensor& Tensor::mul_(double value) { return mul_(Tensor::scalar(value, options())); }

Tensor& Tensor::div_(const Tensor& other) {
  check_inplace(*this, "div_");
  NoGradGuard no_grad;
  Tensor o = broadcast_operand(*this, other, "div_");
  if (numel() > 0) backend_for(device()).binary(BinaryOp::div, *this, o, *this);
  finish(*this);
  return *this;
}

}  // namespace headroom
