#include "autograd/engine.h"

#include <atomic>
#include <deque>
#include <unordered_map>

#include "autograd/autograd_meta.h"
#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "engine/memory.h"

namespace headroom {

namespace {

thread_local int retaining_depth = 0;  // backward passes with retain_graph running on this thread
// The callback lists of the backwards running on this thread, innermost last (Note [backward
// callbacks]); a backward run by grad() has none.
struct CallbackScope;
thread_local std::vector<CallbackScope*> callback_stack;
std::atomic<uint64_t> next_backward_id{1};

struct CallbackScope {
  std::vector<std::function<void()>> callbacks;
  bool active;
  uint64_t id = 0;
  explicit CallbackScope(bool on) : active(on) {
    if (active) {
      id = next_backward_id.fetch_add(1);
      callback_stack.push_back(this);
    }
  }
  ~CallbackScope() {
    if (active) callback_stack.pop_back();
  }
  // Runs them in order; a callback may queue another, which runs after it.
  void run() {
    for (size_t i = 0; i < callbacks.size(); ++i) {
      std::function<void()> fn = std::move(callbacks[i]);
      fn();
    }
    callbacks.clear();
  }
};

struct RetainScope {
  bool retain;
  explicit RetainScope(bool r) : retain(r) {
    if (retain) ++retaining_depth;
  }
  ~RetainScope() {
    if (retain) --retaining_depth;
  }
};

void accumulate(std::unordered_map<Node*, Tensor>& buffer, Node* node, const Tensor& g) {
  auto it = buffer.find(node);
  if (it == buffer.end() || !it->second.defined()) {
    buffer[node] = g;
  } else {
    it->second = it->second + g;  // out of place: g may be shared with another consumer
  }
}

// capture: when non-null, the gradients reaching these nodes are stored in `captured` and no
// AccumulateGrad runs (.grad stays untouched).
void execute(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads, bool retain_graph,
             const std::unordered_map<Node*, size_t>* capture, std::vector<Tensor>* captured) {
  HR_CHECK(roots.size() == grads.size(), ValueError, "backward: ", roots.size(), " outputs but ", grads.size(),
           " gradients");
  // 1. Count, for every reachable node, the edges that point at it.
  std::unordered_map<Node*, int> deps;
  std::vector<Node*> stack;
  std::unordered_map<Node*, bool> seen;
  std::vector<std::shared_ptr<Node>> root_nodes;
  for (size_t i = 0; i < roots.size(); ++i) {
    auto node = gradient_edge(roots[i]);
    HR_CHECK(node, AutogradError, "backward: output ", i, " (", describe(roots[i]), ") does not require grad");
    HR_CHECK(grads[i].shape() == roots[i].shape(), ShapeError, "backward: gradient shape ", shape_str(grads[i].shape()),
             " differs from output shape ", shape_str(roots[i].shape()));
    root_nodes.push_back(node);
    if (!seen[node.get()]) {
      seen[node.get()] = true;
      stack.push_back(node.get());
    }
  }
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (auto& next : n->next) {
      if (!next) continue;
      ++deps[next.get()];
      if (!seen[next.get()]) {
        seen[next.get()] = true;
        stack.push_back(next.get());
      }
    }
  }
  // 2. Run nodes as their last gradient arrives.
  NoGradGuard no_grad;
  RetainScope retain(retain_graph);
  CategoryScope gradients(MemoryCategory::gradient);  // what backward allocates is gradient
  CallbackScope callbacks(capture == nullptr);
  std::unordered_map<Node*, Tensor> buffer;
  std::deque<std::shared_ptr<Node>> ready;
  for (size_t i = 0; i < roots.size(); ++i) accumulate(buffer, root_nodes[i].get(), grads[i]);
  for (auto& node : root_nodes)
    if (deps[node.get()] == 0 && std::find(ready.begin(), ready.end(), node) == ready.end()) ready.push_back(node);
  while (!ready.empty()) {
    std::shared_ptr<Node> node = ready.front();
    ready.pop_front();
    Tensor g = std::move(buffer[node.get()]);
    buffer.erase(node.get());
    if (capture) {
      auto it = capture->find(node.get());
      if (it != capture->end()) (*captured)[it->second] = g;
      if (dynamic_cast<AccumulateGrad*>(node.get())) continue;
    }
    std::vector<Tensor> input_grads = node->run(g);  // apply inside its hooks (Note [node hooks])
    if (!retain_graph) node->release_saved();
    g = Tensor();
    HR_CHECK(input_grads.empty() || input_grads.size() == node->next.size(), AutogradError, "backward of ",
             node->name(), " returned ", input_grads.size(), " gradients for ", node->next.size(), " inputs");
    for (size_t i = 0; i < node->next.size(); ++i) {
      const auto& next = node->next[i];
      if (!next) continue;
      if (i < input_grads.size() && input_grads[i].defined()) {
        Tensor gi = input_grads[i];
        HR_CHECK(gi.shape() == next->output_shape, ShapeError, "backward of ", node->name(),
                 " returned a gradient of shape ", shape_str(gi.shape()), " for input ", i, " of shape ",
                 shape_str(next->output_shape));
        if (gi.dtype() != next->output_dtype) gi = gi.to(next->output_dtype);
        accumulate(buffer, next.get(), gi);
      }
      if (--deps[next.get()] == 0) {
        if (buffer.count(next.get()) && buffer[next.get()].defined()) ready.push_back(next);
        else buffer.erase(next.get());  // nothing flowed in: the branch gets no gradient
      }
    }
  }
  callbacks.run();
}

}  // namespace

bool backward_retains_graph() { return retaining_depth > 0; }

void queue_backward_callback(std::function<void()> fn) {
  HR_CHECK(fn, ValueError, "queue_backward_callback: the callback is empty");
  HR_CHECK(!callback_stack.empty(), AutogradError,
           "queue_backward_callback: no backward is running on this thread (call it from a hook)");
  callback_stack.back()->callbacks.push_back(std::move(fn));
}

bool backward_running() { return !callback_stack.empty(); }

uint64_t current_backward_id() { return callback_stack.empty() ? 0 : callback_stack.back()->id; }

void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads, bool retain_graph) {
  execute(roots, grads, retain_graph, nullptr, nullptr);
}

std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs, bool retain_graph) {
  std::unordered_map<Node*, size_t> capture;
  std::vector<std::shared_ptr<Node>> keep;
  for (size_t i = 0; i < inputs.size(); ++i) {
    auto node = gradient_edge(inputs[i]);
    HR_CHECK(node, AutogradError, "grad: input ", i, " (", describe(inputs[i]), ") does not require grad");
    capture[node.get()] = i;
    keep.push_back(node);
  }
  std::vector<Tensor> gos = grad_outputs;
  if (gos.empty())
    for (const auto& o : outputs) {
      HR_CHECK(o.numel() == 1, AutogradError, "grad: output of shape ", shape_str(o.shape()),
               " needs an explicit gradient");
      gos.push_back(Tensor::ones(o.shape(), o.options()));
    }
  std::vector<Tensor> result(inputs.size());
  execute(outputs, gos, retain_graph, &capture, &result);
  return result;
}

}  // namespace headroom
