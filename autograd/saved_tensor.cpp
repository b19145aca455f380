#include "autograd/saved_tensor.h"

#include <vector>

namespace headroom {

namespace {

struct HookPair {
  PackHook pack;
  std::shared_ptr<const UnpackHook> unpack;
};

// The scopes of this thread, innermost last; a null entry suspends them (while a pack hook
// runs).
std::vector<const HookPair*>& hook_stack() {
  thread_local std::vector<const HookPair*> stack;
  return stack;
}

const HookPair* current_hooks() {
  const auto& s = hook_stack();
  return s.empty() ? nullptr : s.back();
}

std::string version_error(const char* op, const std::string& what, uint64_t now, uint64_t then) {
  return str_cat("a tensor saved for the backward of ", op, " (", what,
                 ") was modified in place after it was saved: its version is ", now, ", expected ", then,
                 ". Clone it before the in-place op, or use the out-of-place form.");
}

}  // namespace

struct SavedTensor::Packed {
  std::any value;
  std::shared_ptr<const UnpackHook> unpack;
  std::shared_ptr<VersionCounter> counter;
  Shape shape;
  DType dtype;
  Device device;
};

SavedTensorHooks::SavedTensorHooks(PackHook pack, UnpackHook unpack) {
  HR_CHECK(pack && unpack, ValueError, "SavedTensorHooks: both a pack and an unpack function are needed");
  auto* pair = new HookPair{std::move(pack), std::make_shared<const UnpackHook>(std::move(unpack))};
  try {
    hook_stack().push_back(pair);
  } catch (...) {
    delete pair;
    throw;
  }
}

SavedTensorHooks::~SavedTensorHooks() {
  auto& s = hook_stack();
  delete s.back();
  s.pop_back();
}

bool SavedTensorHooks::active() { return current_hooks() != nullptr; }

SavedTensor::SavedTensor(const Tensor& t, const char* op) : op_(op) {
  if (!t.defined()) return;
  defined_ = true;
  version_ = t.version();
  const HookPair* hooks = current_hooks();
  if (!hooks) {
    tensor_ = t.detach();
    if (t.storage()->category() == MemoryCategory::temporary) t.storage()->set_category(MemoryCategory::activation);
    return;
  }
  auto packed = std::make_shared<Packed>();
  packed->unpack = hooks->unpack;
  packed->counter = t.storage()->version_counter();
  packed->shape = t.shape();
  packed->dtype = t.dtype();
  packed->device = t.device();
  {
    // The pack hook runs with no scope active (Note [saved-tensor hooks]).
    auto& s = hook_stack();
    s.push_back(nullptr);
    struct Pop {
      ~Pop() { hook_stack().pop_back(); }
    } pop;
    packed->value = hooks->pack(t.detach(), op);
  }
  packed_ = std::move(packed);
}

Tensor SavedTensor::unpack() const {
  if (!packed_) {
    if (tensor_.defined() && tensor_.version() != version_)
      throw AutogradError(version_error(op_, describe(tensor_), tensor_.version(), version_));
    return tensor_;
  }
  const Packed& p = *packed_;
  const uint64_t now = p.counter->load(std::memory_order_relaxed);
  if (now != version_)
    throw AutogradError(version_error(op_,
                                      str_cat(dtype_name(p.dtype), " ", shape_str(p.shape), " on ", p.device.str(),
                                              ", packed by a saved-tensor hook"),
                                      now, version_));
  Tensor t = (*p.unpack)(p.value);
  HR_CHECK(t.defined(), AutogradError,
           "the unpack hook returned an undefined tensor for a tensor saved for the backward of ", op_, " (",
           dtype_name(p.dtype), " ", shape_str(p.shape), " on ", p.device.str(), ")");
  HR_CHECK(t.shape() == p.shape && t.dtype() == p.dtype && t.device() == p.device, AutogradError,
           "the unpack hook returned ", describe(t), " for a tensor saved for the backward of ", op_, " as ",
           dtype_name(p.dtype), " ", shape_str(p.shape), " on ", p.device.str(),
           ": unpack must give back the shape, dtype and device that were packed");
  return t;
}

}  // namespace headroom
