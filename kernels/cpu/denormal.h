// Note [denormals]: floats below 2^-126 (f32) take a slow microcode path on x86, 10-100x per
// operation. Training produces them as weights, gradients and Adam's second moments shrink:
// the Fashion-MNIST MLP went from 1.1 s to 3.3 s per epoch by its third epoch. Like most
// engines' fast modes, the CPU backend therefore flushes denormals to zero (the FTZ and DAZ
// bits of MXCSR) while its kernels run: DenormalGuard sets them for one kernel on the calling
// thread and restores the caller's mode after; the pool's workers keep them set. OpenBLAS runs
// on the calling thread, its own workers stopped (Note [one set of threads]), so it runs flushed.
// set_flush_denormal(false) restores IEEE gradual underflow for kernels started afterwards.
#pragma once

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define HEADROOM_HAS_MXCSR 1
#endif

#include "engine/backend.h"  // set_flush_denormal, flush_denormal

namespace headroom {
namespace cpu {

class DenormalGuard {
 public:
  DenormalGuard() {
#ifdef HEADROOM_HAS_MXCSR
    saved_ = _mm_getcsr();
    constexpr unsigned kFtzDaz = 0x8040;
    unsigned want = flush_denormal() ? (saved_ | kFtzDaz) : (saved_ & ~kFtzDaz);
    if (want != saved_) _mm_setcsr(want);
#endif
  }
  ~DenormalGuard() {
#ifdef HEADROOM_HAS_MXCSR
    if (_mm_getcsr() != saved_) _mm_setcsr(saved_);
#endif
  }
  DenormalGuard(const DenormalGuard&) = delete;
  DenormalGuard& operator=(const DenormalGuard&) = delete;

 private:
  unsigned saved_ = 0;
};

}  // namespace cpu
}  // namespace headroom
