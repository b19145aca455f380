#include "engine/backend.h"

#include <cmath>

#include "engine/allocator.h"
#include "engine/error.h"

namespace headroom {

const char* unary_op_name(UnaryOp op) {
  static const char* names[] = {"neg",  "exp",  "log",     "sqrt", "abs",        "relu",  "gelu",
                                "tanh", "sigmoid", "sign", "reciprocal", "square", "logical_not"};
  return names[static_cast<int>(op)];
}
const char* binary_op_name(BinaryOp op) {
  static const char* names[] = {"add", "sub", "mul", "div", "pow", "maximum", "minimum", "eq",
                                "ne",  "lt",  "le",  "gt",  "ge",  "relu_backward", "gelu_backward"};
  return names[static_cast<int>(op)];
}
const char* reduce_op_name(ReduceOp op) {
  static const char* names[] = {"sum", "mean", "max", "min", "argmax", "argmin"};
  return names[static_cast<int>(op)];
}
bool is_comparison(BinaryOp op) {
  return op == BinaryOp::eq || op == BinaryOp::ne || op == BinaryOp::lt || op == BinaryOp::le ||
         op == BinaryOp::gt || op == BinaryOp::ge;
}

// Note [optimizer step constants]: everything in double, each constant rounded once by the kernel.
AdamStep AdamStep::make(double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                        double bias_correction1, double bias_correction2) {
  AdamStep s;
  s.beta1 = beta1;
  s.one_minus_beta1 = 1.0 - beta1;
  s.beta2 = beta2;
  s.one_minus_beta2 = 1.0 - beta2;
  s.eps = eps;
  s.decay = decoupled ? 1.0 - lr * weight_decay : 1.0;
  s.l2 = decoupled ? 0.0 : weight_decay;
  s.step_size = lr / bias_correction1;
  s.inv_sqrt_bc2 = 1.0 / std::sqrt(bias_correction2);
  return s;
}

namespace {
Backend* g_backends[kNumDeviceTypes] = {nullptr, nullptr};
}

Backend& backend_for(Device device) {
  Backend* b = g_backends[static_cast<int>(device.type)];
  if (!b) {
    // Only a build without the CUDA side lacks a backend (Note [missing devices]).
    const std::string why = device_unavailable_reason(device);
    throw DeviceError(str_cat("no backend for device ", device.str(), why.empty() ? "" : ": ", why));
  }
  return *b;
}

void register_backend(DeviceType type, Backend* backend) { g_backends[static_cast<int>(type)] = backend; }

}  // namespace headroom
