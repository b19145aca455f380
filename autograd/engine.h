// The backward engine.
//
// backward(roots, grads) finds every node reachable from the roots, counts for each how many
// gradients it will receive, and runs a node once all of them have arrived (dependency order),
// summing gradients that fan in. After a node has run its saved tensors are released unless
// retain_graph (Note [releasing saved tensors] in node.h). Backward runs with grad mode off.
#pragma once

#include <vector>

#include "engine/tensor.h"

namespace headroom {

// Whether a backward that keeps the graph (retain_graph) is running on this thread: a
// saved-tensor hook that recomputes (autograd/checkpoint.h) then frees what it gave back after
// one use instead of caching it for the node's lifetime.
bool backward_retains_graph();

void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads, bool retain_graph);

// Gradients of outputs w.r.t. inputs without touching .grad (for gradcheck and tests).
std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs, bool retain_graph = false);

}  // namespace headroom
