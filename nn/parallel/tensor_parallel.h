// Tensor parallelism (Megatron-LM, Shoeybi et al. 2019): each layer's matrices split over the T
// ranks of a group -- across processes (MPI/NCCL, dist::init) or across the devices of one
// process (dist::run_on_devices, Note [in-process groups]) -- so that each rank holds 1/T of the
// layer's parameters, gradients and optimizer state.
//
//   dist::run_on_devices({Device::cpu(0), Device::cpu(1)}, [&](int rank, dist::ProcessGroup& g) {
//     auto mlp = nn::TensorParallelMLP::from(full_fc, full_proj, g);   // this rank's shards
//     Tensor y = mlp->forward(x.to(Device::cpu(rank)));                // the whole output, on every rank
//   });
//
// Note [conjugate communication]: two autograd functions carry the communication, each the
// other's transpose (Megatron's f and g):
//   - copy_to_tensor_parallel: identity forward; backward all-reduces (sums) the gradient --
//     every rank's shard of the next layer used the same input, and the input's gradient is the
//     sum of what each shard sends back;
//   - reduce_from_tensor_parallel: all-reduces (sums) forward -- the partial products of a row
//     split -- and is the identity backward.
// A column-parallel linear layer holds rows [r*out/T, (r+1)*out/T) of the weight (and bias): its
// output is this rank's slice of the features, with no communication forward. A row-parallel
// layer holds columns [r*in/T, (r+1)*in/T) of the weight and takes this rank's slice of the
// features; it sums the partial products with reduce_from_tensor_parallel and adds the (whole)
// bias after. Column then row (an MLP's C -> 4C -> C) needs one all-reduce forward and one
// backward, and none between the two.
#pragma once

#include <memory>

#include "dist/process_group.h"
#include "nn/layers/attention.h"
#include "nn/layers/gpt.h"
#include "nn/layers/linear.h"
#include "nn/layers/norm.h"
#include "nn/module.h"

namespace headroom::nn {

Tensor copy_to_tensor_parallel(const Tensor& x, dist::ProcessGroup& group);
Tensor reduce_from_tensor_parallel(const Tensor& x, dist::ProcessGroup& group);

class ColumnParallelLinear final : public Module {
 public:
  // This rank's shard of a fresh (in, out) layer; out must divide by the group's size.
  ColumnParallelLinear(int64_t in_features, int64_t out_features, dist::ProcessGroup& group, bool bias = true);
  // This rank's shard of `full` (its values copied), on `device`.
  static std::shared_ptr<ColumnParallelLinear> from(const Linear& full, dist::ProcessGroup& group, Device device);
  // x: [..., in] (the same on every rank) -> [..., out / T], this rank's features.
  Tensor forward(const Tensor& x) override;
  std::string name() const override;

  int64_t in_features, out_features;  // of the whole layer
  Tensor weight;                      // [out / T, in]
  Tensor bias;                        // [out / T]
 private:
  dist::ProcessGroup& group_;
};

class RowParallelLinear final : public Module {
 public:
  // in must divide by the group's size.
  RowParallelLinear(int64_t in_features, int64_t out_features, dist::ProcessGroup& group, bool bias = true);
  static std::shared_ptr<RowParallelLinear> from(const Linear& full, dist::ProcessGroup& group, Device device);
  // x: [..., in / T] (this rank's features) -> [..., out], the whole output on every rank.
  Tensor forward(const Tensor& x) override;
  std::string name() const override;

  int64_t in_features, out_features;
  Tensor weight;  // [out, in / T]
  Tensor bias;    // [out], whole on every rank
 private:
  dist::ProcessGroup& group_;
};

// C -> hidden (column-parallel) -> GELU -> C (row-parallel): a transformer's MLP over T ranks.
class TensorParallelMLP final : public Module {
 public:
  static std::shared_ptr<TensorParallelMLP> from(const Linear& fc, const Linear& proj, dist::ProcessGroup& group,
                                                 Device device);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "TensorParallelMLP"; }

  std::shared_ptr<ColumnParallelLinear> fc;
  std::shared_ptr<RowParallelLinear> proj;
};

// Parallel attention heads: rank r runs heads [r*H/T, (r+1)*H/T) of a CausalSelfAttention --
// its q, k and v rows of c_attn (column-parallel) and its columns of c_proj (row-parallel). The
// block's dropout must be 0 (each rank would draw its own mask).
class TensorParallelAttention final : public Module {
 public:
  static std::shared_ptr<TensorParallelAttention> from(const CausalSelfAttention& full, dist::ProcessGroup& group,
                                                       Device device);
  Tensor forward(const Tensor& x) override;  // [B, T, C] (the same on every rank) -> [B, T, C]
  std::string name() const override { return "TensorParallelAttention"; }

  int64_t n_embd = 0, local_heads = 0;
  AttentionImpl impl = AttentionImpl::fused;
  std::shared_ptr<ColumnParallelLinear> c_attn;  // [3C / T, C]: this rank's q, k and v rows
  std::shared_ptr<RowParallelLinear> c_proj;
};

// A GPT block over T ranks: the LayerNorms whole on every rank (their inputs are), the attention
// heads and the MLP split (Megatron's layout: two all-reduces forward, two backward).
class TensorParallelBlock final : public Module {
 public:
  static std::shared_ptr<TensorParallelBlock> from(const Block& full, dist::ProcessGroup& group, Device device);
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "TensorParallelBlock"; }

  std::shared_ptr<LayerNorm> ln_1, ln_2;
  std::shared_ptr<TensorParallelAttention> attn;
  std::shared_ptr<TensorParallelMLP> mlp;
};

}  // namespace headroom::nn
