#include "kernels/cpu/cpu_backend.h"
namespace headroom::cpu {
void CpuBackend::layer_norm_forward(const Tensor&, const Tensor&, const Tensor&, double, const Tensor&, const Tensor&, const Tensor&) { throw Error("cpu layer_norm: not implemented yet"); }
void CpuBackend::layer_norm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&) { throw Error("cpu layer_norm: not implemented yet"); }
void CpuBackend::batch_norm_forward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool, double, double, const Tensor&, const Tensor&, const Tensor&) { throw Error("cpu batch_norm: not implemented yet"); }
void CpuBackend::batch_norm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool, const Tensor&, const Tensor&, const Tensor&) { throw Error("cpu batch_norm: not implemented yet"); }
}  // namespace headroom::cpu
