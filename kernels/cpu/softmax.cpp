#include "kernels/cpu/cpu_backend.h"
namespace headroom::cpu {
void CpuBackend::softmax_forward(const Tensor&, const Tensor&, int64_t, bool) { throw Error("cpu softmax: not implemented yet"); }
void CpuBackend::softmax_backward(const Tensor&, const Tensor&, const Tensor&, int64_t, bool) { throw Error("cpu softmax: not implemented yet"); }
void CpuBackend::cross_entropy_forward(const Tensor&, const Tensor&, const Tensor&, const Tensor&) { throw Error("cpu cross_entropy: not implemented yet"); }
void CpuBackend::cross_entropy_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&) { throw Error("cpu cross_entropy: not implemented yet"); }
}  // namespace headroom::cpu
