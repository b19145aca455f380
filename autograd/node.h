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
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace headroom {

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

 private:
  std::string name_;
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
