// Fused optimizer updates (Backend::sgd_update / adam_update): one pass that reads p, g and the
// state once and writes them once, in the parameter's dtype, computing in f32 (f64 for f64).
// The step's constants come folded in double (AdamStep::make, Note [optimizer step constants]
// in engine/backend.h) and are only rounded here; the arithmetic follows the generic path of
// Tensor ops (optim/adam.cpp, optim/sgd.cpp) operation for operation, so that the two differ
// only where the generic path rounds an intermediate to a 16-bit dtype.
// Written with Tensor ops, an Adam step is about a dozen passes and three parameter-sized
// temporaries; for the Fashion-MNIST MLP that cost more than its forward and backward together
// (14 ms a step, against about 1 ms here).
#include <cmath>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/strided.h"

namespace headroom::cpu {

namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define HR_SGD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HR_SGD_CLONES
#endif

// Note [vectorised sgd]: the f32 SGD update as loops GCC vectorises -- restrict pointers, and the
// choices (momentum or not, first step, Nesterov) made once outside the loop rather than per
// element -- compiled for AVX-512, AVX2 and x86-64 as Note [vectorised adam]. Each lane computes
// what the generic loop below computes, bit for bit. The generic loop did not vectorise and was
// 6% of mlp-cpu-f32's step at 1 thread.
HR_SGD_CLONES
void sgd_plain_f32(float* __restrict pp, const float* __restrict gp, int64_t n, float lr, float wd) {
  for (int64_t i = 0; i < n; ++i) {
    const float w = pp[i];
    pp[i] = w - lr * (gp[i] + wd * w);
  }
}

HR_SGD_CLONES
void sgd_momentum_f32(float* __restrict pp, const float* __restrict gp, float* __restrict bp, int64_t n, bool first,
                      bool nesterov, float lr, float mom, float wd) {
  if (first && !nesterov) {
    for (int64_t i = 0; i < n; ++i) {
      const float w = pp[i], d = gp[i] + wd * w;
      bp[i] = d;
      pp[i] = w - lr * d;
    }
  } else if (first) {
    for (int64_t i = 0; i < n; ++i) {
      const float w = pp[i], d = gp[i] + wd * w;
      bp[i] = d;
      pp[i] = w - lr * (d + mom * d);
    }
  } else if (!nesterov) {
    for (int64_t i = 0; i < n; ++i) {
      const float w = pp[i], d = gp[i] + wd * w, b = mom * bp[i] + d;
      bp[i] = b;
      pp[i] = w - lr * b;
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const float w = pp[i], d = gp[i] + wd * w, b = mom * bp[i] + d;
      bp[i] = b;
      pp[i] = w - lr * (d + mom * b);
    }
  }
}

}  // namespace

void CpuBackend::impl_sgd_update(const Tensor& p, const Tensor& g, const Tensor& buf, bool first, double lr,
                                 double momentum, double weight_decay, bool nesterov) {
  dispatch_float(p.dtype(), "sgd_update", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    T* pp = p.data<T>();
    const T* gp = g.data<T>();
    T* bp = buf.defined() ? buf.data<T>() : nullptr;
    const A a_lr = static_cast<A>(lr), a_mom = static_cast<A>(momentum), a_wd = static_cast<A>(weight_decay);
    if constexpr (std::is_same_v<T, float>) {  // Note [vectorised sgd]
      parallel_for(p.numel(), kParallelGrain, [&](int64_t begin, int64_t end) {
        if (!bp) sgd_plain_f32(pp + begin, gp + begin, end - begin, a_lr, a_wd);
        else sgd_momentum_f32(pp + begin, gp + begin, bp + begin, end - begin, first, nesterov, a_lr, a_mom, a_wd);
      });
      return;
    }
    parallel_for(p.numel(), kParallelGrain, [&](int64_t begin, int64_t end) {
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
}

namespace {

// Note [vectorised adam]: the f32 update -- every Adam step of offloaded optimizer state runs
// here, on the host (optim/offload.h) -- is compiled for AVX-512, AVX2 and plain x86-64, and
// the loader picks the widest the CPU has (GCC function multiversioning). This file is built
// with -fno-math-errno (CMakeLists.txt), so sqrt of the (non-negative) second moment is one
// vector instruction; without it GCC keeps a scalar call for errno's sake and the loop does not
// vectorise. Without -ffast-math and with -ffp-contract=off (Note [no contraction] in
// CMakeLists.txt: GCC 12 fused a * b + c in the AVX-512 clone) every lane computes what the
// scalar loop computes, bit for bit, at every width.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void adam_f32(float* __restrict pp, const float* __restrict gp, float* __restrict mp, float* __restrict vp,
              int64_t begin, int64_t end, float b1, float c1, float b2, float c2, float eps, float decay, float l2,
              float step_size, float inv_sqrt_bc2) {
  for (int64_t i = begin; i < end; ++i) {
    const float w = pp[i] * decay;
    const float d = gp[i] + l2 * w;
    const float mi = b1 * mp[i] + c1 * d;
    const float vi = b2 * vp[i] + c2 * (d * d);
    mp[i] = mi;
    vp[i] = vi;
    pp[i] = w - (mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps)) * step_size;
  }
}

}  // namespace

void CpuBackend::impl_adam_update(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v,
                                  const AdamStep& step) {
  if (p.dtype() == DType::f32) {
    float* pp = p.data<float>();
    const float* gp = g.data<float>();
    float* mp = m.data<float>();
    float* vp = v.data<float>();
    const auto f = [](double x) { return static_cast<float>(x); };
    parallel_for(p.numel(), kParallelGrain, [&](int64_t begin, int64_t end) {
      adam_f32(pp, gp, mp, vp, begin, end, f(step.beta1), f(step.one_minus_beta1), f(step.beta2),
               f(step.one_minus_beta2), f(step.eps), f(step.decay), f(step.l2), f(step.step_size),
               f(step.inv_sqrt_bc2));
    });
    return;
  }
  dispatch_float(p.dtype(), "adam_update", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    T* pp = p.data<T>();
    const T* gp = g.data<T>();
    T* mp = m.data<T>();
    T* vp = v.data<T>();
    // Each constant rounded once from the double AdamStep folded (Note [optimizer step constants]).
    const A b1 = static_cast<A>(step.beta1), c1 = static_cast<A>(step.one_minus_beta1);
    const A b2 = static_cast<A>(step.beta2), c2 = static_cast<A>(step.one_minus_beta2);
    const A eps = static_cast<A>(step.eps), decay = static_cast<A>(step.decay), l2 = static_cast<A>(step.l2);
    const A step_size = static_cast<A>(step.step_size), inv_sqrt_bc2 = static_cast<A>(step.inv_sqrt_bc2);
    parallel_for(p.numel(), kParallelGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const A w = static_cast<A>(pp[i]) * decay;
        const A d = static_cast<A>(gp[i]) + l2 * w;
        const A mi = b1 * static_cast<A>(mp[i]) + c1 * d;
        const A vi = b2 * static_cast<A>(vp[i]) + c2 * (d * d);
        mp[i] = static_cast<T>(mi);
        vp[i] = static_cast<T>(vi);
        pp[i] = static_cast<T>(w - (mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps)) * step_size);
      }
    });
  });
}

}  // namespace headroom::cpu
