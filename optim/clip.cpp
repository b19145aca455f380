// clip_grad_norm_: per-device partial sums kept on the device, one host transfer per device.
#include "optim/clip.h"

#include <cmath>
#include <utility>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"

namespace headroom::optim {

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
  const double norm = grad_norm(params);
  if (!std::isfinite(norm)) return norm;
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    NoGradGuard no_grad;
    for (const auto& p : params) {
      Tensor g = p.grad();
      if (g.defined()) g.mul_(coef);
    }
  }
  return norm;
}

}  // namespace headroom::optim
