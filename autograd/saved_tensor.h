// A tensor saved for backward, with the version of its storage at the time it was saved
// (Note [version counter] in engine/storage.h), tagged in the allocator as an activation.
#pragma once

#include <string>

#include "engine/tensor.h"

namespace headroom {

class SavedTensor {
 public:
  SavedTensor() = default;
  // A temporary that is saved becomes an activation (engine/memory.h); parameters stay
  // parameters.
  // Holds a detached alias (same storage, no autograd state): an op that saves its own output
  // would otherwise make a cycle output -> node -> output, and a graph dropped without
  // backward would never be freed. Backward only reads the values, so nothing is lost.
  SavedTensor(const Tensor& t, const char* op) : tensor_(t.defined() ? t.detach() : t), op_(op) {
    if (!t.defined()) return;
    version_ = t.version();
    if (t.storage()->category() == MemoryCategory::temporary) t.storage()->set_category(MemoryCategory::activation);
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
