#include "kernels/cpu/cpu_backend.h"
namespace headroom::cpu {
void CpuBackend::conv2d_forward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Conv2dParams&) { throw Error("cpu conv2d: not implemented yet"); }
void CpuBackend::conv2d_backward_input(const Tensor&, const Tensor&, const Tensor&, const Conv2dParams&) { throw Error("cpu conv2d: not implemented yet"); }
void CpuBackend::conv2d_backward_weight(const Tensor&, const Tensor&, const Tensor&, const Conv2dParams&) { throw Error("cpu conv2d: not implemented yet"); }
}  // namespace headroom::cpu
