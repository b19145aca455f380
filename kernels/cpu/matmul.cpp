#include "kernels/cpu/cpu_backend.h"
namespace headroom::cpu {
void CpuBackend::matmul(const Tensor&, const Tensor&, const Tensor&, double) { throw Error("cpu matmul: not implemented yet"); }
}  // namespace headroom::cpu
