// Pruning: making a trained network smaller by removing weights (docs/smaller-models.md).
//
// Two kinds, with different memory stories:
//
// * Unstructured magnitude pruning (MagnitudePruner): in every Conv2d and Linear weight, the
//   `fraction` of entries with the smallest |w| are set to zero and held there by a mask. The
//   tensors keep their shape, so a dense engine saves no bytes -- the masks even add one tensor
//   per weight -- and no time; what it shows is how many weights a network can lose (the zeros
//   would pay off in a sparse format or a sparse kernel, which headroom does not have).
// * Structured channel pruning (prune_channels): whole output channels of a convolution are
//   removed -- the filters with the smallest L1 norm (Li et al., "Pruning Filters for Efficient
//   ConvNets", 2017) -- together with the matching entries of the following BatchNorm2d and the
//   matching input channels of the next Conv2d (or the next Linear's columns after a Flatten).
//   The tensors really get smaller: parameters, gradients, optimizer state and, above all, the
//   activations of every step shrink with the channel count.
//
// Both are followed by fine-tuning. Note [pruned weights stay zero]: MagnitudePruner::apply()
// multiplies each weight by its mask in place; the training loop calls it after every optimizer
// step. The gradient is *not* masked: the optimizer may move a pruned weight during a step, and
// apply() puts it back to exactly 0.0 before the next forward, whatever the optimizer (momentum,
// Adam's moments and weight decay all included). So forward never sees a pruned weight that is
// not zero, and one rule covers every optimizer.
//
//   nn::prune_channels(*model, 0.5);               // a smaller model: make the optimizer after
//   nn::MagnitudePruner pruner(*model, 0.5);       // half of each remaining weight set to 0
//   optim::Adam adam(model->parameters(), 1e-3);
//   for (...) { loss.backward(); adam.step(); pruner.apply(); }
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nn/layers/sequential.h"
#include "nn/module.h"

namespace headroom::nn {

// Throws ValueError unless 0 <= fraction < 1 (`what` names the caller in the message).
void check_prune_fraction(double fraction, const char* what);

class MagnitudePruner {
 public:
  // Masks, in each weight of every Conv2d and Linear of `model` (biases and norms are left
  // alone), the floor(fraction * numel) entries of smallest magnitude -- ties broken by position,
  // so the count is exact -- and zeroes them now. ValueError for a fraction outside [0, 1) or a
  // model without Conv2d/Linear weights. Make it after the model's last to() or prune_channels:
  // apply() looks the weights up by name and throws ShapeError if one changed shape since.
  MagnitudePruner(Module& model, double fraction);

  // w *= mask for every masked weight, in place and without history (Note [pruned weights stay
  // zero]): call it after every optimizer step.
  void apply();

  struct Masked {
    std::string name;  // "0.weight"
    Tensor mask;       // the weight's shape, dtype and device: 1 kept, 0 pruned
    int64_t pruned = 0;
  };
  const std::vector<Masked>& masked() const { return masked_; }
  double fraction() const { return fraction_; }
  int64_t pruned() const;    // entries masked, over all masked weights
  int64_t prunable() const;  // entries of the masked weights
  // Exact zeros now in the masked weights, over prunable(): at least pruned() / prunable().
  double sparsity() const;

 private:
  Tensor weight(const Masked& m) const;
  Module* model_;
  double fraction_;
  std::vector<Masked> masked_;
};

// What prune_channels did to one convolution.
struct PrunedChannels {
  std::string layer;  // the conv's name in the Sequential ("0", "4")
  int64_t before = 0, after = 0;
  std::vector<int64_t> kept;  // the channels kept, ascending, as indices of the unpruned conv
};

// Removes floor(fraction * out) output channels from every Conv2d of `model` whose output reaches
// another layer, keeping those whose filters have the largest L1 norm (sum of |w| over the
// filter; ties keep the lower index). Along with them go the entries of any BatchNorm2d in
// between (weight, bias, running mean and variance) and the consumer's inputs: the next Conv2d's
// input channels, or after a Flatten the next Linear's columns (in_features / channels of them a
// channel). Between a conv and its consumer may stand BatchNorm2d, ReLU, MaxPool2d, AvgPool2d
// and Dropout; a conv whose output is the model's output is left whole.
//
// Everything is checked and every channel chosen before anything changes: ValueError for a
// fraction outside [0, 1), for grouped or depthwise convs (their input and output channels are
// tied), for any other module between a conv and its consumer (GroupNorm, a separable block, ...),
// and when the model has no conv to prune -- each naming the layer. The pruned tensors are new
// tensors (requires_grad kept, .grad dropped): make the optimizer after pruning, as after to().
// A channel removed here contributed exactly nothing once its filter, bias and norm affine were
// zero, so the pruned model computes what the unpruned one computes with those zeroed
// (tests/nn/smaller_models_test.cpp checks this).
std::vector<PrunedChannels> prune_channels(Sequential& model, double fraction);

}  // namespace headroom::nn
