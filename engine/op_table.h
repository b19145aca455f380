// The op table: every backend op, written once.
//
// Note [op table]: HEADROOM_OPS lists each op a device backend implements as
//   X(name, (parameters), (arguments))
// and everything else is generated from it (engine/backend.h, engine/op_table.cpp):
//   - Backend::name(parameters): the public, non-virtual entry point. It checks the arguments
//     once -- every defined tensor on one device of the backend's kind, then the op's own
//     contract (OpContract<OpId::name> in engine/op_table.cpp: shapes, dtypes, layouts) -- and
//     only then calls the backend's kernel;
//   - Backend::impl_name(parameters): the kernel, a protected virtual that each backend
//     overrides (HEADROOM_OP_OVERRIDES in its header declares all of them);
//   - OpId::name, op_name(OpId) and supports_op, so that a caller can ask before it calls.
// The runtime part of a backend -- host transfers, streams and events -- is not in the table:
// it moves bytes and orders work, it computes nothing, and it has no contract to check.
// Adding an op: a line here, its contract in op_table.cpp (if it has more to check than its
// devices), its kernel in one CPU and one CUDA file, its autograd function, its test. Ops from
// outside the library are registered at run time instead (CustomOp below), with the same checks.
//
// The parameter types (UnaryOp, Conv2dParams, AdamStep, ...) are declared in engine/backend.h
// before this table is expanded.
#pragma once

#include <array>
#include <bitset>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "engine/device.h"
#include "engine/error.h"
#include "engine/tensor.h"

// clang-format off
#define HEADROOM_OPS(X) \
  X(copy, (const Tensor& dst, const Tensor& src), (dst, src)) \
  X(fill, (const Tensor& out, double value), (out, value)) \
  X(arange, (const Tensor& out, double start, double step), (out, start, step)) \
  X(random_uniform, (const Tensor& out, uint64_t seed, uint64_t offset), (out, seed, offset)) \
  X(random_normal, (const Tensor& out, uint64_t seed, uint64_t offset), (out, seed, offset)) \
  X(unary, (UnaryOp op, const Tensor& x, const Tensor& out), (op, x, out)) \
  X(binary, (BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out), (op, a, b, out)) \
  X(where, (const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out), (cond, a, b, out)) \
  X(reduce, (ReduceOp op, const Tensor& x, const Tensor& out), (op, x, out)) \
  X(matmul, (const Tensor& a, const Tensor& b, const Tensor& out, double beta), (a, b, out, beta)) \
  X(conv2d_forward, (const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out, \
                     const Conv2dParams& p), (x, w, bias, out, p)) \
  X(conv2d_backward_input, (const Tensor& dout, const Tensor& w, const Tensor& dx, const Conv2dParams& p), \
    (dout, w, dx, p)) \
  X(conv2d_backward_weight, (const Tensor& dout, const Tensor& x, const Tensor& dw, const Conv2dParams& p), \
    (dout, x, dw, p)) \
  X(max_pool2d_forward, (const Tensor& x, const Tensor& out, const Tensor& indices, const Pool2dParams& p), \
    (x, out, indices, p)) \
  X(max_pool2d_backward, (const Tensor& dout, const Tensor& indices, const Tensor& dx, const Pool2dParams& p), \
    (dout, indices, dx, p)) \
  X(avg_pool2d_forward, (const Tensor& x, const Tensor& out, const Pool2dParams& p), (x, out, p)) \
  X(avg_pool2d_backward, (const Tensor& dout, const Tensor& dx, const Pool2dParams& p), (dout, dx, p)) \
  X(softmax_forward, (const Tensor& x, const Tensor& y, int64_t dim, bool log), (x, y, dim, log)) \
  X(softmax_backward, (const Tensor& y, const Tensor& dy, const Tensor& dx, int64_t dim, bool log), \
    (y, dy, dx, dim, log)) \
  X(cross_entropy_forward, (const Tensor& logits, const Tensor& target, const Tensor& losses, const Tensor& lse), \
    (logits, target, losses, lse)) \
  X(cross_entropy_backward, (const Tensor& logits, const Tensor& target, const Tensor& lse, \
                             const Tensor& dlosses, const Tensor& dlogits), (logits, target, lse, dlosses, dlogits)) \
  X(layer_norm_forward, (const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const Tensor& y, \
                         const Tensor& mean, const Tensor& rstd), (x, weight, bias, eps, y, mean, rstd)) \
  X(layer_norm_backward, (const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean, \
                          const Tensor& rstd, const Tensor& dx, const Tensor& dweight, const Tensor& dbias), \
    (dy, x, weight, mean, rstd, dx, dweight, dbias)) \
  X(batch_norm_forward, (const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean, \
                         const Tensor& running_var, bool training, double momentum, double eps, const Tensor& y, \
                         const Tensor& save_mean, const Tensor& save_invstd), \
    (x, weight, bias, running_mean, running_var, training, momentum, eps, y, save_mean, save_invstd)) \
  X(batch_norm_backward, (const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& save_mean, \
                          const Tensor& save_invstd, bool training, const Tensor& dx, const Tensor& dweight, \
                          const Tensor& dbias), \
    (dy, x, weight, save_mean, save_invstd, training, dx, dweight, dbias)) \
  X(group_norm_forward, (const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups, double eps, \
                         const Tensor& y, const Tensor& save_mean, const Tensor& save_rstd), \
    (x, weight, bias, groups, eps, y, save_mean, save_rstd)) \
  X(group_norm_backward, (const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& save_mean, \
                          const Tensor& save_rstd, int64_t groups, const Tensor& dx, const Tensor& dweight, \
                          const Tensor& dbias), \
    (dy, x, weight, save_mean, save_rstd, groups, dx, dweight, dbias)) \
  X(attention_forward, (const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, \
                        double scale, bool causal), (q, k, v, out, lse, scale, causal)) \
  X(attention_backward, (const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, \
                         const Tensor& dout, const Tensor& lse, const Tensor& dq, const Tensor& dk, \
                         const Tensor& dv, double scale, bool causal), \
    (q, k, v, out, dout, lse, dq, dk, dv, scale, causal)) \
  X(sgd_update, (const Tensor& p, const Tensor& g, const Tensor& buf, bool first, double lr, double momentum, \
                 double weight_decay, bool nesterov), (p, g, buf, first, lr, momentum, weight_decay, nesterov)) \
  X(adam_update, (const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const AdamStep& step), \
    (p, g, m, v, step)) \
  X(unscale_and_check, (const std::vector<Tensor>& grads, double inv_scale, const Tensor& found_inf), \
    (grads, inv_scale, found_inf)) \
  X(index_select, (const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out), (x, dim, index, out)) \
  X(index_add, (const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src), (out, dim, index, src))
// clang-format on

// The parenthesised lists of a table entry, spliced into a call or a declaration.
#define HEADROOM_EXPAND(...) __VA_ARGS__

namespace headroom {

enum class OpId : uint16_t {
#define HEADROOM_OP_ENUM(name, params, args) name,
  HEADROOM_OPS(HEADROOM_OP_ENUM)
#undef HEADROOM_OP_ENUM
      kCount
};
constexpr int kNumOps = static_cast<int>(OpId::kCount);

// "conv2d_forward"; and back (false when no built-in op has that name).
const char* op_name(OpId op);
bool op_from_name(std::string_view name, OpId* op);

// A set of ops: what a backend implements.
class OpSet {
 public:
  OpSet() = default;
  OpSet(std::initializer_list<OpId> ops) {
    for (OpId op : ops) bits_.set(static_cast<size_t>(op));
  }
  static OpSet all() {
    OpSet s;
    s.bits_.set();
    return s;
  }
  bool contains(OpId op) const { return bits_.test(static_cast<size_t>(op)); }

 private:
  std::bitset<kNumOps> bits_;
};

// Whether a device kind can run the op named `name` -- a built-in op (its backend implements
// it) or one registered with CustomOp (a kernel was given for that kind). False for an unknown
// name or a device kind with no backend in this build.
bool supports_op(std::string_view name, DeviceType type);

namespace detail {
// The device check every op's arguments get: each defined tensor is on one device, and that
// device is of kind `type`. `arg_list` is the argument list as written in the table
// ("x, w, out"), read only to name the argument in the error.
[[noreturn]] void throw_device_mismatch(const char* op, DeviceType type, const char* arg_list, int first_index,
                                        const Tensor* first, int index, int element, const Tensor& t);
struct DeviceCheck {
  const char* op;
  DeviceType type;
  const char* arg_list;
  int next = 0;  // the argument being looked at
  int first_index = -1;
  const Tensor* first = nullptr;  // the first defined tensor, whose device the others must share

  void tensor(const Tensor& t, int element) {
    if (!t.defined()) return;
    if (!first) {
      if (t.device().type != type) throw_device_mismatch(op, type, arg_list, -1, nullptr, next, element, t);
      first = &t;
      first_index = next;
    } else if (t.device() != first->device()) {
      throw_device_mismatch(op, type, arg_list, first_index, first, next, element, t);
    }
  }
  void arg(const Tensor& t) {
    tensor(t, -1);
    ++next;
  }
  void arg(const std::vector<Tensor>& ts) {
    for (size_t i = 0; i < ts.size(); ++i) tensor(ts[i], static_cast<int>(i));
    ++next;
  }
  template <typename T>
  void arg(const T&) {
    ++next;
  }
};
template <typename... A>
void check_devices(const char* op, DeviceType type, const char* arg_list, const A&... args) {
  DeviceCheck c{op, type, arg_list};
  (c.arg(args), ...);
}

// The registry behind supports_op for ops registered at run time.
void register_custom_op(const std::string& name);
void unregister_custom_op(const std::string& name);
void mark_custom_kernel(const std::string& name, DeviceType type);
bool custom_op_supported(std::string_view name, DeviceType type, bool* known);
}  // namespace detail

// An op from outside the library, registered through the table at run time: the same device
// check as a built-in op, an optional contract check, and one kernel per device kind.
//
//   CustomOp<const Tensor&, const Tensor&, double> axpy("axpy", check);
//   axpy.set_kernel(DeviceType::cpu, [](const Tensor& y, const Tensor& x, double a) { ... });
//   axpy(y, x, 2.0);  // checks, then runs the kernel of y's and x's device
//
// Its name must not be a built-in op's or another CustomOp's (ValueError).
template <typename... Args>
class CustomOp {
 public:
  using Kernel = std::function<void(Args...)>;
  using Check = std::function<void(Args...)>;

  explicit CustomOp(std::string name, Check check = {}, std::string arg_names = "")
      : name_(std::move(name)), check_(std::move(check)), arg_names_(std::move(arg_names)) {
    detail::register_custom_op(name_);
  }
  ~CustomOp() { detail::unregister_custom_op(name_); }  // the name is free again
  CustomOp(const CustomOp&) = delete;
  CustomOp& operator=(const CustomOp&) = delete;
  const std::string& name() const { return name_; }

  void set_kernel(DeviceType type, Kernel kernel) {
    kernels_[static_cast<size_t>(type)] = std::move(kernel);
    detail::mark_custom_kernel(name_, type);
  }
  bool supports(DeviceType type) const { return static_cast<bool>(kernels_[static_cast<size_t>(type)]); }

  void operator()(Args... args) const {
    const Tensor* first = nullptr;
    (find_first(args, &first), ...);
    HR_CHECK(first, ValueError, name_, ": no defined tensor among the arguments to tell the device");
    const DeviceType type = first->device().type;
    detail::check_devices(name_.c_str(), type, arg_names_.c_str(), args...);
    HR_CHECK(supports(type), DeviceError, name_, ": no kernel for ", device_type_name(type),
             " (registered for: ", registered(), ")");
    if (check_) check_(args...);
    kernels_[static_cast<size_t>(type)](args...);
  }

 private:
  template <typename T>
  static void find_first(const T& a, const Tensor** first) {
    if constexpr (std::is_same_v<std::remove_cvref_t<T>, Tensor>) {
      if (!*first && a.defined()) *first = &a;
    }
  }
  std::string registered() const {
    std::string s;
    for (int t = 0; t < kNumDeviceTypes; ++t)
      if (kernels_[static_cast<size_t>(t)])
        s += str_cat(s.empty() ? "" : ", ", device_type_name(static_cast<DeviceType>(t)));
    return s.empty() ? "none" : s;
  }

  std::string name_;
  Check check_;
  std::string arg_names_;
  std::array<Kernel, kNumDeviceTypes> kernels_{};
};

}  // namespace headroom
