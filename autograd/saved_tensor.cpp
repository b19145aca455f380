#include "autograd/saved_tensor.h"

namespace headroom {

const Tensor& SavedTensor::unpack() const {
  if (tensor_.defined() && tensor_.version() != version_) {
    throw AutogradError(str_cat(
        "a tensor saved for the backward of ", op_, " (", describe(tensor_),
        ") was modified in place after it was saved: its version is ", tensor_.version(),
        ", expected ", version_, ". Clone it before the in-place op, or use the out-of-place form."));
  }
  return tensor_;
}

}  // namespace headroom
