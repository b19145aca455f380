#include "engine/backend.h"

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
