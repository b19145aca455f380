// Optimizer base: parameter list validation, the shared lr / zero_grad, the two phases of Note
// [all-or-nothing step] (optimizer.h), the state dict, and the unfused update's workspace.
#include "optim/optimizer.h"

#include <set>

#include "autograd/grad_mode.h"
#include "engine/backend.h"
#include "engine/caching_allocator.h"
#include "engine/memory.h"
#include "engine/shape.h"

namespace headroom::optim {

Optimizer::Optimizer(std::vector<Tensor> params, double lr) : params_(std::move(params)), lr_(lr) {
  HR_CHECK(!params_.empty(), ValueError, "Optimizer: got an empty parameter list");
  HR_CHECK(lr >= 0, ValueError, "Optimizer: lr must be >= 0, got ", lr);
  std::set<const TensorImpl*> seen;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i];
    HR_CHECK(p.defined(), ValueError, "Optimizer: parameter ", i, " is undefined");
    HR_CHECK(is_floating(p.dtype()), ValueError, "Optimizer: parameter ", i,
             " is not a floating tensor: ", describe(p));
    HR_CHECK(p.is_leaf(), ValueError, "Optimizer: parameter ", i, " (", describe(p),
             ") is the result of an op, not a leaf; optimize the leaf it came from");
    HR_CHECK(seen.insert(p.impl()).second, ValueError, "Optimizer: parameter ", i, " (", describe(p),
             ") appears more than once in the list");
  }
}

// A failed prepare tells the peers (Note [agreed failure]); a group that cannot be told (it broke
// with this failure) must not hide the failure itself, which is rethrown.
void Optimizer::tell_peers_not_prepared() noexcept {
  if (!step_agreement_) return;
  try {
    step_agreement_(false);
  } catch (...) {
  }
}

void Optimizer::step() {
  NoGradGuard no_grad;
  reserving_ = 0;
  try {
    prepare_step();
  } catch (const OutOfMemoryError& e) {
    discard_step();
    tell_peers_not_prepared();  // the peers learn that this rank cannot commit
    const Tensor& p = params_[std::min(reserving_, params_.size() - 1)];
    throw OutOfMemoryError(str_cat(e.what(),
                                   "\n  optimizer step: this was while reserving state and temporaries for "
                                   "parameter ",
                                   reserving_, " of ", params_.size(), " (", describe(p),
                                   "); nothing was updated -- parameters, optimizer state and step counts are as "
                                   "before the step, so it can be retried"),
                           e.requested_bytes(), e.limit_bytes());
  } catch (...) {
    discard_step();
    tell_peers_not_prepared();
    throw;
  }
  // Note [agreed failure]: commit only when every rank prepared. An agreement that fails (a
  // broken group) commits nothing either.
  bool agreed = true;
  if (step_agreement_) {
    try {
      agreed = step_agreement_(true);
    } catch (...) {
      discard_step();
      throw;
    }
  }
  if (!agreed) {
    discard_step();
    throw OutOfMemoryError(
        "optimizer step: another rank ran out of memory while preparing its step, so none "
        "committed; nothing was updated here either (parameters, optimizer state and step counts "
        "are as before the step), so it can be retried",
        0, 0);
  }
  NoAllocationScope no_allocation("an optimizer's commit phase (Note [all-or-nothing step])");
  commit_step();
}

Tensor Optimizer::checked_grad(size_t i, const char* optimizer) const {
  const Tensor& p = params_[i];
  Tensor g = p.grad();
  if (!g.defined()) return g;
  HR_CHECK(g.shape() == p.shape(), ShapeError, optimizer, ": the gradient of parameter ", i, " is ", describe(g),
           " but the parameter is ", describe(p));
  HR_CHECK(g.device() == p.device(), DeviceError, optimizer, ": the gradient of parameter ", i, " is on ",
           g.device().str(), " but the parameter is on ", p.device().str());
  HR_CHECK(is_floating(g.dtype()), DTypeError, optimizer, ": the gradient of parameter ", i, " is ", describe(g),
           ", not a float tensor");
  return g;
}

void Optimizer::zero_grad() {
  drop_gradient_copies();
  for (const auto& p : params_) p.zero_grad();
}

void Optimizer::set_lr(double lr) {
  HR_CHECK(lr >= 0, ValueError, "Optimizer::set_lr: lr must be >= 0, got ", lr);
  lr_ = lr;
}

std::map<std::string, Tensor> Optimizer::state_dict() const {
  std::map<std::string, Tensor> out;
  out["lr"] = Tensor::scalar(lr_, DType::f64);
  for (size_t i = 0; i < params_.size(); ++i) {
    std::map<std::string, Tensor> st;
    param_state(i, st);
    for (auto& [name, t] : st) out[str_cat("param.", i, ".", name)] = t;
  }
  return out;
}

void Optimizer::load_state_dict(const std::map<std::string, Tensor>& state) {
  const std::vector<std::string> names = param_state_names();
  auto find = [&](const std::string& key) -> const Tensor* {
    auto it = state.find(key);
    return it == state.end() ? nullptr : &it->second;
  };
  // Check everything first.
  const Tensor* lr = find("lr");
  HR_CHECK(lr && lr->defined() && lr->numel() == 1 && is_floating(lr->dtype()), ValueError,
           "Optimizer::load_state_dict: no scalar float entry 'lr'");
  const double new_lr = lr->item<double>();
  HR_CHECK(new_lr >= 0, ValueError, "Optimizer::load_state_dict: 'lr' is ", new_lr, ", must be >= 0");
  size_t known = 1;
  std::vector<std::map<std::string, Tensor>> loaded(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i];
    size_t present = 0;
    for (const std::string& n : names) present += find(str_cat("param.", i, ".", n)) != nullptr;
    if (present == 0) continue;
    for (const std::string& n : names) {
      const std::string key = str_cat("param.", i, ".", n);
      const Tensor* t = find(key);
      HR_CHECK(t && t->defined(), ValueError, "Optimizer::load_state_dict: parameter ", i, " has some state but no '",
               key, "'");
      ++known;
      if (n == "step") {
        HR_CHECK(t->numel() == 1 && t->dtype() == DType::i64 && t->item<int64_t>() >= 0, ValueError,
                 "Optimizer::load_state_dict: '", key, "' must be a non-negative i64 scalar, got ", describe(*t));
        loaded[i][n] = *t;
        continue;
      }
      HR_CHECK(t->shape() == p.shape() && t->dtype() == state_dtype(i), ValueError, "Optimizer::load_state_dict: '",
               key, "' is ", describe(*t), " but parameter ", i, " is ", describe(p),
               state_dtype(i) == p.dtype() ? "" : str_cat(" (its state is ", dtype_name(state_dtype(i)), ")"));
      loaded[i][n] = *t;
    }
  }
  HR_CHECK(
      known == state.size(), ValueError, "Optimizer::load_state_dict: ", state.size() - known,
      " entries name no state of this optimizer (", params_.size(), " parameters, state ",
      [&] {
        std::string s;
        for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
        return s;
      }(),
      "); was it saved from another model or optimizer?");
  // Then copy to the parameters' devices (may run out of memory: nothing is replaced yet).
  {
    NoGradGuard no_grad;
    CategoryScope scope(MemoryCategory::optimizer_state);
    for (size_t i = 0; i < params_.size(); ++i)
      for (auto& [n, t] : loaded[i]) {
        if (n == "step") {
          t = Tensor::scalar(static_cast<double>(t.item<int64_t>()), DType::i64);
          continue;
        }
        Tensor copy = make_state_tensor(i, t.shape());
        copy_tensor(copy, t);
        t = copy;
      }
  }
  lr_ = new_lr;
  for (size_t i = 0; i < params_.size(); ++i) set_param_state(i, std::move(loaded[i]));
}

// ---- UpdateWorkspace ----

void UpdateWorkspace::need(const Tensor& p) {
  for (Group& g : groups_)
    if (g.device == p.device() && g.dtype == p.dtype()) {
      g.numel = std::max(g.numel, p.numel());
      return;
    }
  groups_.push_back(Group{p.device(), p.dtype(), p.numel(), {}, {}});
}

void UpdateWorkspace::reserve(int buffers, int scalars) {
  try {
    CategoryScope scope(MemoryCategory::temporary);
    for (Group& g : groups_) {
      const TensorOptions opts = TensorOptions().dtype(g.dtype).device(g.device);
      for (int k = 0; k < buffers; ++k) g.buffers.push_back(Tensor::empty({std::max<int64_t>(g.numel, 1)}, opts));
      for (int k = 0; k < scalars; ++k) g.scalars.push_back(Tensor::empty({}, opts));
    }
  } catch (...) {
    clear();
    throw;
  }
}

const UpdateWorkspace::Group& UpdateWorkspace::group(const Tensor& p) const {
  for (const Group& g : groups_)
    if (g.device == p.device() && g.dtype == p.dtype()) return g;
  throw Error(str_cat("UpdateWorkspace: nothing reserved for ", describe(p)));
}

Tensor UpdateWorkspace::buffer(int k, const Tensor& p) const {
  const Group& g = group(p);
  return g.buffers.at(static_cast<size_t>(k)).as_strided(p.shape(), contiguous_strides(p.shape()), 0);
}

Tensor UpdateWorkspace::scalar(int k, const Tensor& p, double value) const {
  const Tensor& s = group(p).scalars.at(static_cast<size_t>(k));
  backend_for(s.device()).fill(s, value);
  return s.as_strided(p.shape(), Shape(p.shape().size(), 0), 0);
}

}  // namespace headroom::optim
