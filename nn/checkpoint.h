// Checkpointing policies over modules (autograd/checkpoint.h has the mechanism,
// Note [recompute checkpointing]).
//
//   Tensor y = nn::checkpoint_sequential(blocks, x);        // k = round(sqrt(n)) segments
//   cfg.checkpoint = nn::CheckpointMode::block;             // a GPT checkpoints every block
//
// The modes a model takes (GPTConfig::checkpoint, the examples' --checkpoint):
//   none   keep every activation (the default);
//   block  checkpoint each block (a transformer block, a residual stage): backward holds the
//          blocks' inputs plus one block's activations at a time, for one more forward of
//          every block;
//   sqrt   checkpoint_sequential over the blocks with k = round(sqrt(n)) segments (Chen et al.
//          2016, "Training Deep Nets with Sublinear Memory Cost"): about sqrt(n) segment inputs
//          plus one segment's activations, so the activation peak grows as O(sqrt(n));
//   selective  each block checkpointed with selective_policy (Note [selective checkpointing]):
//          the outputs of linear, conv2d and fused attention are kept, the ops between them
//          are recomputed -- less memory saved than block, for a much cheaper re-run.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "autograd/checkpoint.h"
#include "nn/module.h"

namespace headroom::nn {

enum class CheckpointMode : uint8_t { none, block, sqrt, selective };

const char* checkpoint_mode_name(CheckpointMode mode);
// "none", "block", "sqrt" or "selective"; anything else is a ValueError naming `what` (a flag, a field).
CheckpointMode parse_checkpoint_mode(std::string_view text, const char* what);

// round(sqrt(n)), at least 1.
int64_t default_checkpoint_segments(int64_t n);

// Runs the modules in order on x in `segments` consecutive runs of about equal length (the
// first ones one longer when n does not divide), each but the last through checkpoint(): the
// last segment's activations are needed first in backward, so recomputing them would only cost
// time (PyTorch's checkpoint_sequential does the same). segments = 0 picks
// default_checkpoint_segments(n); segments must be in [0, n] (ValueError otherwise).
Tensor checkpoint_sequential(const std::vector<std::shared_ptr<Module>>& modules, const Tensor& x, int64_t segments = 0,
                             const CheckpointOptions& options = {});

// Runs the modules in order, each through checkpoint() (mode block; with the selective policy:
// mode selective), through checkpoint_sequential (mode sqrt) or plainly (mode none).
Tensor run_checkpointed(const std::vector<std::shared_ptr<Module>>& modules, const Tensor& x, CheckpointMode mode);

}  // namespace headroom::nn
