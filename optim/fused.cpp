// optim/fused.h's updates: the checks that decide whether the fused form applies, and the call.
#include "optim/fused.h"

#include <initializer_list>

#include "engine/backend.h"

namespace headroom::optim::detail {

namespace {
bool applies(std::initializer_list<const Tensor*> ts) {
  const Tensor& first = **ts.begin();
  for (const Tensor* t : ts) {
    if (!t->defined()) continue;
    if (!(t->device() == first.device()) || !t->is_contiguous() || t->dtype() != first.dtype() ||
        t->shape() != first.shape())
      return false;
  }
  return is_floating(first.dtype());
}
// The update wrote these in place (Note [version counter]).
void bump(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t->defined()) t->bump_version();
}
}  // namespace

bool sgd_applies(const Tensor& p, const Tensor& g, const Tensor& buf, double momentum) {
  return applies({&p, &g, &buf}) && (momentum == 0 || buf.defined());
}

bool adam_applies(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v) {
  return applies({&p, &g, &m, &v}) && m.defined() && v.defined();
}

bool sgd_update(const Tensor& p, const Tensor& g, const Tensor& buf, bool first, double lr, double momentum,
                double weight_decay, bool nesterov) {
  if (!applies({&p, &g, &buf}) || (momentum != 0 && !buf.defined())) return false;
  if (p.numel() > 0) backend_for(p.device()).sgd_update(p, g, buf, first, lr, momentum, weight_decay, nesterov);
  bump({&p, &buf});
  return true;
}

bool adam_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, double lr, double beta1,
                 double beta2, double eps, double weight_decay, bool decoupled, double bias_correction1,
                 double bias_correction2) {
  if (!applies({&p, &g, &m, &v}) || !m.defined() || !v.defined()) return false;
  // The step's constants in double, once, for every dtype and device (Note [optimizer step
  // constants] in engine/backend.h).
  const AdamStep step =
      AdamStep::make(lr, beta1, beta2, eps, weight_decay, decoupled, bias_correction1, bias_correction2);
  if (p.numel() > 0) backend_for(p.device()).adam_update(p, g, m, v, step);
  bump({&p, &m, &v});
  return true;
}

}  // namespace headroom::optim::detail
