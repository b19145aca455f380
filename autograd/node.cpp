#include "autograd/node.h"

#include "autograd/autograd_meta.h"
#include "autograd/functions.h"
#include "autograd/grad_mode.h"

namespace headroom {

HookHandle Node::add_pre_hook(NodePreHook hook) {
  HR_CHECK(hook, ValueError, "add_pre_hook on ", name_, ": the hook is empty");
  if (!pre_hooks_) pre_hooks_ = std::make_shared<HookList<NodePreHook>>();
  return HookList<NodePreHook>::add(pre_hooks_, std::move(hook));
}

HookHandle Node::add_post_hook(NodePostHook hook) {
  HR_CHECK(hook, ValueError, "add_post_hook on ", name_, ": the hook is empty");
  if (!post_hooks_) post_hooks_ = std::make_shared<HookList<NodePostHook>>();
  return HookList<NodePostHook>::add(post_hooks_, std::move(hook));
}

std::vector<Tensor> Node::run(const Tensor& grad_output) {
  Tensor g = grad_output;
  if (pre_hooks_ && !pre_hooks_->empty()) {
    int i = 0;
    for (const NodePreHook& hook : pre_hooks_->hooks()) {
      Tensor r = hook(g);
      if (r.defined()) {
        HR_CHECK(r.shape() == g.shape() && r.device() == g.device() && r.dtype() == g.dtype(), ShapeError, "pre-hook ",
                 i, " of ", name_, " replaced the gradient of its output, ", describe(g), ", with ", describe(r),
                 ": a hook must keep the shape, dtype and device");
        g = r;
      }
      ++i;
    }
  }
  std::vector<Tensor> grads = apply(g);
  if (post_hooks_ && !post_hooks_->empty()) {
    int i = 0;
    for (const NodePostHook& hook : post_hooks_->hooks()) {
      std::vector<Tensor> r = hook(grads, g);
      if (!r.empty()) {
        HR_CHECK(r.size() == next.size(), ShapeError, "post-hook ", i, " of ", name_, " returned ", r.size(),
                 " gradients for ", next.size(), " inputs");
        for (size_t k = 0; k < r.size(); ++k) {
          if (!r[k].defined() || !next[k]) continue;
          HR_CHECK(r[k].shape() == next[k]->output_shape && r[k].device() == next[k]->output_device, ShapeError,
                   "post-hook ", i, " of ", name_, " returned ", describe(r[k]), " as the gradient of input ", k,
                   ", which is ", shape_str(next[k]->output_shape), " on ", next[k]->output_device.str(),
                   ": a hook must keep the shape and device");
        }
        grads = std::move(r);
      }
      ++i;
    }
  }
  return grads;
}

std::vector<Tensor> FunctionNode::apply(const Tensor& grad_output) {
  if (!fn_)
    throw AutogradError(str_cat("backward through ", name(),
                                " a second time: its saved tensors were already freed. Pass "
                                "retain_graph=true to the first backward if you need a second."));
  return fn_(grad_output);
}

std::vector<Tensor> AccumulateGrad::apply(const Tensor& grad_output) {
  auto impl = leaf_.lock();
  if (!impl) return {};
  Tensor leaf(impl);
  AutogradMeta& meta = autograd_meta(leaf);
  NoGradGuard no_grad;
  if (!meta.grad.defined()) {
    // Own the memory: the incoming gradient may be a view of, or shared with, another buffer.
    // A slot gives the memory instead (Note [gradient slots]).
    Tensor g;
    if (meta.grad_slot) {
      g = meta.grad_slot(leaf);
      HR_CHECK(g.defined() && g.shape() == leaf.shape() && g.dtype() == leaf.dtype() && g.device() == leaf.device(),
               ShapeError, "the gradient slot of a leaf ", describe(leaf), " gave ",
               g.defined() ? describe(g) : std::string("an undefined tensor"),
               ": a slot must give the leaf's shape, dtype and device");
    } else {
      g = Tensor::empty(leaf.shape(), leaf.options());
    }
    copy_tensor(g, grad_output.dtype() == leaf.dtype() ? grad_output : grad_output.to(leaf.dtype()));
    meta.grad = g;
  } else {
    meta.grad.add_(grad_output);
  }
  // Note [post-accumulate-gradient hooks] (autograd/hooks.h): .grad holds this backward's sum.
  if (meta.post_accumulate_hooks && !meta.post_accumulate_hooks->empty()) {
    for (const auto& hook : meta.post_accumulate_hooks->hooks()) {
      hook(leaf);
      const Tensor& g = meta.grad;
      HR_CHECK(!g.defined() || (g.shape() == leaf.shape() && g.device() == leaf.device()), ShapeError,
               "a post-accumulate-gradient hook left .grad as ", describe(g), " on a leaf of shape ",
               shape_str(leaf.shape()), " on ", leaf.device().str(), ": a hook must keep the shape and device");
    }
  }
  return {};
}

}  // namespace headroom
