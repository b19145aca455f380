#include "kernels/cpu/cpu_backend.h"
namespace headroom::cpu {
void CpuBackend::index_select(const Tensor&, int64_t, const Tensor&, const Tensor&) { throw Error("cpu index_select: not implemented yet"); }
void CpuBackend::index_add(const Tensor&, int64_t, const Tensor&, const Tensor&) { throw Error("cpu index_add: not implemented yet"); }
}  // namespace headroom::cpu
