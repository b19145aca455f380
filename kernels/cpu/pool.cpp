#include "kernels/cpu/cpu_backend.h"
namespace headroom::cpu {
void CpuBackend::max_pool2d_forward(const Tensor&, const Tensor&, const Tensor&, const Pool2dParams&) { throw Error("cpu pool: not implemented yet"); }
void CpuBackend::max_pool2d_backward(const Tensor&, const Tensor&, const Tensor&, const Pool2dParams&) { throw Error("cpu pool: not implemented yet"); }
void CpuBackend::avg_pool2d_forward(const Tensor&, const Tensor&, const Pool2dParams&) { throw Error("cpu pool: not implemented yet"); }
void CpuBackend::avg_pool2d_backward(const Tensor&, const Tensor&, const Pool2dParams&) { throw Error("cpu pool: not implemented yet"); }
}  // namespace headroom::cpu
