// The op table's generated parts (Note [op table]): names, the contracts, the checked entry
// points of Backend, and the registry of ops added at run time.
#include "engine/op_table.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <map>

#include "engine/backend.h"
#include "engine/meta.h"
#include "engine/op_cost.h"
#include "kernels/contract_checks.h"

namespace headroom {

namespace {

constexpr const char* kOpNames[] = {
#define HEADROOM_OP_NAME(name, params, args) #name,
    HEADROOM_OPS(HEADROOM_OP_NAME)
#undef HEADROOM_OP_NAME
};
static_assert(sizeof(kOpNames) / sizeof(kOpNames[0]) == kNumOps);

[[noreturn]] void throw_unsupported(OpId op, DeviceType type) {
  throw DeviceError(str_cat(op_name(op), ": the ", device_type_name(type), " backend has no kernel for this op"));
}

// The index-th name of a table argument list "(x, w, out)".
std::string arg_name(const char* arg_list, int index) {
  std::string list = arg_list ? arg_list : "";
  if (!list.empty() && list.front() == '(') list.erase(0, 1);
  if (!list.empty() && list.back() == ')') list.pop_back();
  int i = 0;
  size_t begin = 0;
  while (true) {
    const size_t comma = list.find(',', begin);
    if (i == index) {
      std::string name = list.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin);
      const size_t a = name.find_first_not_of(' '), b = name.find_last_not_of(' ');
      return a == std::string::npos ? str_cat("argument ", index) : name.substr(a, b - a + 1);
    }
    if (comma == std::string::npos) return str_cat("argument ", index);
    begin = comma + 1;
    ++i;
  }
}

// ---- the registry of ops added at run time (CustomOp) ----
struct CustomRegistry {
  std::mutex mutex;
  std::map<std::string, std::array<bool, kNumDeviceTypes>, std::less<>> ops;
};
CustomRegistry& custom_registry() {
  static CustomRegistry* r = new CustomRegistry;  // never destroyed: CustomOps may be static
  return *r;
}

}  // namespace

const char* op_name(OpId op) {
  const int i = static_cast<int>(op);
  return i >= 0 && i < kNumOps ? kOpNames[i] : "unknown op";
}

bool op_from_name(std::string_view name, OpId* op) {
  for (int i = 0; i < kNumOps; ++i)
    if (name == kOpNames[i]) {
      *op = static_cast<OpId>(i);
      return true;
    }
  return false;
}

bool supports_op(std::string_view name, DeviceType type) {
  if (OpId op; op_from_name(name, &op)) {
    try {
      return backend_for(Device{type, 0}).supports_op(op);
    } catch (const DeviceError&) {
      return false;  // no backend for this device kind in this build
    }
  }
  bool known = false;
  return detail::custom_op_supported(name, type, &known);
}

namespace detail {

void throw_device_mismatch(const char* op, DeviceType type, const char* arg_list, int first_index, const Tensor* first,
                           int index, int element, const Tensor& t) {
  std::string name = arg_name(arg_list, index);
  if (element >= 0) name = str_cat(name, "[", element, "]");
  if (!first)
    throw DeviceError(
        str_cat(op, ": ", name, " is on ", t.device().str(), " but this is the ", device_type_name(type), " backend"));
  throw DeviceError(str_cat(op, ": ", name, " is on ", t.device().str(), " but ", arg_name(arg_list, first_index),
                            " is on ", first->device().str(), " (all tensors of one op must be on one device)"));
}

void register_custom_op(const std::string& name) {
  HR_CHECK(!name.empty(), ValueError, "CustomOp: the name is empty");
  OpId builtin;
  HR_CHECK(!op_from_name(name, &builtin), ValueError, "CustomOp '", name,
           "': a built-in op of the table has that name (engine/op_table.h)");
  CustomRegistry& r = custom_registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  HR_CHECK(r.ops.find(name) == r.ops.end(), ValueError, "CustomOp '", name, "' is already registered");
  r.ops[name] = {};
}

void unregister_custom_op(const std::string& name) {
  CustomRegistry& r = custom_registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.ops.erase(name);
}

void mark_custom_kernel(const std::string& name, DeviceType type) {
  CustomRegistry& r = custom_registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.ops[name][static_cast<size_t>(type)] = true;
}

bool custom_op_supported(std::string_view name, DeviceType type, bool* known) {
  CustomRegistry& r = custom_registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  auto it = r.ops.find(name);
  *known = it != r.ops.end();
  return *known && it->second[static_cast<size_t>(type)];
}

}  // namespace detail

// ---- the contracts: what each op checks beyond its devices, once, before any kernel ----
// An op without a specialisation has only the device check.
namespace {

template <OpId>
struct OpContract {
  template <typename... A>
  static void check(const A&...) {}
};

using namespace kernels;

// ---- memory movement, elementwise, matmul ----
void check_broadcast_to(const char* op, const Tensor& out, const Tensor& in, const char* what) {
  HR_CHECK(in.shape() == out.shape(), ShapeError, op, ": ", what, " has shape ", shape_str(in.shape()),
           " but the output has ", shape_str(out.shape()), " (inputs come broadcast to the output's shape)");
}
void check_dense_output(const char* op, const Tensor& out) {
  HR_CHECK(out.is_contiguous(), ValueError, op, ": the output must be contiguous; got ", describe(out),
           " with strides ", shape_str(out.strides()));
}

template <>
struct OpContract<OpId::copy> {
  static void check(const Tensor& dst, const Tensor& src) {
    HR_CHECK(dst.shape() == src.shape(), ShapeError, "copy: destination shape ", shape_str(dst.shape()),
             " differs from source shape ", shape_str(src.shape()));
  }
};
template <>
struct OpContract<OpId::arange> {
  static void check(const Tensor& out, double, double) {
    HR_CHECK(out.dim() == 1, ShapeError, "arange: the output must be 1-d, got ", describe(out));
    check_dense_output("arange", out);
  }
};
template <>
struct OpContract<OpId::random_uniform> {
  static void check(const Tensor& out, uint64_t, uint64_t) { check_dense_output("rand", out); }
};
template <>
struct OpContract<OpId::random_normal> {
  static void check(const Tensor& out, uint64_t, uint64_t) { check_dense_output("randn", out); }
};
template <>
struct OpContract<OpId::unary> {
  static void check(UnaryOp op, const Tensor& x, const Tensor& out) {
    HR_CHECK(x.dtype() == out.dtype(), DTypeError, "unary ", unary_op_name(op), ": input is ", dtype_name(x.dtype()),
             " but output is ", dtype_name(out.dtype()));
    check_broadcast_to(unary_op_name(op), out, x, "the input");
  }
};
template <>
struct OpContract<OpId::binary> {
  static void check(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
    HR_CHECK(a.dtype() == b.dtype(), DTypeError, "binary ", binary_op_name(op), ": operands are ",
             dtype_name(a.dtype()), " and ", dtype_name(b.dtype()));
    HR_CHECK(is_comparison(op) ? out.dtype() == DType::boolean : out.dtype() == a.dtype(), DTypeError, "binary ",
             binary_op_name(op), ": output dtype ", dtype_name(out.dtype()), " does not fit inputs of ",
             dtype_name(a.dtype()));
    check_broadcast_to(binary_op_name(op), out, a, "the first operand");
    check_broadcast_to(binary_op_name(op), out, b, "the second operand");
  }
};
template <>
struct OpContract<OpId::where> {
  static void check(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
    HR_CHECK(cond.dtype() == DType::boolean, DTypeError, "where: condition must be bool, got ",
             dtype_name(cond.dtype()));
    HR_CHECK(a.dtype() == out.dtype() && b.dtype() == out.dtype(), DTypeError, "where: operands are ",
             dtype_name(a.dtype()), " and ", dtype_name(b.dtype()), ", output ", dtype_name(out.dtype()));
    check_broadcast_to("where", out, cond, "the condition");
    check_broadcast_to("where", out, a, "the first operand");
    check_broadcast_to("where", out, b, "the second operand");
  }
};
template <>
struct OpContract<OpId::matmul> {
  static void check(const Tensor& a, const Tensor& b, const Tensor& out, double) {
    HR_CHECK(a.dim() == 3 && b.dim() == 3 && out.dim() == 3, ShapeError,
             "matmul: expected 3-d [B, M, K] @ [B, K, N] -> [B, M, N], got ", shape_str(a.shape()), " @ ",
             shape_str(b.shape()), " -> ", shape_str(out.shape()));
    const int64_t B = out.size(0), M = out.size(1), N = out.size(2);
    HR_CHECK(a.size(0) == B && b.size(0) == B && a.size(1) == M && b.size(2) == N && a.size(2) == b.size(1), ShapeError,
             "matmul: cannot multiply ", shape_str(a.shape()), " by ", shape_str(b.shape()), " into ",
             shape_str(out.shape()));
    HR_CHECK(a.dtype() == out.dtype() && b.dtype() == out.dtype(), DTypeError, "matmul: dtypes differ: ", describe(a),
             " @ ", describe(b), " -> ", describe(out));
    HR_CHECK(is_floating(out.dtype()), DTypeError, "matmul: needs a floating dtype, got ", describe(out));
    HR_CHECK(out.is_contiguous(), ValueError, "matmul: output must be contiguous, got strides ",
             shape_str(out.strides()));
  }
};

// ---- layer norm and batch norm ----
// Statistics are f32, or f64 for f64 data (Note [statistics dtype]).
void check_stats(const char* op, const Tensor& t, int64_t n, DType data, const char* what) {
  const DType want = statistics_dtype(data);
  HR_CHECK(t.defined() && t.dtype() == want && t.dim() == 1 && t.size(0) == n && t.is_contiguous(), ValueError, op,
           ": ", what, " must be a contiguous ", dtype_name(want), " ", shape_str({n}), " for ", dtype_name(data),
           " data, got ", t.defined() ? describe(t) : std::string("undefined"));
}
// y, dy, dx: x's shape and dtype, contiguous (kernels::detail::check_like_x); `required` ones
// must be defined.
void check_like(const char* op, const Tensor& t, const Tensor& x, const char* what, bool required) {
  HR_CHECK(t.defined() || !required, ValueError, op, ": ", what, " must be defined");
  kernels::detail::check_like_x(op, t, x, what);
}
void check_data(const char* op, const Tensor& x, int64_t dims, const char* layout) {
  HR_CHECK(x.defined() && x.dim() == dims && x.is_contiguous(), ValueError, op, ": x must be a contiguous ", layout,
           ", got ", x.defined() ? describe(x) : std::string("undefined"));
  HR_CHECK(is_floating(x.dtype()), DTypeError, op, ": x must be a floating dtype, got ", describe(x));
}

template <>
struct OpContract<OpId::layer_norm_forward> {
  static void check(const Tensor& x, const Tensor& weight, const Tensor& bias, double, const Tensor& y,
                    const Tensor& mean, const Tensor& rstd) {
    const char* op = "layer_norm";
    check_data(op, x, 2, "[M, N]");
    check_like(op, y, x, "y", true);
    const int64_t m = x.size(0), n = x.size(1);
    check_stats(op, mean, m, x.dtype(), "mean");
    check_stats(op, rstd, m, x.dtype(), "rstd");
    HR_CHECK(m == 0 || n > 0, ValueError, op, ": cannot normalise rows of size 0 in ", describe(x));
    kernels::detail::check_channel_vector(op, weight, n, "weight");
    kernels::detail::check_channel_vector(op, bias, n, "bias");
  }
};
template <>
struct OpContract<OpId::layer_norm_backward> {
  static void check(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                    const Tensor& dx, const Tensor& dweight, const Tensor& dbias) {
    const char* op = "layer_norm backward";
    check_data(op, x, 2, "[M, N]");
    check_like(op, dy, x, "dy", true);
    check_like(op, dx, x, "dx", false);
    const int64_t m = x.size(0), n = x.size(1);
    check_stats(op, mean, m, x.dtype(), "mean");
    check_stats(op, rstd, m, x.dtype(), "rstd");
    kernels::detail::check_channel_vector(op, weight, n, "weight");
    kernels::detail::check_channel_vector(op, dweight, n, "dweight");
    kernels::detail::check_channel_vector(op, dbias, n, "dbias");
  }
};
template <>
struct OpContract<OpId::batch_norm_forward> {
  static void check(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                    const Tensor& running_var, bool training, double, double, const Tensor& y, const Tensor& save_mean,
                    const Tensor& save_invstd) {
    const char* op = "batch_norm";
    check_data(op, x, 3, "[N, C, S]");
    const int64_t c = x.size(1);
    check_like(op, y, x, "y", true);
    check_stats(op, save_mean, c, x.dtype(), "save_mean");
    check_stats(op, save_invstd, c, x.dtype(), "save_invstd");
    kernels::detail::check_channel_vector(op, weight, c, "weight");
    kernels::detail::check_channel_vector(op, bias, c, "bias");
    kernels::detail::check_channel_vector(op, running_mean, c, "running_mean");
    kernels::detail::check_channel_vector(op, running_var, c, "running_var");
    if (training)
      HR_CHECK(c == 0 || x.size(0) * x.size(2) > 1, ValueError, op,
               ": training needs more than one value per channel, got input ", shape_str(x.shape()));
    else
      HR_CHECK(running_mean.defined() && running_var.defined(), ValueError, op,
               ": evaluation mode needs running_mean and running_var");
  }
};
template <>
struct OpContract<OpId::batch_norm_backward> {
  static void check(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& save_mean,
                    const Tensor& save_invstd, bool, const Tensor& dx, const Tensor& dweight, const Tensor& dbias) {
    const char* op = "batch_norm backward";
    check_data(op, x, 3, "[N, C, S]");
    const int64_t c = x.size(1);
    check_like(op, dy, x, "dy", true);
    check_like(op, dx, x, "dx", false);
    check_stats(op, save_mean, c, x.dtype(), "save_mean");
    check_stats(op, save_invstd, c, x.dtype(), "save_invstd");
    kernels::detail::check_channel_vector(op, weight, c, "weight");
    kernels::detail::check_channel_vector(op, dweight, c, "dweight");
    kernels::detail::check_channel_vector(op, dbias, c, "dbias");
  }
};

// ---- optimizer updates and mixed precision ----
// Every state tensor must match the parameter: same dtype and element count, contiguous.
void check_state(const char* op, const char* name, const Tensor& p, const Tensor& t) {
  HR_CHECK(t.defined() && t.dtype() == p.dtype() && t.numel() == p.numel() && t.is_contiguous(), ValueError, op, ": ",
           name, " ", t.defined() ? describe(t) : std::string("undefined"),
           " must be contiguous and match the parameter ", describe(p));
}
void check_parameter(const char* op, const Tensor& p) {
  HR_CHECK(p.defined() && p.is_contiguous() && is_floating(p.dtype()), ValueError, op,
           ": the parameter must be a contiguous float tensor, got ",
           p.defined() ? describe(p) : std::string("undefined"));
}
template <>
struct OpContract<OpId::sgd_update> {
  static void check(const Tensor& p, const Tensor& g, const Tensor& buf, bool, double, double momentum, double, bool) {
    check_parameter("sgd_update", p);
    check_state("sgd_update", "gradient", p, g);
    if (buf.defined()) check_state("sgd_update", "momentum buffer", p, buf);
    HR_CHECK(momentum == 0 || buf.defined(), ValueError, "sgd_update: momentum ", momentum, " needs a momentum buffer");
  }
};
template <>
struct OpContract<OpId::adam_update> {
  static void check(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const AdamStep&) {
    check_parameter("adam_update", p);
    check_state("adam_update", "gradient", p, g);
    check_state("adam_update", "first moment", p, m);
    check_state("adam_update", "second moment", p, v);
  }
};
template <>
struct OpContract<OpId::unscale_and_check> {
  static void check(const std::vector<Tensor>& grads, double, const Tensor& found_inf) {
    const char* op = "unscale_and_check";
    HR_CHECK(found_inf.defined() && found_inf.dtype() == DType::f32 && found_inf.numel() == 1, ValueError, op,
             ": found_inf must be an f32 tensor of one element, got ",
             found_inf.defined() ? describe(found_inf) : std::string("undefined"));
    for (size_t i = 0; i < grads.size(); ++i)
      HR_CHECK(grads[i].defined() && grads[i].is_contiguous() && is_floating(grads[i].dtype()), ValueError, op,
               ": gradient ", i, " must be a contiguous float tensor, got ",
               grads[i].defined() ? describe(grads[i]) : std::string("undefined"));
  }
};

template <>
struct OpContract<OpId::conv2d_forward> {
  static void check(const Tensor& x, const Tensor& w, const Tensor&, const Tensor& out, const Conv2dParams& p) {
    check_conv2d("conv2d_forward", x, w, out, p);
  }
};
template <>
struct OpContract<OpId::conv2d_backward_input> {
  static void check(const Tensor& dout, const Tensor& w, const Tensor& dx, const Conv2dParams& p) {
    check_conv2d("conv2d_backward_input", dx, w, dout, p);
  }
};
template <>
struct OpContract<OpId::conv2d_backward_weight> {
  static void check(const Tensor& dout, const Tensor& x, const Tensor& dw, const Conv2dParams& p) {
    check_conv2d("conv2d_backward_weight", x, dw, dout, p);
  }
};
template <>
struct OpContract<OpId::max_pool2d_forward> {
  static void check(const Tensor& x, const Tensor& out, const Tensor& indices, const Pool2dParams& p) {
    check_pool2d("max_pool2d_forward", x, out, p);
    check_pool_indices("max_pool2d_forward", indices, out, p);
  }
};
template <>
struct OpContract<OpId::max_pool2d_backward> {
  static void check(const Tensor& dout, const Tensor& indices, const Tensor& dx, const Pool2dParams& p) {
    check_pool2d("max_pool2d_backward", dx, dout, p);
    check_pool_indices("max_pool2d_backward", indices, dout, p);
  }
};
template <>
struct OpContract<OpId::avg_pool2d_forward> {
  static void check(const Tensor& x, const Tensor& out, const Pool2dParams& p) {
    check_pool2d("avg_pool2d_forward", x, out, p);
  }
};
template <>
struct OpContract<OpId::avg_pool2d_backward> {
  static void check(const Tensor& dout, const Tensor& dx, const Pool2dParams& p) {
    check_pool2d("avg_pool2d_backward", dx, dout, p);
  }
};
template <>
struct OpContract<OpId::softmax_forward> {
  static void check(const Tensor& x, const Tensor& y, int64_t dim, bool log) {
    const char* op = log ? "log_softmax" : "softmax";
    check_same_layout(op, x, "input", y, "output");
    if (x.dim() > 0) wrap_dim(dim, x.dim(), op);
  }
};
template <>
struct OpContract<OpId::softmax_backward> {
  static void check(const Tensor& y, const Tensor& dy, const Tensor& dx, int64_t dim, bool log) {
    const char* op = log ? "log_softmax backward" : "softmax backward";
    check_same_layout(op, y, "output", dy, "output gradient");
    check_same_layout(op, y, "output", dx, "input gradient");
    if (y.dim() > 0) wrap_dim(dim, y.dim(), op);
  }
};
template <>
struct OpContract<OpId::cross_entropy_forward> {
  static void check(const Tensor& logits, const Tensor& target, const Tensor& losses, const Tensor& lse) {
    check_cross_entropy("cross_entropy", logits, target, lse);
    check_cross_entropy_losses("cross_entropy", logits, losses);
  }
};
template <>
struct OpContract<OpId::cross_entropy_backward> {
  static void check(const Tensor& logits, const Tensor& target, const Tensor& lse, const Tensor& dlosses,
                    const Tensor& dlogits) {
    check_cross_entropy("cross_entropy backward", logits, target, lse);
    check_cross_entropy_grads("cross_entropy backward", logits, dlosses, dlogits);
  }
};
template <>
struct OpContract<OpId::group_norm_forward> {
  static void check(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t groups, double, const Tensor& y,
                    const Tensor& save_mean, const Tensor& save_rstd) {
    check_group_norm_forward("group_norm", x, weight, bias, groups, y, save_mean, save_rstd);
  }
};
template <>
struct OpContract<OpId::group_norm_backward> {
  static void check(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& save_mean,
                    const Tensor& save_rstd, int64_t groups, const Tensor& dx, const Tensor& dweight,
                    const Tensor& dbias) {
    check_group_norm_backward("group_norm backward", dy, x, weight, save_mean, save_rstd, groups, dx, dweight, dbias);
  }
};
template <>
struct OpContract<OpId::attention_forward> {
  static void check(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, double,
                    bool) {
    check_attention("attention_forward", q, {{k, "k"}, {v, "v"}, {out, "out"}}, lse);
  }
};
template <>
struct OpContract<OpId::attention_backward> {
  static void check(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& dout,
                    const Tensor& lse, const Tensor& dq, const Tensor& dk, const Tensor& dv, double, bool) {
    check_attention("attention_backward", q,
                    {{k, "k"}, {v, "v"}, {out, "out"}, {dout, "dout"}, {dq, "dq"}, {dk, "dk"}, {dv, "dv"}}, lse);
  }
};
template <>
struct OpContract<OpId::index_select> {
  static void check(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) {
    check_index_select("index_select", x, dim, index, out);
  }
};
template <>
struct OpContract<OpId::index_add> {
  static void check(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
    check_index_add("index_add", out, dim, index, src);
  }
};

// ---- Note [op costs]: what each call costs, from its arguments' shapes ----

// The default: an elementwise op -- one operation per element of its largest tensor, every
// tensor read or written once; the dtype of the first defined tensor; the UnaryOp/BinaryOp/
// ReduceOp as the variant.
struct CostSum {
  OpCost cost;
  DType dtype = DType::f32;
  Device device = Device::cpu();
  bool have_dtype = false;
  void tensor(const Tensor& t) {
    if (!t.defined()) return;
    if (!have_dtype) {
      dtype = t.dtype();
      device = t.device();
      have_dtype = true;
    }
    cost.bytes += static_cast<double>(t.nbytes());
    cost.flops = std::max(cost.flops, static_cast<double>(t.numel()));
  }
  void arg(const Tensor& t) { tensor(t); }
  void arg(const std::vector<Tensor>& ts) {
    for (const Tensor& t : ts) tensor(t);
  }
  void arg(UnaryOp op) { cost.variant = static_cast<int>(op); }
  void arg(BinaryOp op) { cost.variant = static_cast<int>(op); }
  void arg(ReduceOp op) { cost.variant = static_cast<int>(op); }
  template <typename T>
  void arg(const T&) {}
};
template <typename... A>
CostSum elementwise_cost(const A&... args) {
  CostSum c;
  (c.arg(args), ...);
  return c;
}

template <OpId Op>
struct OpCostOf {
  template <typename... A>
  static OpCost of(const A&... args) {
    return elementwise_cost(args...).cost;
  }
};

double conv_flops(const Tensor& out_like, const Tensor& w, const Conv2dParams& p) {
  // out_like: [N, Cout, Ho, Wo]; w: [Cout, Cin/groups, kh, kw]
  (void)p;
  return 2.0 * static_cast<double>(out_like.numel()) * static_cast<double>(w.size(1) * w.size(2) * w.size(3));
}
double attention_flops(const Tensor& q, const Tensor& k, bool causal) {
  const double f = 4.0 * static_cast<double>(q.size(0) * q.size(1)) * static_cast<double>(q.size(2)) *
                   static_cast<double>(k.size(2)) * static_cast<double>(q.size(3));
  return causal ? f / 2 : f;
}

template <>
struct OpCostOf<OpId::matmul> {
  static OpCost of(const Tensor& a, const Tensor& b, const Tensor& out, double beta) {
    OpCost c = elementwise_cost(a, b, out).cost;
    c.flops = 2.0 * static_cast<double>(out.numel()) * static_cast<double>(a.size(2));
    if (beta != 0) c.bytes += static_cast<double>(out.nbytes());  // out is read too
    return c;
  }
};
template <>
struct OpCostOf<OpId::conv2d_forward> {
  static OpCost of(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out, const Conv2dParams& p) {
    OpCost c = elementwise_cost(x, w, bias, out).cost;
    c.flops = conv_flops(out, w, p);
    return c;
  }
};
template <>
struct OpCostOf<OpId::conv2d_backward_input> {
  static OpCost of(const Tensor& dout, const Tensor& w, const Tensor& dx, const Conv2dParams& p) {
    OpCost c = elementwise_cost(dout, w, dx).cost;
    c.flops = conv_flops(dout, w, p);
    return c;
  }
};
template <>
struct OpCostOf<OpId::conv2d_backward_weight> {
  static OpCost of(const Tensor& dout, const Tensor& x, const Tensor& dw, const Conv2dParams& p) {
    OpCost c = elementwise_cost(dout, x, dw).cost;
    c.flops = conv_flops(dout, dw, p);
    return c;
  }
};
template <>
struct OpCostOf<OpId::attention_forward> {
  static OpCost of(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, double,
                   bool causal) {
    OpCost c = elementwise_cost(q, k, v, out, lse).cost;
    c.flops = attention_flops(q, k, causal);
    return c;
  }
};
template <>
struct OpCostOf<OpId::attention_backward> {
  static OpCost of(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& dout,
                   const Tensor& lse, const Tensor& dq, const Tensor& dk, const Tensor& dv, double, bool causal) {
    OpCost c = elementwise_cost(q, k, v, out, dout, lse, dq, dk, dv).cost;
    c.flops = 2.5 * attention_flops(q, k, causal);  // the forward's scores again, then four products
    return c;
  }
};
template <>
struct OpCostOf<OpId::softmax_forward> {
  static OpCost of(const Tensor& x, const Tensor& y, int64_t, bool log) {
    OpCost c = elementwise_cost(x, y).cost;
    c.variant = log ? 1 : 0;
    return c;
  }
};
template <>
struct OpCostOf<OpId::softmax_backward> {
  static OpCost of(const Tensor& y, const Tensor& dy, const Tensor& dx, int64_t, bool log) {
    OpCost c = elementwise_cost(y, dy, dx).cost;
    c.variant = log ? 1 : 0;
    return c;
  }
};
template <>
struct OpCostOf<OpId::index_select> {  // reads the rows it gathers, not the whole table
  static OpCost of(const Tensor& x, int64_t, const Tensor& index, const Tensor& out) {
    (void)x;
    OpCost c = elementwise_cost(index, out).cost;
    c.bytes += static_cast<double>(out.nbytes());
    return c;
  }
};
template <>
struct OpCostOf<OpId::index_add> {  // reads and writes the rows it adds to
  static OpCost of(const Tensor& out, int64_t, const Tensor& index, const Tensor& src) {
    (void)out;
    OpCost c = elementwise_cost(index, src).cost;
    c.bytes += 2.0 * static_cast<double>(src.nbytes());
    return c;
  }
};

// The dtype and device of the first defined tensor argument (the device's index for the record;
// its type is the backend's).
template <typename... A>
std::pair<DType, Device> first_tensor(DeviceType type, const A&... args) {
  CostSum c;
  (c.arg(args), ...);
  return {c.dtype, c.have_dtype ? c.device : Device{type, 0}};
}

}  // namespace

// ---- Backend's entry points and default kernels ----
#define HEADROOM_OP_DEFINE(name, params, args)                                                         \
  void Backend::name params {                                                                          \
    headroom::detail::check_devices(#name, device_type(), #args, HEADROOM_EXPAND args);                \
    OpContract<OpId::name>::check(HEADROOM_EXPAND args);                                               \
    if (!supported_.contains(OpId::name)) throw_unsupported(OpId::name, device_type());                \
    if (OpRecorder* rec = headroom::detail::active_op_recorder()) [[unlikely]] { /* Note [op costs] */ \
      const auto [dtype_, device_] = first_tensor(device_type(), HEADROOM_EXPAND args);                \
      headroom::detail::RecordedCall call(*rec, OpId::name, device_, dtype_,                           \
                                          OpCostOf<OpId::name>::of(HEADROOM_EXPAND args));             \
      if (meta_active() && !meta_kernels_.contains(OpId::name)) return;                                \
      impl_##name args;                                                                                \
      return;                                                                                          \
    }                                                                                                  \
    if (meta_active() && !meta_kernels_.contains(OpId::name)) return;                                  \
    impl_##name args;                                                                                  \
  }                                                                                                    \
  void Backend::impl_##name params { throw_unsupported(OpId::name, device_type()); }
HEADROOM_OPS(HEADROOM_OP_DEFINE)
#undef HEADROOM_OP_DEFINE

}  // namespace headroom
