#include "engine/backend.h"

#include <dlfcn.h>

#include <cmath>
#include <cstdlib>
#include <mutex>

#include "engine/allocator.h"
#include "engine/error.h"

namespace headroom {

const char* unary_op_name(UnaryOp op) {
  static const char* names[] = {"neg",  "exp",     "log",  "sqrt",       "abs",    "relu",       "gelu",
                                "tanh", "sigmoid", "sign", "reciprocal", "square", "logical_not"};
  return names[static_cast<int>(op)];
}
const char* binary_op_name(BinaryOp op) {
  static const char* names[] = {"add", "sub", "mul", "div", "pow", "maximum",       "minimum",      "eq",
                                "ne",  "lt",  "le",  "gt",  "ge",  "relu_backward", "gelu_backward"};
  return names[static_cast<int>(op)];
}
const char* reduce_op_name(ReduceOp op) {
  static const char* names[] = {"sum", "mean", "max", "min", "argmax", "argmin"};
  return names[static_cast<int>(op)];
}
bool is_comparison(BinaryOp op) {
  return op == BinaryOp::eq || op == BinaryOp::ne || op == BinaryOp::lt || op == BinaryOp::le || op == BinaryOp::gt ||
         op == BinaryOp::ge;
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
  if (!b && !device.is_cpu()) {
    load_device_backend(device.type);  // Note [loadable backends]
    b = g_backends[static_cast<int>(device.type)];
  }
  if (!b) {
    // Only a build without the CUDA side, or one whose CUDA library could not be loaded, lacks a
    // backend (Note [missing devices]).
    const std::string why = device_unavailable_reason(device);
    throw DeviceError(str_cat("no backend for device ", device.str(), why.empty() ? "" : ": ", why));
  }
  return *b;
}

void register_backend(DeviceType type, Backend* backend) { g_backends[static_cast<int>(type)] = backend; }

DeviceProperties Backend::properties(Device device) {
  DeviceProperties p;
  p.name = device_description(device);
  return p;
}

DeviceProperties device_properties(Device device) {
  const std::string why = device_unavailable_reason(device);
  HR_CHECK(why.empty(), DeviceError, "device_properties: ", why);
  return backend_for(device).properties(device);
}

void Backend::start_op_profile() {
  throw DeviceError(str_cat("the ", device_type_name(device_type()), " backend has no op profile"));
}
std::vector<OpTime> Backend::stop_op_profile() {
  throw DeviceError(str_cat("the ", device_type_name(device_type()), " backend has no op profile"));
}

// ---- Note [loadable backends] ----

namespace detail {
std::string load_backend_library(const std::string& path) {
  // Never closed: its registrations and the objects it made live as long as the process.
  if (dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL) != nullptr) return "";
  const char* why = dlerror();
  return why ? why : "dlopen failed";
}

std::string library_directory() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&load_backend_library), &info) == 0 || info.dli_fname == nullptr) return "";
  const std::string file = info.dli_fname;
  const size_t slash = file.rfind('/');
  return slash == std::string::npos ? "" : file.substr(0, slash + 1);
}
}  // namespace detail

void load_device_backend(DeviceType type) {
#ifdef HEADROOM_CUDA_BACKEND
  if (type != DeviceType::cuda) return;
  static std::once_flag once;
  std::call_once(once, [] {
    const char* env = std::getenv("HEADROOM_CUDA_LIBRARY");
    const std::string path = env && *env ? std::string(env) : detail::library_directory() + HEADROOM_CUDA_BACKEND;
    const std::string why = detail::load_backend_library(path);
    if (!why.empty())
      report_backend_unloadable(DeviceType::cuda,
                                str_cat("this build's CUDA backend (", path, ") could not be loaded: ", why));
  });
#else
  (void)type;  // a build without the CUDA side: nothing to load (Note [missing devices])
#endif
}

}  // namespace headroom
