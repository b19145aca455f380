// The CPU backend: every Backend op on host memory, one op family a file in this folder, each
// file named for its family (conv.cpp, attention.cpp, optim.cpp, ...). f16 and bf16 are
// converted to f32 per element, computed, and rounded back; reductions accumulate in f32 (f64
// for f64). Large loops are split over the cores by parallel_for (parallel.cpp); matmul and
// convolution go through OpenBLAS.
#pragma once

#include "engine/backend.h"

namespace headroom::cpu {

class CpuBackend final : public Backend {
 public:
  // Inside a MetaScope the kernels that take scratch memory run up to it (Note [meta execution]).
  CpuBackend()
      : Backend(OpSet::all(), OpSet{OpId::matmul, OpId::conv2d_forward, OpId::conv2d_backward_input,
                                    OpId::conv2d_backward_weight, OpId::attention_backward}) {}
  DeviceType device_type() const override { return DeviceType::cpu; }

  void copy_to_host(void* host_dst, const void* src, size_t nbytes, Device device, bool non_blocking) override;
  void copy_from_host(void* dst, const void* host_src, size_t nbytes, Device device, bool non_blocking) override;
  DeviceProperties properties(Device device) override;

 protected:
  // A kernel for every op of the table (engine/op_table.h); Backend::name checks, then calls it.
  HEADROOM_OP_OVERRIDES
};

}  // namespace headroom::cpu
