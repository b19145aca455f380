// Autocast state, policy table and cast cache (autograd/autocast.h).
//
// The state is a small thread-local array indexed by device type (enabled, dtype) plus a
// nesting depth over all guards: the cache dies with the outermost guard. The cache is a flat
// vector searched linearly -- a model has tens to hundreds of parameters, and a lookup
// compares a pointer first -- holding a reference to each parameter's storage (so the key's
// address cannot be reused while the entry lives) and the cast tensor with its backward node.
#include "autograd/autocast.h"

#include <array>
#include <vector>

#include "autograd/autograd_meta.h"
#include "autograd/function.h"
#include "autograd/functions/internal.h"
#include "engine/memory.h"

namespace headroom {

namespace {

// ---- the policy table: the one place that says which op runs in which dtype ----
struct PolicyEntry {
  AutocastOp op;
  const char* name;
  CastPolicy policy;
};
constexpr std::array<PolicyEntry, static_cast<size_t>(AutocastOp::kCount)> kPolicy{{
    {AutocastOp::matmul, "matmul", CastPolicy::low},
    {AutocastOp::linear, "linear", CastPolicy::low},
    {AutocastOp::conv2d, "conv2d", CastPolicy::low},
    {AutocastOp::softmax, "softmax", CastPolicy::f32},
    {AutocastOp::log_softmax, "log_softmax", CastPolicy::f32},
    {AutocastOp::layer_norm, "layer_norm", CastPolicy::f32},
    {AutocastOp::batch_norm, "batch_norm", CastPolicy::f32_params},
    {AutocastOp::group_norm, "group_norm", CastPolicy::f32_params},
    {AutocastOp::sum, "sum", CastPolicy::f32},
    {AutocastOp::mean, "mean", CastPolicy::f32},
    {AutocastOp::cross_entropy, "cross_entropy", CastPolicy::f32},
    {AutocastOp::mse_loss, "mse_loss", CastPolicy::f32},
    {AutocastOp::exp, "exp", CastPolicy::f32},
    {AutocastOp::log, "log", CastPolicy::f32},
    {AutocastOp::pow, "pow", CastPolicy::f32},
}};
constexpr bool table_in_enum_order() {
  for (size_t i = 0; i < kPolicy.size(); ++i)
    if (static_cast<size_t>(kPolicy[i].op) != i) return false;
  return true;
}
static_assert(table_in_enum_order(), "kPolicy must list the AutocastOps in enum order");

struct TypeState {
  bool enabled = false;
  DType dtype = DType::f16;
};

struct CacheEntry {
  Storage storage;  // keeps the key's address from being reused while the entry lives
  int64_t offset;
  Shape shape, strides;
  DType to;
  uint64_t version;
  Tensor cast;
};

struct ThreadState {
  std::array<TypeState, static_cast<size_t>(kNumDeviceTypes)> types;
  int depth = 0;
  std::vector<CacheEntry> cache;
  AutocastCacheStats stats;
};

ThreadState& state() {
  thread_local ThreadState s;
  return s;
}

size_t type_index(DeviceType t) { return static_cast<size_t>(t); }

bool eligible(DType d) { return d == DType::f32 || d == DType::f16 || d == DType::bf16; }

// The backward of a cached cast: the gradient cast back to the parameter's dtype. It saves
// nothing, so unlike FunctionNode it is not released after a backward (release_saved is the
// base's no-op): each micro-batch's backward in the scope flows through it again.
class CachedCastNode final : public Node {
 public:
  explicit CachedCastNode(DType from) : Node("autocast_cast"), from_(from) {}
  std::vector<Tensor> apply(const Tensor& grad_output) override { return {detail::cast_raw(grad_output, from_)}; }

 private:
  DType from_;
};

// A parameter's cast with a reusable backward node (see CachedCastNode).
Tensor cast_parameter(const Tensor& x, DType to) {
  Tensor out;
  {
    NoGradGuard no_grad;
    CategoryScope as_parameter(MemoryCategory::parameter);  // Note [autocast cast cache]
    out = cast(x, to);
  }
  auto node = std::make_shared<CachedCastNode>(x.dtype());
  node->next.push_back(gradient_edge(x));
  node->output_shape = out.shape();
  node->output_dtype = out.dtype();
  node->output_device = out.device();
  AutogradMeta& meta = autograd_meta(out);
  meta.grad_fn = std::move(node);
  meta.requires_grad = true;
  return out;
}

}  // namespace

const char* autocast_op_name(AutocastOp op) { return kPolicy.at(static_cast<size_t>(op)).name; }

CastPolicy autocast_policy(AutocastOp op) { return kPolicy.at(static_cast<size_t>(op)).policy; }

AutocastGuard::AutocastGuard(DeviceType type, DType dtype, bool enabled) : type_(type) {
  HR_CHECK(dtype == DType::f16 || dtype == DType::bf16, ValueError,
           "AutocastGuard: the low dtype must be f16 or bf16, got ", dtype_name(dtype));
  HR_CHECK(type_index(type) < static_cast<size_t>(kNumDeviceTypes), ValueError, "AutocastGuard: unknown device type");
  ThreadState& s = state();
  TypeState& t = s.types[type_index(type)];
  prev_enabled_ = t.enabled;
  prev_dtype_ = t.dtype;
  t.enabled = enabled;
  t.dtype = dtype;
  ++s.depth;
}

AutocastGuard::AutocastGuard(Device device, DType dtype, bool enabled) : AutocastGuard(device.type, dtype, enabled) {}

AutocastGuard AutocastGuard::disabled(DeviceType type) { return AutocastGuard(type, autocast_dtype(type), false); }

AutocastGuard::AutocastGuard(AutocastGuard&& other) noexcept
    : type_(other.type_), prev_enabled_(other.prev_enabled_), prev_dtype_(other.prev_dtype_), active_(other.active_) {
  other.active_ = false;
}

AutocastGuard::~AutocastGuard() {
  if (!active_) return;
  ThreadState& s = state();
  TypeState& t = s.types[type_index(type_)];
  t.enabled = prev_enabled_;
  t.dtype = prev_dtype_;
  if (--s.depth == 0) s.cache.clear();
}

AutocastCacheScope::AutocastCacheScope() { ++state().depth; }

AutocastCacheScope::~AutocastCacheScope() {
  ThreadState& s = state();
  if (--s.depth == 0) s.cache.clear();
}

bool autocast_enabled(DeviceType type) { return state().types[type_index(type)].enabled; }
DType autocast_dtype(DeviceType type) { return state().types[type_index(type)].dtype; }

AutocastCacheStats autocast_cache_stats() {
  AutocastCacheStats st = state().stats;
  st.entries = static_cast<int64_t>(state().cache.size());
  return st;
}

void reset_autocast_cache_stats() {
  state().stats.casts = 0;
  state().stats.hits = 0;
}

namespace detail {

bool autocast_target(AutocastOp op, std::initializer_list<const Tensor*> inputs, DType* to) {
  const CastPolicy policy = autocast_policy(op);
  // f32_params: the parameters are f32 already and the kernel computes in f32; nothing to cast.
  if (policy == CastPolicy::promote || policy == CastPolicy::f32_params) return false;
  ThreadState& s = state();
  if (s.depth == 0) return false;  // the common case: no scope, one thread-local load
  for (const Tensor* t : inputs) {
    if (!t->defined() || !eligible(t->dtype())) continue;
    const TypeState& ts = s.types[type_index(t->device().type)];
    if (!ts.enabled) continue;
    const DType want = policy == CastPolicy::low ? ts.dtype : DType::f32;
    // Any input off the target decides; the op then casts all eligible inputs to `want`.
    for (const Tensor* u : inputs)
      if (u->defined() && eligible(u->dtype()) && u->dtype() != want) {
        *to = want;
        return true;
      }
    return false;
  }
  return false;
}

Tensor autocast_cast(const Tensor& x, DType to) {
  if (!x.defined() || !eligible(x.dtype()) || x.dtype() == to) return x;
  // Only parameters are cached: activations are cast once anyway, and caching them would keep
  // them alive until the scope ends.
  if (!(x.is_leaf() && x.requires_grad() && GradMode::is_enabled())) return cast(x, to);
  ThreadState& s = state();
  const Storage& st = x.storage();
  for (CacheEntry& e : s.cache) {
    if (e.storage.get() != st.get() || e.offset != x.offset() || e.to != to || e.shape != x.shape() ||
        e.strides != x.strides())
      continue;
    if (e.version == x.version()) {
      ++s.stats.hits;
      return e.cast;
    }
    // Written in place since (an optimizer step inside the scope): recast.
    e.cast = cast_parameter(x, to);
    e.version = x.version();
    ++s.stats.casts;
    return e.cast;
  }
  Tensor out = cast_parameter(x, to);
  s.cache.push_back({st, x.offset(), x.shape(), x.strides(), to, x.version(), out});
  ++s.stats.casts;
  return out;
}

}  // namespace detail

}  // namespace headroom
