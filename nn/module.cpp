// Module: the registry walk (names, to(), state dicts). Everything here goes through
// for_each_tensor, so the order of names, the set of tensors moved by to() and the keys of a
// state dict can never disagree.
#include "nn/module.h"

#include <algorithm>
#include <set>
#include <sstream>
#include <unordered_map>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "engine/memory.h"
#include "nn/serialize.h"

namespace headroom::nn {

TensorOptions LayerOptions::tensor_options(const char* layer) const {
  HR_CHECK(is_floating(dtype), DTypeError, layer, ": parameters need a floating dtype, got ", dtype_name(dtype));
  return TensorOptions().dtype(dtype).device(device);
}

// Note [several inputs] in module.h.
Tensor Module::forward(const Tensor&) {
  throw ValueError(str_cat(name(), ": forward takes several inputs; call it as m(a, b, ...) or forward({a, b, ...})"));
}

Tensor Module::forward(const std::vector<Tensor>& inputs) {
  HR_CHECK(inputs.size() == 1, ValueError, name(), ": forward takes one input, got ", inputs.size(),
           " (override forward(const std::vector<Tensor>&) for a module with several)");
  return forward(inputs[0]);
}

// ---- registration ----

void Module::check_new_name(const std::string& name, const char* what) const {
  HR_CHECK(!name.empty() && name.find('.') == std::string::npos, ValueError, what, ": invalid name '", name,
           "' (it must be non-empty and contain no '.')");
  auto taken = [&](const auto& list, auto get) {
    return std::any_of(list.begin(), list.end(), [&](const auto& e) { return get(e) == name; });
  };
  auto entry_name = [](const Entry& e) { return e.name; };
  HR_CHECK(!taken(parameters_, entry_name) && !taken(buffers_, entry_name) &&
               !taken(children_, [](const auto& c) { return c.first; }),
           ValueError, what, ": the name '", name, "' is already registered in ", this->name());
}

Tensor& Module::register_parameter(const std::string& name, Tensor t) {
  check_new_name(name, "register_parameter");  // before taking ownership: a failure changes nothing
  HR_CHECK(t.defined() && is_floating(t.dtype()), DTypeError, "register_parameter: '", name,
           "' must be a floating tensor to be trained, got ", describe(t));
  owned_.push_back(std::move(t));
  return register_parameter(name, &owned_.back());
}

Tensor& Module::register_parameter(const std::string& name, Tensor* member) {
  check_new_name(name, "register_parameter");
  HR_CHECK(member && member->defined(), ValueError, "register_parameter: '", name, "' is an undefined tensor");
  HR_CHECK(is_floating(member->dtype()), DTypeError, "register_parameter: '", name,
           "' must be a floating tensor to be trained, got ", describe(*member));
  if (!member->is_leaf()) *member = member->detach();  // a parameter is a leaf, like torch.nn.Parameter
  member->set_requires_grad(true);
  parameters_.push_back({name, member});
  return *member;
}

Tensor& Module::register_buffer(const std::string& name, Tensor t) {
  check_new_name(name, "register_buffer");  // before taking ownership: a failure changes nothing
  HR_CHECK(t.defined(), ValueError, "register_buffer: '", name, "' is an undefined tensor");
  owned_.push_back(std::move(t));
  return register_buffer(name, &owned_.back());
}

Tensor& Module::register_buffer(const std::string& name, Tensor* member) {
  check_new_name(name, "register_buffer");
  HR_CHECK(member && member->defined(), ValueError, "register_buffer: '", name, "' is an undefined tensor");
  buffers_.push_back({name, member});
  return *member;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> m) {
  check_new_name(name, "register_module");
  HR_CHECK(m != nullptr, ValueError, "register_module: '", name, "' is a null module");
  HR_CHECK(m.get() != this, ValueError, "register_module: a module cannot contain itself ('", name, "')");
  children_.emplace_back(name, std::move(m));
}

// ---- walking the tree ----

void Module::for_each_tensor(const std::string& prefix,
                             const std::function<void(const std::string&, Tensor&, bool)>& f) const {
  for (const auto& e : parameters_) f(prefix + e.name, *e.tensor, true);
  for (const auto& e : buffers_) f(prefix + e.name, *e.tensor, false);
  for (const auto& [name, child] : children_) child->for_each_tensor(prefix + name + ".", f);
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  std::set<const TensorImpl*> seen;
  for_each_tensor("", [&](const std::string& name, Tensor& t, bool is_param) {
    if (is_param && seen.insert(t.impl()).second) out.emplace_back(name, t);
  });
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers() const {
  std::vector<std::pair<std::string, Tensor>> out;
  std::set<const TensorImpl*> seen;
  for_each_tensor("", [&](const std::string& name, Tensor& t, bool is_param) {
    if (!is_param && seen.insert(t.impl()).second) out.emplace_back(name, t);
  });
  return out;
}

std::vector<Tensor> Module::buffers() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_buffers()) out.push_back(t);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_children() const { return children_; }

void Module::collect_modules(const std::string& prefix,
                             std::vector<std::pair<std::string, std::shared_ptr<Module>>>& out) const {
  for (const auto& [name, child] : children_) {
    out.emplace_back(prefix + name, child);
    child->collect_modules(prefix + name + ".", out);
  }
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_modules() const {
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> out;
  collect_modules("", out);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (const auto& t : parameters()) n += t.numel();
  return n;
}

// ---- modes, devices, dtypes, grads ----

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

void Module::replace_tensors(const std::function<Tensor(const Tensor&)>& convert) {
  // Two phases: convert everything, then assign, so a failure (no such device, out of memory)
  // leaves the module as it was. `done` holds the old tensors too, so an address cannot be
  // freed and reused while the map still uses it as a key.
  std::vector<Tensor*> slots;
  std::unordered_map<const TensorImpl*, std::pair<Tensor, Tensor>> done;
  for_each_tensor("", [&](const std::string&, Tensor& t, bool) {
    slots.push_back(&t);
    if (!done.count(t.impl())) done.emplace(t.impl(), std::make_pair(t, convert(t)));
  });
  for (Tensor* slot : slots) *slot = done.at(slot->impl()).second;
}

namespace {
// The converted tensor keeps the original's requires_grad and carries its grad along.
Tensor carry_autograd(const Tensor& from, Tensor to, const std::function<Tensor(const Tensor&)>& convert_grad) {
  if (from.requires_grad()) to.set_requires_grad(true);
  if (Tensor g = from.grad(); g.defined()) {
    CategoryScope scope(MemoryCategory::gradient);
    to.set_grad(convert_grad(g));
  }
  return to;
}
}  // namespace

void Module::rebind_parameters(const std::function<Tensor(const std::string&, const Tensor&)>& make) {
  std::vector<Tensor*> slots;
  std::unordered_map<const TensorImpl*, std::pair<Tensor, Tensor>> done;  // old -> (old, new)
  for_each_tensor("", [&](const std::string& name, Tensor& t, bool is_param) {
    if (!is_param) return;
    slots.push_back(&t);
    if (done.count(t.impl())) return;
    Tensor fresh = make(name, t);
    HR_CHECK(
        fresh.defined() && fresh.shape() == t.shape() && fresh.dtype() == t.dtype() && fresh.device() == t.device(),
        ShapeError, "rebind_parameters: parameter ", name, " is ", shape_str(t.shape()), " ", dtype_name(t.dtype()),
        " on ", t.device().str(), " but its replacement is ",
        fresh.defined()
            ? str_cat(shape_str(fresh.shape()), " ", dtype_name(fresh.dtype()), " on ", fresh.device().str())
            : std::string("undefined"));
    if (t.requires_grad()) fresh.set_requires_grad(true);
    done.emplace(t.impl(), std::make_pair(t, fresh));
  });
  for (Tensor* slot : slots) *slot = done.at(slot->impl()).second;
}

void Module::place_tensors(const std::function<Tensor(const Tensor&)>& place) {
  replace_tensors([&](const Tensor& t) -> Tensor {
    Tensor placed = place(t);
    HR_CHECK(placed.defined() && placed.shape() == t.shape() && placed.dtype() == t.dtype(), ShapeError,
             "place_tensors: a ", shape_str(t.shape()), " ", dtype_name(t.dtype()), " tensor was replaced by ",
             placed.defined() ? str_cat(shape_str(placed.shape()), " ", dtype_name(placed.dtype()))
                              : std::string("nothing"));
    if (t.requires_grad() && !placed.requires_grad()) placed.set_requires_grad(true);
    return placed;
  });
}

void Module::to(Device device) {
  NoGradGuard no_grad;
  CategoryScope scope(MemoryCategory::parameter);
  auto move = [device](const Tensor& t) { return t.to(device); };
  replace_tensors([&](const Tensor& t) -> Tensor {
    if (t.device() == device) return t;
    return carry_autograd(t, t.to(device), move);
  });
}

void Module::to(DType dtype) {
  HR_CHECK(is_floating(dtype), DTypeError, "Module::to: parameters can only be converted to a floating dtype, got ",
           dtype_name(dtype));
  NoGradGuard no_grad;
  CategoryScope scope(MemoryCategory::parameter);
  auto cast_to = [dtype](const Tensor& t) { return cast(t, dtype); };
  replace_tensors([&](const Tensor& t) -> Tensor {
    if (!is_floating(t.dtype()) || t.dtype() == dtype) return t;
    return carry_autograd(t, cast(t, dtype), cast_to);
  });
}

void Module::zero_grad() {
  for (auto& t : parameters()) t.zero_grad();
}

// ---- state dicts ----

std::map<std::string, Tensor> Module::state_dict() const {
  std::map<std::string, Tensor> sd;
  for_each_tensor("", [&](const std::string& name, Tensor& t, bool) { sd.emplace(name, t.detach()); });
  return sd;
}

void Module::load_state_dict(const std::map<std::string, Tensor>& sd, bool strict) {
  std::vector<std::pair<std::string, Tensor*>> slots;
  for_each_tensor("", [&](const std::string& name, Tensor& t, bool) { slots.emplace_back(name, &t); });

  std::vector<std::string> missing, unexpected;
  std::set<std::string> known;
  for (const auto& [name, slot] : slots) {
    known.insert(name);
    if (!sd.count(name)) missing.push_back(name);
  }
  for (const auto& [name, t] : sd)
    if (!known.count(name)) unexpected.push_back(name);
  if (strict && (!missing.empty() || !unexpected.empty())) {
    auto join = [](const std::vector<std::string>& v) {
      std::string s;
      for (const auto& n : v) s += (s.empty() ? "" : ", ") + n;
      return s;
    };
    std::string msg = str_cat("load_state_dict into ", name(), ":");
    if (!missing.empty()) msg += str_cat(" missing keys (in the module, not in the state dict): ", join(missing), ";");
    if (!unexpected.empty())
      msg += str_cat(" unexpected keys (in the state dict, not in the module): ", join(unexpected), ";");
    throw ValueError(msg + " pass strict = false to load the keys that match");
  }

  // Check every entry before writing any, so a bad state dict leaves the module untouched.
  for (const auto& [name, slot] : slots) {
    auto it = sd.find(name);
    if (it == sd.end()) continue;
    const Tensor& src = it->second;
    HR_CHECK(src.defined(), ValueError, "load_state_dict: '", name, "' is an undefined tensor in the state dict");
    HR_CHECK(src.shape() == slot->shape(), ShapeError, "load_state_dict: shape mismatch for '", name,
             "': the module has ", shape_str(slot->shape()), ", the state dict has ", shape_str(src.shape()));
    HR_CHECK(src.dtype() == slot->dtype(), DTypeError, "load_state_dict: dtype mismatch for '", name, "' of shape ",
             shape_str(slot->shape()), ": the module has ", dtype_name(slot->dtype()), ", the state dict has ",
             dtype_name(src.dtype()), " (convert the module with to(dtype) first)");
  }
  NoGradGuard no_grad;
  for (const auto& [name, slot] : slots) {
    auto it = sd.find(name);
    if (it != sd.end()) slot->copy_(it->second);
  }
}

void Module::save(const std::string& path) const { save_tensors(state_dict(), path); }

void Module::load(const std::string& path, bool strict) { load_state_dict(load_tensors(path), strict); }

// ---- printing ----

namespace {
std::string with_commas(int64_t n) {
  const std::string digits = std::to_string(n);
  std::string s;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0 && digits[i - 1] != '-') s += ',';
    s += digits[i];
  }
  return s;
}
}  // namespace

std::string Module::summary() const {
  std::ostringstream os;
  os << name() << "  [" << with_commas(num_parameters()) << " parameters]\n";
  for (const auto& [path, m] : named_modules()) {
    const auto depth = std::count(path.begin(), path.end(), '.') + 1;
    int64_t own = 0;
    for (const auto& e : m->parameters_) own += e.tensor->numel();
    os << std::string(static_cast<size_t>(2 * depth), ' ') << path << ": " << m->name();
    if (own > 0) os << "  [" << with_commas(own) << "]";
    os << "\n";
  }
  return os.str();
}

}  // namespace headroom::nn
