#include "autograd/function.h"

#include "autograd/functions.h"
#include "autograd/hooks.h"
#include "engine/allocator.h"

namespace headroom {

namespace {
template <typename It>
bool any_requires_grad(It begin, It end) {
  if (!GradMode::is_enabled()) return false;
  for (It it = begin; it != end; ++it)
    if (it->defined() && it->requires_grad()) return true;
  return false;
}
}  // namespace

bool needs_grad(std::initializer_list<Tensor> inputs) { return any_requires_grad(inputs.begin(), inputs.end()); }
bool needs_grad(const std::vector<Tensor>& inputs) { return any_requires_grad(inputs.begin(), inputs.end()); }

void record(const char* name, const Tensor& out, const std::vector<Tensor>& inputs, BackwardFn fn) {
  auto node = std::make_shared<FunctionNode>(name, std::move(fn));
  node->next.reserve(inputs.size());
  for (const auto& t : inputs) node->next.push_back(t.defined() && t.requires_grad() ? gradient_edge(t) : nullptr);
  node->output_shape = out.shape();
  node->output_dtype = out.dtype();
  node->output_device = out.device();
  AutogradMeta& meta = autograd_meta(out);
  meta.grad_fn = node;
  meta.requires_grad = true;
  OnNodeRecorded::notify(node);
  // Note [allocation sites]: a leak check names what grows by the op that made it.
  if (allocation_sites_wanted() && out.storage() && out.storage()->allocator())
    out.storage()->allocator()->set_site(out.storage()->allocation(), name);
}

void record(const char* name, const Tensor& out, std::initializer_list<Tensor> inputs, BackwardFn fn) {
  record(name, out, std::vector<Tensor>(inputs), std::move(fn));
}

namespace {
std::vector<const NodeRecordedHook*>& node_recorded_hooks() {
  thread_local std::vector<const NodeRecordedHook*> hooks;
  return hooks;
}
}  // namespace

OnNodeRecorded::OnNodeRecorded(NodeRecordedHook fn) : fn_(std::move(fn)) {
  HR_CHECK(fn_, ValueError, "OnNodeRecorded: the hook is empty");
  node_recorded_hooks().push_back(&fn_);
}
OnNodeRecorded::~OnNodeRecorded() { std::erase(node_recorded_hooks(), &fn_); }

void OnNodeRecorded::notify(const std::shared_ptr<Node>& node) {
  auto& hooks = node_recorded_hooks();
  if (hooks.empty()) return;
  const std::vector<const NodeRecordedHook*> now = hooks;  // a hook may open or close a scope
  for (const NodeRecordedHook* h : now) (*h)(node);
}

Tensor sum_to(const Tensor& grad, const Shape& shape) {
  if (grad.shape() == shape) return grad;
  const int64_t lead = grad.dim() - static_cast<int64_t>(shape.size());
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < grad.dim(); ++d)
    if (d < lead || (shape[static_cast<size_t>(d - lead)] == 1 && grad.size(d) != 1)) dims.push_back(d);
  Tensor s = dims.empty() ? grad : sum(grad, dims, true);
  return s.reshape(shape);
}

}  // namespace headroom
