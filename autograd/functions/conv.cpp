#include "autograd/functions/internal.h"
namespace headroom {
Tensor conv2d(const Tensor&, const Tensor&, const Tensor&, int64_t, int64_t, int64_t, int64_t) { throw Error("conv2d: not implemented yet"); }
Tensor conv2d(const Tensor&, const Tensor&, const Tensor&, const Conv2dParams&) { throw Error("conv2d: not implemented yet"); }
Tensor max_pool2d(const Tensor&, int64_t, int64_t, int64_t) { throw Error("max_pool2d: not implemented yet"); }
Tensor avg_pool2d(const Tensor&, int64_t, int64_t, int64_t, bool) { throw Error("avg_pool2d: not implemented yet"); }
}  // namespace headroom
