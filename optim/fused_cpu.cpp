// The fused CPU optimizer loops (see fused_cpu.h for why they exist). Elementwise and
// independent, so the index range is split over OpenMP threads with kernels/cpu's
// parallel_for; f16/bf16 are loaded to f32, updated, and rounded once on the store.
#include "optim/fused_cpu.h"

#include <cmath>
#include <initializer_list>

#include "kernels/cpu/strided.h"

namespace headroom::optim::detail {

namespace {
bool applies(std::initializer_list<const Tensor*> ts) {
  const Tensor& first = **ts.begin();
  for (const Tensor* t : ts) {
    if (!t->defined()) continue;
    if (!t->device().is_cpu() || !t->is_contiguous() || t->dtype() != first.dtype() || t->shape() != first.shape())
      return false;
  }
  return is_floating(first.dtype());
}
void bump(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t->defined()) t->bump_version();
}
}  // namespace

bool sgd_update_cpu(const Tensor& p, const Tensor& g, const Tensor& buf, bool first, double lr, double momentum,
                    double weight_decay, bool nesterov) {
  if (!applies({&p, &g, &buf}) || (momentum != 0 && !buf.defined())) return false;
  dispatch_float(p.dtype(), "sgd_update_cpu", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    T* pp = p.data<T>();
    const T* gp = g.data<T>();
    T* bp = buf.defined() ? buf.data<T>() : nullptr;
    const A a_lr = static_cast<A>(lr), a_mom = static_cast<A>(momentum), a_wd = static_cast<A>(weight_decay);
    cpu::parallel_for(p.numel(), cpu::kParallelGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const A w = static_cast<A>(pp[i]);
        A d = static_cast<A>(gp[i]) + a_wd * w;
        if (bp) {
          const A b = first ? d : a_mom * static_cast<A>(bp[i]) + d;
          bp[i] = static_cast<T>(b);
          d = nesterov ? d + a_mom * b : b;
        }
        pp[i] = static_cast<T>(w - a_lr * d);
      }
    });
  });
  bump({&p, &buf});
  return true;
}

bool adam_update_cpu(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, double lr, double beta1,
                     double beta2, double eps, double weight_decay, bool decoupled, double bias_correction1,
                     double bias_correction2) {
  if (!applies({&p, &g, &m, &v}) || !m.defined() || !v.defined()) return false;
  dispatch_float(p.dtype(), "adam_update_cpu", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    T* pp = p.data<T>();
    const T* gp = g.data<T>();
    T* mp = m.data<T>();
    T* vp = v.data<T>();
    const A b1 = static_cast<A>(beta1), b2 = static_cast<A>(beta2);
    const A a_eps = static_cast<A>(eps);
    const A decay = decoupled ? static_cast<A>(1.0 - lr * weight_decay) : A(1);
    const A l2 = decoupled ? A(0) : static_cast<A>(weight_decay);
    const A step_size = static_cast<A>(lr / bias_correction1);
    const A inv_sqrt_bc2 = static_cast<A>(1.0 / std::sqrt(bias_correction2));
    cpu::parallel_for(p.numel(), cpu::kParallelGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const A w = static_cast<A>(pp[i]) * decay;
        const A d = static_cast<A>(gp[i]) + l2 * w;
        const A mi = b1 * static_cast<A>(mp[i]) + (A(1) - b1) * d;
        const A vi = b2 * static_cast<A>(vp[i]) + (A(1) - b2) * d * d;
        mp[i] = static_cast<T>(mi);
        vp[i] = static_cast<T>(vi);
        pp[i] = static_cast<T>(w - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + a_eps));
      }
    });
  });
  bump({&p, &m, &v});
  return true;
}

}  // namespace headroom::optim::detail
