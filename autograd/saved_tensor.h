// A tensor saved for backward, with the version of its storage at the time it was saved
// (Note [version counter] in engine/storage.h).
#pragma once

#include <string>

#include "engine/tensor.h"

namespace headroom {

class SavedTensor {
 public:
  SavedTensor() = default;
  SavedTensor(const Tensor& t, const char* op) : tensor_(t), op_(op) {
    if (t.defined()) version_ = t.version();
  }
  // The saved tensor; throws AutogradError naming the op when it was modified in place since.
  const Tensor& unpack() const;
  bool defined() const { return tensor_.defined(); }

 private:
  Tensor tensor_;
  const char* op_ = "";
  uint64_t version_ = 0;
};

}  // namespace headroom
