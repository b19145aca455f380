// The backward engine.
//
// backward(roots, grads) finds every node reachable from the roots, counts for each how many
// gradients it will receive, and runs a node once all of them have arrived (dependency order),
// summing gradients that fan in. After a node has run its saved tensors are released unless
// retain_graph (Note [releasing saved tensors] in node.h). Backward runs with grad mode off.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "engine/tensor.h"

namespace headroom {

// Whether a backward that keeps the graph (retain_graph) is running on this thread: a
// saved-tensor hook that recomputes (autograd/checkpoint.h) then frees what it gave back after
// one use instead of caching it for the node's lifetime.
bool backward_retains_graph();

void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads, bool retain_graph);

// Note [backward callbacks]: queue_backward_callback(fn), called while a backward runs on this
// thread (from a hook), runs fn once that backward has run every node, before it returns --
// in the order queued, on this thread, with grad mode off. It is where work started by hooks
// during backward is finished (DDP waits there for the all-reduces its gradient hooks
// started). A callback may throw; the backward then throws it. If a node throws first, the
// queued callbacks are dropped. Outside a backward it is an AutogradError. grad() runs none.
void queue_backward_callback(std::function<void()> fn);
// Whether a backward (run_backward, not grad()) is running on this thread.
bool backward_running();
// A number unique to the innermost backward running on this thread (run_backward, not
// grad()), 0 when none: tells one backward from the next.
uint64_t current_backward_id();

// Gradients of outputs w.r.t. inputs without touching .grad (for gradcheck and tests).
std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs, bool retain_graph = false);

}  // namespace headroom
