// Backend::unscale_and_check on the CPU: GradScaler's one pass over a step's gradients.
//
// Each gradient is multiplied in place by inv_scale (=) in acc_t (f32 for f16/bf16/f32, f64
// for f64) and the value actually stored is tested for inf/NaN -- a finite f32 product can
// still round to inf in f16. A chunk that sees a non-finite value sets a shared flag; found_inf
// is written once at the end, and only to 1 (it is never cleared here). The loop keeps going
// after a hit: the gradients of a skipped step are dropped anyway, and a branch-free body
// vectorises.
#include <atomic>
#include <cmath>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/strided.h"

namespace headroom::cpu {

void CpuBackend::impl_unscale_and_check(const std::vector<Tensor>& grads, double inv_scale, const Tensor& found_inf) {
  const char* op = "unscale_and_check";
  // The arguments are checked by Backend::unscale_and_check (Note [op table]).
  std::atomic<bool> found{false};
  for (const Tensor& g : grads) {
    if (g.numel() == 0) continue;
    dispatch_float(g.dtype(), op, [&](auto tag) {
      using T = typename decltype(tag)::type;
      using A = acc_t<T>;
      T* p = g.data<T>();
      const A inv = static_cast<A>(inv_scale);
      parallel_for(g.numel(), kParallelGrain, [&](int64_t begin, int64_t end) {
        bool bad = false;
        for (int64_t i = begin; i < end; ++i) {
          const T v = static_cast<T>(static_cast<A>(p[i]) * inv);
          p[i] = v;
          bad |= !std::isfinite(static_cast<A>(v));
        }
        if (bad) found.store(true, std::memory_order_relaxed);
      });
    });
  }
  if (found.load()) *static_cast<float*>(found_inf.raw_data()) = 1.0f;
}

}  // namespace headroom::cpu
