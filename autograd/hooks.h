// Hook points of autograd, in one include:
//   - saved-tensor hooks: SavedTensorHooks (autograd/saved_tensor.h, Note [saved-tensor hooks]);
//   - node pre/post hooks: Node::add_pre_hook / add_post_hook on t.grad_fn() (autograd/node.h,
//     Note [node hooks]);
//   - gradient hooks on a tensor (register_hook), below: the gradient flowing into t, seen and
//     optionally replaced -- a pre-hook of the node t's gradient goes to (its grad_fn, or a
//     leaf's AccumulateGrad), so it runs once per backward with the summed gradient of t;
//   - post-accumulate-gradient hooks on a leaf, below;
//   - gradient slots on a leaf (where its .grad lives), below;
//   - callbacks at the end of a backward (queue_backward_callback, autograd/engine.h);
//   - node-recorded hooks, below: every node an op records, as it is recorded.
//
// Note [node-recorded hooks]: within an OnNodeRecorded scope, fn(node) is called for every node
// an op records on this thread (after the node became its output's grad_fn), outermost scope
// first. It is the joint for work that wants to attach itself to the graph as forward builds it
// without the op's help -- activation offload (autograd/offload.h) puts a pre-hook on each node
// that saved an offloaded tensor, so that backward prefetches ahead of that node. Scopes nest
// and are thread-local, like saved-tensor hooks; fn must not record nodes itself.
//
// Note [post-accumulate-gradient hooks]: register_post_accumulate_grad_hook(leaf, fn) calls
// fn(leaf) in the leaf's AccumulateGrad node right after this backward's gradient was added
// into leaf.grad(): each backward that reaches the leaf calls it once, when every gradient of
// that backward has been summed (the engine runs a node only once all of its inputs have
// arrived). It is the joint for work that wants a gradient as soon as it is final -- an
// all-reduce overlapped with the rest of backward (DDP), a gradient copied to the host
// (offload), a per-parameter optimizer step. The hook may change .grad in place or set_grad a
// tensor of the same shape and device (anything else is a ShapeError naming the leaf); it runs
// with grad mode off. grad() (autograd/engine.h) touches no .grad and so calls no such hook.
//
// Note [gradient slots]: set_grad_slot(leaf, slot) decides where the leaf's gradient lives.
// When a backward reaches the leaf and its .grad is undefined (the first backward, or after
// zero_grad), AccumulateGrad calls slot(leaf) for the tensor to hold it -- the leaf's shape,
// dtype and device, or a ShapeError naming the leaf -- writes this backward's gradient into it
// and makes it .grad; later backwards add into it in place, as always. No other memory is
// allocated for the gradient. It is how DistributedDataParallel makes each gradient a view into
// its communication bucket (nn/parallel/ddp.h), and the joint for gradients kept in any flat
// buffer (sharded or offloaded). An empty slot restores the default (memory of its own).
#pragma once

#include <functional>

#include "autograd/node.h"
#include "autograd/saved_tensor.h"
#include "engine/tensor.h"

namespace headroom {

using PostAccumulateGradHook = std::function<void(const Tensor& leaf)>;

// Calls hook(grad) with the gradient of t (summed over its uses) each backward that reaches
// it; a defined return replaces that gradient (same shape, dtype and device; ShapeError
// otherwise). t must require grad (AutogradError otherwise).
HookHandle register_hook(const Tensor& t, NodePreHook hook);

// leaf must be a leaf that requires grad (AutogradError otherwise).
HookHandle register_post_accumulate_grad_hook(const Tensor& leaf, PostAccumulateGradHook hook);

using NodeRecordedHook = std::function<void(const std::shared_ptr<Node>& node)>;
// Note [node-recorded hooks].
class OnNodeRecorded {
 public:
  explicit OnNodeRecorded(NodeRecordedHook fn);
  ~OnNodeRecorded();
  OnNodeRecorded(const OnNodeRecorded&) = delete;
  OnNodeRecorded& operator=(const OnNodeRecorded&) = delete;
  // Calls the active scopes' hooks with `node` (what record() does).
  static void notify(const std::shared_ptr<Node>& node);

 private:
  NodeRecordedHook fn_;
};

using GradSlot = std::function<Tensor(const Tensor& leaf)>;
// Note [gradient slots]. leaf must be a leaf that requires grad (AutogradError otherwise).
void set_grad_slot(const Tensor& leaf, GradSlot slot);

}  // namespace headroom
