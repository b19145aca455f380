// A labelled data set held in memory: one tensor of samples, one of labels, same first dim.
//
// Kept as two plain tensors (not a virtual "get item" interface) because every data set the
// examples use fits in host memory, and a batch is then a gather of rows -- one memcpy a
// sample -- rather than a call per sample.
#pragma once

#include <cstdint>

#include "engine/tensor.h"

namespace headroom::data {

struct Dataset {
  Tensor images;  // [N, ...] f32 in [0, 1] for the image sets
  Tensor labels;  // [N] i64

  int64_t size() const { return images.defined() ? images.size(0) : 0; }
};

// Samples [begin, end) as views of the same storage; throws ValueError on a bad range.
Dataset subset(const Dataset& dataset, int64_t begin, int64_t end);

}  // namespace headroom::data
