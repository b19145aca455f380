// clip_grad_norm_: per-device partial sums kept on the device, one host transfer per device; the
// parallel GPTs' overloads sort their parameters into what counts once and what is summed.
#include "optim/clip.h"

#include <cmath>
#include <utility>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "dist/process_group.h"
#include "nn/parallel/gpt_parallel.h"

namespace headroom::optim {

namespace {
// Scales every grad of `params` by max_norm / (norm + 1e-6) when that is below 1; a non-finite
// norm leaves them alone. Returns `norm`.
double scale_to(const std::vector<Tensor>& params, double norm, double max_norm) {
  if (!std::isfinite(norm)) return norm;
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    NoGradGuard no_grad;
    for (const auto& p : params)
      if (Tensor g = p.grad(); g.defined()) g.mul_(coef);
  }
  return norm;
}
}  // namespace

double grad_norm(const std::vector<Tensor>& params) {
  NoGradGuard no_grad;
  std::vector<std::pair<Device, Tensor>> per_device;  // running f64 sum of squares
  for (const auto& p : params) {
    HR_CHECK(p.defined(), ValueError, "clip_grad_norm_: undefined parameter in the list");
    const Tensor g = p.grad();
    if (!g.defined() || g.numel() == 0) continue;
    const DType acc = g.dtype() == DType::f64 ? DType::f64 : DType::f32;
    Tensor sq = cast(sum(square(cast(g, acc))), DType::f64);
    auto it = per_device.begin();
    while (it != per_device.end() && !(it->first == g.device())) ++it;
    if (it == per_device.end()) {
      per_device.emplace_back(g.device(), sq);
    } else {
      it->second = it->second + sq;
    }
  }
  double total = 0.0;
  for (const auto& [device, sq] : per_device) total += sq.item<double>();
  return std::sqrt(total);
}

double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm) {
  HR_CHECK(max_norm >= 0, ValueError, "clip_grad_norm_: max_norm must be >= 0, got ", max_norm);
  return scale_to(params, grad_norm(params), max_norm);
}

double clip_grad_norm_(const std::vector<std::shared_ptr<nn::GPTStage>>& stages, double max_norm) {
  HR_CHECK(max_norm >= 0, ValueError, "clip_grad_norm_: max_norm must be >= 0, got ", max_norm);
  std::vector<Tensor> once, all;
  for (const auto& st : stages)
    for (const Tensor& p : st->parameters()) {
      all.push_back(p);
      if (!(st->head.defined() && p.is_same(st->head))) once.push_back(p);
    }
  return scale_to(all, grad_norm(once), max_norm);
}

double clip_grad_norm_(nn::TensorParallelGPT& model, double max_norm, dist::ProcessGroup& group) {
  HR_CHECK(max_norm >= 0, ValueError, "clip_grad_norm_: max_norm must be >= 0, got ", max_norm);
  std::vector<Tensor> sharded, replicated;
  for (const auto& b : model.blocks) {
    for (const Tensor& p : b->attn->parameters()) sharded.push_back(p);
    for (const Tensor& p : b->mlp->parameters()) sharded.push_back(p);
  }
  // The row-parallel layers' biases are whole on every rank: replicated, not sharded.
  std::vector<Tensor> sharded_only;
  for (const Tensor& p : sharded) {
    bool whole = false;
    for (const auto& b : model.blocks)
      whole = whole || p.is_same(b->attn->c_proj->bias) || p.is_same(b->mlp->proj->bias);
    (whole ? replicated : sharded_only).push_back(p);
  }
  const std::vector<Tensor> params = model.parameters();
  for (const Tensor& p : params) {
    bool listed = false;
    for (const Tensor& q : sharded) listed = listed || p.is_same(q);
    if (!listed) replicated.push_back(p);
  }
  const double shard = grad_norm(sharded_only);
  const double whole = grad_norm(replicated);
  Tensor sq = Tensor::full({1}, shard * shard, TensorOptions().dtype(DType::f64).device(model.wte->weight.device()));
  group.all_reduce(sq)->wait();
  return scale_to(params, std::sqrt(sq.to(Device::cpu()).item<double>() + whole * whole), max_norm);
}

}  // namespace headroom::optim
