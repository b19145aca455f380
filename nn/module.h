// Module: the base of every layer and model.
//
// A module's parameters and buffers are Tensor members of the layer itself (Linear::weight),
// and the module keeps an ordered registry of *pointers* to those members. Walking the
// registry gives names in registration order ("fc1.weight"), and because the registry points at
// the members, to(device), to(dtype) and load_state_dict change the member the layer's forward
// reads -- there is no second copy to fall out of step. Pointers into the object are why modules
// are non-copyable and live behind std::shared_ptr.
//
//   class Mlp : public nn::Module {
//    public:
//     Mlp() {
//       fc1 = register_module("fc1", std::make_shared<nn::Linear>(784, 256));
//       fc2 = register_module("fc2", std::make_shared<nn::Linear>(256, 10));
//       scale = Tensor::ones({10});
//       register_parameter("scale", &scale);       // a member: the registry points at it
//     }
//     Tensor forward(const Tensor& x) override { return fc2->forward(relu(fc1->forward(x))) * scale; }
//     std::shared_ptr<nn::Linear> fc1, fc2;
//     Tensor scale;
//   };
//
// register_parameter(name, Tensor) (no member) keeps the tensor in a slot the module owns and
// returns a reference to that slot; hold the reference (or look the tensor up by name), not a
// copy of the handle, since to() replaces what the slot holds.
//
// Memory: tensors made by to() and by the layers' constructors are tagged
// MemoryCategory::parameter (buffers too: they are model state, not activations).
#pragma once

#include <concepts>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace headroom::nn {

// Note [several inputs]
// A module whose forward takes several tensors (a bilinear layer, attention with a separate
// key) overrides forward(const std::vector<Tensor>&). The defaults cover each other:
// forward({x}) calls forward(x), so one-input modules and Sequential accept a one-element list;
// forward(x) of a module that overrides only the list form throws ValueError naming the
// module, and so does forward(list) with other than one tensor on a one-input module.

// The dtype and device a layer's parameters and buffers are made in (PyTorch's dtype= and
// device= arguments): they are created there directly, with no f32 copy on cpu:0 first.
//   nn::Linear fc(784, 256, nn::LayerOptions{.dtype = DType::bf16, .device = Device::cpu(1)});
// dtype must be floating; integer buffers (BatchNorm2d's num_batches_tracked) keep their dtype
// and follow the device.
struct LayerOptions {
  DType dtype = DType::f32;
  Device device = Device::cpu();
  // The TensorOptions for a floating parameter; DTypeError naming `layer` for a non-float dtype.
  TensorOptions tensor_options(const char* layer) const;
};

class Module {
 public:
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;
  Module(Module&&) = delete;
  Module& operator=(Module&&) = delete;

  // One input: override forward(const Tensor&). Several: override
  // forward(const std::vector<Tensor>&), and add `using Module::forward;` so that the derived
  // class still shows both (Note [several inputs]). Called as m(x), m(a, b, ...) or m({a, b}).
  virtual Tensor forward(const Tensor& x);
  virtual Tensor forward(const std::vector<Tensor>& inputs);
  Tensor operator()(const Tensor& x) { return forward(x); }
  Tensor operator()(const std::vector<Tensor>& inputs) { return forward(inputs); }
  template <typename... Rest>
  requires(sizeof...(Rest) > 0 && (std::convertible_to<const Rest&, const Tensor&> && ...)) Tensor operator()(
      const Tensor& first, const Rest&... rest) {
    return forward(std::vector<Tensor>{first, rest...});
  }

  // Depth-first in registration order: own tensors first, then each child's with its name as a
  // prefix ("0.weight", "fc1.bias"). A tensor registered under two names (tied weights) is
  // listed once, under the first.
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  std::vector<Tensor> parameters() const;
  std::vector<std::pair<std::string, Tensor>> named_buffers() const;  // e.g. "bn.running_mean"
  std::vector<Tensor> buffers() const;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_children() const;
  // Every descendant, depth-first, with its dotted path (the module itself is not listed).
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_modules() const;
  int64_t num_parameters() const;  // elements, not tensors

  // Training mode switches Dropout and BatchNorm; it propagates to every descendant.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Replaces every parameter and buffer (and a parameter's .grad) with one on `device`, in
  // place in the module. Tied tensors stay tied. An optimizer made before this holds the old
  // tensors: move the model first, then make the optimizer (as in PyTorch).
  void to(Device device);
  // Converts the floating parameters and buffers (and grads) to `dtype`; integer buffers such
  // as BatchNorm's num_batches_tracked keep theirs. Throws DTypeError for a non-float dtype.
  void to(DType dtype);
  // Drops every parameter's .grad (frees the memory, as PyTorch's set_to_none).
  void zero_grad();
  // Replaces every parameter by make(name, parameter): a tensor of the same shape, dtype and
  // device holding its values -- e.g. a view into one flat buffer of all parameters
  // (DistributedDataParallel's ZeRO stages do this). Tied parameters stay tied; requires_grad
  // carries over, .grad does not; buffers are untouched. Everything is made and checked before
  // anything is replaced (ShapeError naming the parameter otherwise). An optimizer made before
  // holds the old tensors.
  void rebind_parameters(const std::function<Tensor(const std::string& name, const Tensor& parameter)>& make);

  // Replaces every parameter and buffer by place(tensor): the same shape and dtype, on any device
  // or allocator (a device copy, a copy in the pinned host pool). Tied tensors stay tied;
  // requires_grad carries over, .grad does not. Everything is made and checked before anything is
  // replaced (ShapeError naming the tensor otherwise). nn::ParameterStreamer (nn/offload.h) moves
  // layers between the host pool and a device with it.
  void place_tensors(const std::function<Tensor(const Tensor&)>& place);

  // Parameters and buffers by dotted name, detached (same storage, no history).
  std::map<std::string, Tensor> state_dict() const;
  // Copies each entry into the existing tensor (under NoGradGuard, so identity is kept and
  // optimizers holding the tensors go on working). Every entry is checked before anything is
  // written: a shape mismatch throws ShapeError and a dtype mismatch DTypeError, naming the key
  // and both shapes/dtypes. With strict, missing and unexpected keys throw ValueError listing
  // them by name; without, they are ignored.
  void load_state_dict(const std::map<std::string, Tensor>& sd, bool strict = true);
  // state_dict() to / from a file in the nn/serialize.h format (versioned, checksummed).
  void save(const std::string& path) const;
  void load(const std::string& path, bool strict = true);

  virtual std::string name() const { return "Module"; }  // "Linear(784, 256)"
  // An indented tree of names with parameter counts, for printing a model.
  std::string summary() const;

 protected:
  Module() = default;

  // Registers a tensor kept in a slot owned by the module; returns the slot. Sets
  // requires_grad on the parameter (it must be a floating tensor).
  Tensor& register_parameter(const std::string& name, Tensor t);
  // Registers a Tensor member of the layer (already holding its initial value).
  Tensor& register_parameter(const std::string& name, Tensor* member);
  // Buffers: state that is saved and moved with the module but not trained.
  Tensor& register_buffer(const std::string& name, Tensor t);
  Tensor& register_buffer(const std::string& name, Tensor* member);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    add_child(name, m);
    return m;
  }

 private:
  struct Entry {
    std::string name;
    Tensor* tensor;
  };
  void add_child(const std::string& name, std::shared_ptr<Module> m);
  void check_new_name(const std::string& name, const char* what) const;
  // Calls f(full_name, tensor_slot, is_parameter) on every registered tensor of the tree.
  void for_each_tensor(const std::string& prefix,
                       const std::function<void(const std::string&, Tensor&, bool)>& f) const;
  void collect_modules(const std::string& prefix,
                       std::vector<std::pair<std::string, std::shared_ptr<Module>>>& out) const;
  // Replaces each registered tensor by convert(tensor) (tied tensors converted once).
  void replace_tensors(const std::function<Tensor(const Tensor&)>& convert);

  std::vector<Entry> parameters_;
  std::vector<Entry> buffers_;
  std::deque<Tensor> owned_;  // slots for tensors registered without a member; deque: stable addresses
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

}  // namespace headroom::nn
