#include "autograd/node.h"

#include "autograd/autograd_meta.h"
#include "autograd/functions.h"
#include "autograd/grad_mode.h"

namespace headroom {

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
    Tensor g = Tensor::empty(leaf.shape(), leaf.options());
    copy_tensor(g, grad_output.dtype() == leaf.dtype() ? grad_output : grad_output.to(leaf.dtype()));
    meta.grad = g;
  } else {
    meta.grad.add_(grad_output);
  }
  return {};
}

}  // namespace headroom
