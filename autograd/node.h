// The backward graph.
//
// Each op that records history makes one Node: its name (for error messages), the edges to the
// nodes that produced its inputs (null for inputs that need no gradient), and a closure that
// maps the gradient of its output to gradients of its inputs. A leaf that requires grad has an
// AccumulateGrad node that adds into .grad.
//
// Note [releasing saved tensors]: the closure owns what the op saved for backward (as
// SavedTensor). The engine destroys the closure right after running it unless retain_graph,
// so activations are freed as backward walks past them, not when the whole graph dies. A second
// backward through a released node throws.
//
// Note [node hooks]: a node runs its pre-hooks on the gradient of its output before apply, in
// the order they were added (each may return a replacement gradient, or an undefined tensor to
// keep it), and its post-hooks after apply on the gradients it produced (each may return
// replacements, one per input, or nothing to keep them). A pre-hook's replacement must have the
// shape, dtype and device of what it replaces, a post-hook's the shape and device of its input; anything else is a ShapeError naming the node and the hook,
// never a gradient of the wrong shape flowing on. Hooks see no grad mode and allocate as
// gradient memory, like the node. A leaf's post-accumulate-gradient hooks (autograd/hooks.h)
// run in its AccumulateGrad node once its .grad holds this backward's sum.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace headroom {

// Removes the hook it was returned for; removing twice, or after the node or tensor is gone,
// does nothing. Dropping the handle keeps the hook.
class HookHandle {
 public:
  HookHandle() = default;
  explicit HookHandle(std::function<void()> remove) : remove_(std::move(remove)) {}
  void remove() {
    if (remove_) std::exchange(remove_, nullptr)();
  }

 private:
  std::function<void()> remove_;
};

// Hooks in the order they were added, each with an id its handle removes.
template <typename Fn>
class HookList {
 public:
  static HookHandle add(const std::shared_ptr<HookList>& list, Fn fn) {
    const uint64_t id = list->next_id_++;
    list->hooks_.emplace_back(id, std::move(fn));
    return HookHandle([weak = std::weak_ptr<HookList>(list), id] {
      if (auto l = weak.lock()) std::erase_if(l->hooks_, [id](const auto& h) { return h.first == id; });
    });
  }
  // A copy, so that a hook may remove itself or add another while they run.
  std::vector<Fn> hooks() const {
    std::vector<Fn> out;
    out.reserve(hooks_.size());
    for (const auto& h : hooks_) out.push_back(h.second);
    return out;
  }
  bool empty() const { return hooks_.empty(); }

 private:
  std::vector<std::pair<uint64_t, Fn>> hooks_;
  uint64_t next_id_ = 0;
};

// Pre-hook: the gradient of the node's output in, a replacement (or undefined) out.
using NodePreHook = std::function<Tensor(const Tensor& grad_output)>;
// Post-hook: the gradients the node produced (one per input, undefined where none) and the
// gradient it got; replacements out, or an empty vector to keep them.
using NodePostHook =
    std::function<std::vector<Tensor>(const std::vector<Tensor>& grad_inputs, const Tensor& grad_output)>;

class Node {
 public:
  explicit Node(std::string name) : name_(std::move(name)) {}
  virtual ~Node() = default;
  const std::string& name() const { return name_; }
  // One entry per input of the op: the node its gradient flows to, or null.
  std::vector<std::shared_ptr<Node>> next;
  // Gradients for each input (undefined where none flows), given the output's gradient.
  virtual std::vector<Tensor> apply(const Tensor& grad_output) = 0;
  virtual void release_saved() {}
  // Shape and dtype of the output, so the engine can check what a backward returned.
  Shape output_shape;
  DType output_dtype = DType::f32;
  Device output_device = Device::cpu();

  // Note [node hooks].
  HookHandle add_pre_hook(NodePreHook hook);
  HookHandle add_post_hook(NodePostHook hook);
  // apply with the hooks around it, and their results checked (what the engine calls).
  std::vector<Tensor> run(const Tensor& grad_output);

 private:
  std::string name_;
  std::shared_ptr<HookList<NodePreHook>> pre_hooks_;
  std::shared_ptr<HookList<NodePostHook>> post_hooks_;
};

using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output)>;

class FunctionNode final : public Node {
 public:
  FunctionNode(std::string name, BackwardFn fn) : Node(std::move(name)), fn_(std::move(fn)) {}
  std::vector<Tensor> apply(const Tensor& grad_output) override;
  void release_saved() override { fn_ = nullptr; }

 private:
  BackwardFn fn_;
};

class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(std::weak_ptr<TensorImpl> leaf) : Node("AccumulateGrad"), leaf_(std::move(leaf)) {}
  std::vector<Tensor> apply(const Tensor& grad_output) override;

 private:
  std::weak_ptr<TensorImpl> leaf_;
};

}  // namespace headroom
