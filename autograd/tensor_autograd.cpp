// The autograd members of Tensor (declared in engine/tensor.h) and the meta slot.
#include "autograd/autograd_meta.h"
#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "autograd/hooks.h"

namespace headroom {

AutogradMeta& autograd_meta(const Tensor& t) {
  TensorImpl* impl = t.impl();
  if (!impl) throw Error("autograd: use of an undefined tensor");
  if (!impl->autograd) impl->autograd = std::make_shared<AutogradMeta>();
  return *impl->autograd;
}

std::shared_ptr<Node> gradient_edge(const Tensor& t) {
  if (!t.defined() || !t.impl()->autograd) return nullptr;
  AutogradMeta& meta = *t.impl()->autograd;
  if (meta.grad_fn) return meta.grad_fn;
  if (!meta.requires_grad) return nullptr;
  auto acc = meta.grad_accumulator.lock();
  if (!acc) {
    acc = std::make_shared<AccumulateGrad>(t.impl_ptr());
    acc->output_shape = t.shape();
    acc->output_dtype = t.dtype();
    acc->output_device = t.device();
    meta.grad_accumulator = acc;
  }
  return acc;
}

bool Tensor::requires_grad() const {
  return defined() && impl()->autograd && (impl()->autograd->requires_grad || impl()->autograd->grad_fn);
}

Tensor& Tensor::set_requires_grad(bool requires_grad) {
  AutogradMeta& meta = autograd_meta(*this);
  HR_CHECK(!meta.grad_fn || requires_grad, AutogradError, "set_requires_grad(false) on a non-leaf tensor (made by ",
           meta.grad_fn->name(), "): use detach() instead");
  HR_CHECK(!requires_grad || is_floating(dtype()), DTypeError, "only floating tensors can require grad, this one is ",
           dtype_name(dtype()));
  meta.requires_grad = requires_grad;
  return *this;
}

Tensor Tensor::grad() const {
  if (!defined() || !impl()->autograd) return {};
  return impl()->autograd->grad;
}

void Tensor::set_grad(const Tensor& grad) const {
  if (grad.defined())
    HR_CHECK(grad.shape() == shape(), ShapeError, "set_grad: gradient shape ", shape_str(grad.shape()),
             " differs from tensor shape ", shape_str(shape()));
  autograd_meta(*this).grad = grad;
}

void Tensor::zero_grad() const {
  if (defined() && impl()->autograd) impl()->autograd->grad = Tensor();
}

bool Tensor::is_leaf() const { return !defined() || !impl()->autograd || !impl()->autograd->grad_fn; }

std::shared_ptr<Node> Tensor::grad_fn() const {
  if (!defined() || !impl()->autograd) return nullptr;
  return impl()->autograd->grad_fn;
}

void Tensor::backward(const Tensor& gradient, bool retain_graph) const {
  HR_CHECK(requires_grad(), AutogradError, "backward() on a tensor that does not require grad (", describe(*this),
           "): no input of the ops that made it requires grad, or it was made under no_grad");
  Tensor g = gradient;
  if (!g.defined()) {
    HR_CHECK(numel() == 1, AutogradError, "backward() without a gradient needs a one-element output, got shape ",
             shape_str(shape()), "; pass a gradient of that shape");
    g = Tensor::ones(shape(), options());
  }
  run_backward({*this}, {g}, retain_graph);
}

Tensor Tensor::detach() const {
  Tensor out = as_strided(shape(), strides(), offset());
  return out;
}

}  // namespace headroom

namespace headroom {

HookHandle register_hook(const Tensor& t, NodePreHook hook) {
  HR_CHECK(hook, ValueError, "register_hook: the hook is empty");
  HR_CHECK(t.defined() && t.requires_grad(), AutogradError, "register_hook needs a tensor that requires grad, got ",
           t.defined() ? describe(t) : std::string("an undefined tensor"));
  // A leaf's AccumulateGrad is held weakly by the leaf: the hook keeps it alive, so that the
  // node that carries the hook is the one later backwards use.
  std::shared_ptr<Node> node = gradient_edge(t);
  HookHandle h = node->add_pre_hook(std::move(hook));
  if (t.is_leaf()) autograd_meta(t).hooked_accumulator = node;
  return h;
}

HookHandle register_post_accumulate_grad_hook(const Tensor& leaf, PostAccumulateGradHook hook) {
  HR_CHECK(hook, ValueError, "register_post_accumulate_grad_hook: the hook is empty");
  HR_CHECK(leaf.defined() && leaf.requires_grad() && leaf.is_leaf(), AutogradError,
           "register_post_accumulate_grad_hook needs a leaf that requires grad, got ",
           leaf.defined() ? describe(leaf) : std::string("an undefined tensor"),
           leaf.defined() && !leaf.is_leaf() ? str_cat(" made by ", leaf.grad_fn()->name()) : std::string());
  AutogradMeta& meta = autograd_meta(leaf);
  using List = HookList<PostAccumulateGradHook>;
  if (!meta.post_accumulate_hooks) meta.post_accumulate_hooks = std::make_shared<List>();
  return List::add(meta.post_accumulate_hooks, std::move(hook));
}

void set_grad_slot(const Tensor& leaf, GradSlot slot) {
  HR_CHECK(leaf.defined() && leaf.requires_grad() && leaf.is_leaf(), AutogradError,
           "set_grad_slot needs a leaf that requires grad, got ",
           leaf.defined() ? describe(leaf) : std::string("an undefined tensor"));
  autograd_meta(leaf).grad_slot = std::move(slot);
}

}  // namespace headroom
