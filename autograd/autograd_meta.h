// The autograd state of a tensor, hung off TensorImpl::autograd (engine/tensor.h).
#pragma once

#include <functional>
#include <memory>

#include "autograd/node.h"
#include "engine/tensor.h"

namespace headroom {

struct AutogradMeta {
  bool requires_grad = false;
  Tensor grad;                               // leaves only
  std::shared_ptr<Node> grad_fn;             // non-leaves: the node that made this tensor
  std::weak_ptr<Node> grad_accumulator;      // leaves: made on first use, shared by uses
  std::shared_ptr<Node> hooked_accumulator;  // leaves with a register_hook: kept alive for it
  // Leaves: Note [post-accumulate-gradient hooks] in autograd/hooks.h.
  std::shared_ptr<HookList<std::function<void(const Tensor&)>>> post_accumulate_hooks;
  // Leaves: Note [gradient slots] in autograd/hooks.h (empty: .grad gets memory of its own).
  std::function<Tensor(const Tensor&)> grad_slot;
};

// The meta of t, made if absent.
AutogradMeta& autograd_meta(const Tensor& t);
// The node a gradient for t flows into: grad_fn, a (cached) AccumulateGrad for a leaf that
// requires grad, or null.
std::shared_ptr<Node> gradient_edge(const Tensor& t);

}  // namespace headroom
