// Pruning (nn/prune.h): choosing on the host, editing on the device. Both kinds copy the few
// numbers they rank (magnitudes, filter norms) to the host, choose there, and write the result
// back as masks or index tensors; the weights themselves never leave their device.
#include "nn/prune.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <optional>
#include <set>

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "engine/memory.h"
#include "nn/layers/activation.h"
#include "nn/layers/conv.h"
#include "nn/layers/linear.h"
#include "nn/layers/norm.h"
#include "nn/layers/pooling.h"

namespace headroom::nn {

void check_prune_fraction(double fraction, const char* what) {
  HR_CHECK(std::isfinite(fraction) && fraction >= 0 && fraction < 1, ValueError, what,
           ": the fraction to prune must be in [0, 1), got ", fraction);
}

namespace {

// The k indices of smallest score, ties broken by the lower index, as a 0/1 keep-vector.
std::vector<bool> keep_all_but_smallest(const std::vector<double>& score, int64_t k) {
  std::vector<int64_t> order(score.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  auto less = [&](int64_t a, int64_t b) {
    const double sa = score[static_cast<size_t>(a)], sb = score[static_cast<size_t>(b)];
    return sa < sb || (sa == sb && a < b);
  };
  std::vector<bool> keep(score.size(), true);
  if (k <= 0) return keep;
  std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), less);
  for (int64_t i = 0; i < k; ++i) keep[static_cast<size_t>(order[static_cast<size_t>(i)])] = false;
  return keep;
}

}  // namespace

// ---- magnitude pruning ----

MagnitudePruner::MagnitudePruner(Module& model, double fraction) : model_(&model), fraction_(fraction) {
  check_prune_fraction(fraction, "MagnitudePruner");
  // The dotted names of every Conv2d / Linear weight, as named_parameters() lists them (a weight
  // tied to another is listed, and masked, once: under its first name).
  std::set<std::string> listed;
  for (const auto& [name, t] : model.named_parameters()) listed.insert(name);
  std::vector<std::string> weights;
  auto add = [&](const std::string& name) {
    if (listed.count(name)) weights.push_back(name);
  };
  if (dynamic_cast<Conv2d*>(&model) || dynamic_cast<Linear*>(&model)) add("weight");
  for (const auto& [path, m] : model.named_modules())
    if (dynamic_cast<Conv2d*>(m.get()) || dynamic_cast<Linear*>(m.get())) add(path + ".weight");
  HR_CHECK(!weights.empty(), ValueError, "MagnitudePruner: ", model.name(), " has no Conv2d or Linear weight to prune");
  NoGradGuard no_grad;
  for (const std::string& name : weights) {
    Masked m;
    m.name = name;
    const Tensor w = weight(m);
    const std::vector<double> magnitude = w.abs().to_vector<double>();
    m.pruned = static_cast<int64_t>(std::floor(fraction * static_cast<double>(w.numel())));
    const std::vector<bool> keep = keep_all_but_smallest(magnitude, m.pruned);
    std::vector<double> mask(keep.begin(), keep.end());
    CategoryScope scope(MemoryCategory::parameter);  // model state, like the weight it masks
    m.mask = Tensor::from_vector(mask, w.shape(), TensorOptions().dtype(w.dtype()).device(w.device()));
    masked_.push_back(std::move(m));
  }
  apply();
}

// A handle on the model's current weight: an in-place edit of it edits the model's tensor.
Tensor MagnitudePruner::weight(const Masked& m) const {
  Tensor found;
  for (auto& [name, t] : model_->named_parameters())
    if (name == m.name) found = t;
  HR_CHECK(found.defined(), ValueError, "MagnitudePruner: the model has no parameter '", m.name,
           "' any more (was it replaced after the pruner was made?)");
  HR_CHECK(!m.mask.defined() || found.shape() == m.mask.shape(), ShapeError, "MagnitudePruner: '", m.name, "' is ",
           shape_str(found.shape()), " but its mask is ", shape_str(m.mask.shape()),
           " (make the pruner after prune_channels and to())");
  return found;
}

void MagnitudePruner::apply() {
  NoGradGuard no_grad;  // an optimizer-style update: no history, the version counter bumped
  for (const Masked& m : masked_) weight(m).mul_(m.mask);
}

int64_t MagnitudePruner::pruned() const {
  int64_t n = 0;
  for (const Masked& m : masked_) n += m.pruned;
  return n;
}

int64_t MagnitudePruner::prunable() const {
  int64_t n = 0;
  for (const Masked& m : masked_) n += m.mask.numel();
  return n;
}

double MagnitudePruner::sparsity() const {
  NoGradGuard no_grad;
  int64_t zeros = 0;
  for (const Masked& m : masked_)
    for (double v : weight(m).to_vector<double>()) zeros += v == 0.0;
  const int64_t n = prunable();
  return n ? static_cast<double>(zeros) / static_cast<double>(n) : 0.0;
}

// ---- channel pruning ----

namespace {

// One conv to prune and what follows it.
struct ChannelPlan {
  int64_t conv_index = 0;
  std::shared_ptr<Conv2d> conv;
  std::vector<std::shared_ptr<BatchNorm2d>> norms;  // between the conv and its consumer
  std::shared_ptr<Conv2d> next_conv;                // the consumer: a conv ...
  std::shared_ptr<Linear> next_linear;              // ... or a Linear after a Flatten
  int64_t positions = 1;                            // Linear: columns per channel (H * W)
  std::vector<int64_t> kept;
};

// A new leaf with t's requires_grad (no .grad), in the parameter category.
void replace(Tensor& slot, const Tensor& value) {
  const bool trained = slot.requires_grad();
  Tensor t = value.contiguous().detach();  // index_select made it: new storage, the old tensor untouched
  if (trained) t.set_requires_grad(true);
  slot = t;
}

Tensor select_channels(const Tensor& t, int64_t dim, const Tensor& index) {
  if (!t.defined()) return t;
  return index_select(t, dim, index);
}

std::string describe_module(Sequential& model, int64_t i) { return str_cat("'", i, "' (", model.at(i)->name(), ")"); }

}  // namespace

std::vector<PrunedChannels> prune_channels(Sequential& model, double fraction) {
  check_prune_fraction(fraction, "prune_channels");
  // Phase 1: find every conv and its consumer, check the pattern, choose the channels.
  std::vector<ChannelPlan> plans;
  for (int64_t i = 0; i < model.size(); ++i) {
    auto conv = std::dynamic_pointer_cast<Conv2d>(model.at(i));
    if (!conv) continue;
    HR_CHECK(conv->groups == 1, ValueError, "prune_channels: cannot prune conv ", describe_module(model, i),
             ": a grouped or depthwise conv (groups=", conv->groups,
             ") ties its input channels to its output channels; only groups=1 is supported");
    ChannelPlan plan;
    plan.conv_index = i;
    plan.conv = conv;
    bool flattened = false;
    int64_t j = i + 1;
    for (; j < model.size(); ++j) {
      const std::shared_ptr<Module> m = model.at(j);
      if (auto bn = std::dynamic_pointer_cast<BatchNorm2d>(m); bn && !flattened) {
        plan.norms.push_back(bn);
      } else if (std::dynamic_pointer_cast<ReLU>(m) || std::dynamic_pointer_cast<Dropout>(m) ||
                 (!flattened && (std::dynamic_pointer_cast<MaxPool2d>(m) || std::dynamic_pointer_cast<AvgPool2d>(m)))) {
        // element-wise or per-channel: the channel layout passes through
      } else if (auto f = std::dynamic_pointer_cast<Flatten>(m); f && !flattened) {
        HR_CHECK(f->start_dim == 1 && f->end_dim == -1, ValueError, "prune_channels: the output of conv ",
                 describe_module(model, i), " reaches ", describe_module(model, j),
                 "; only Flatten(1, -1) (channel-major columns) is supported");
        flattened = true;
      } else if (auto next = std::dynamic_pointer_cast<Conv2d>(m); next && !flattened) {
        HR_CHECK(next->groups == 1, ValueError, "prune_channels: the output of conv ", describe_module(model, i),
                 " feeds ", describe_module(model, j), ", a grouped or depthwise conv (groups=", next->groups,
                 "); only groups=1 is supported");
        plan.next_conv = next;
        break;
      } else if (auto lin = std::dynamic_pointer_cast<Linear>(m); lin && flattened) {
        HR_CHECK(lin->in_features % conv->out_channels == 0, ValueError, "prune_channels: ", describe_module(model, j),
                 " takes ", lin->in_features, " features, not a multiple of the ", conv->out_channels,
                 " channels of conv ", describe_module(model, i));
        plan.next_linear = lin;
        plan.positions = lin->in_features / conv->out_channels;
        break;
      } else {
        HR_CHECK(false, ValueError, "prune_channels: cannot prune the output channels of conv ",
                 describe_module(model, i), ": it reaches ", describe_module(model, j),
                 ", which is not supported between a conv and the next Conv2d (or Flatten + Linear); supported "
                 "in between: BatchNorm2d, ReLU, MaxPool2d, AvgPool2d, Dropout");
      }
    }
    if (j == model.size()) {
      HR_CHECK(!flattened, ValueError, "prune_channels: the output of conv ", describe_module(model, i),
               " is flattened but reaches no Linear");
      continue;  // the model's output: its channels are what the caller gets, left whole
    }
    for (const auto& bn : plan.norms)
      HR_CHECK(bn->channels == conv->out_channels, ValueError, "prune_channels: ", bn->name(), " after conv ",
               describe_module(model, i), " has ", bn->channels, " channels, the conv ", conv->out_channels);
    // The filters' L1 norms, on the host.
    std::vector<double> norms;
    {
      NoGradGuard no_grad;
      norms = conv->weight.abs().sum({1, 2, 3}).to_vector<double>();
    }
    const auto drop = static_cast<int64_t>(std::floor(fraction * static_cast<double>(conv->out_channels)));
    const std::vector<bool> keep = keep_all_but_smallest(norms, drop);
    for (int64_t c = 0; c < conv->out_channels; ++c)
      if (keep[static_cast<size_t>(c)]) plan.kept.push_back(c);
    plans.push_back(std::move(plan));
  }
  HR_CHECK(!plans.empty(), ValueError, "prune_channels: ", model.name(),
           " has no Conv2d whose output feeds another Conv2d or a Flatten + Linear; nothing to prune");

  // Phase 2: cut. All choices were made on the unpruned weights, so the order does not matter.
  NoGradGuard no_grad;
  CategoryScope scope(MemoryCategory::parameter);
  std::vector<PrunedChannels> report;
  for (ChannelPlan& p : plans) {
    const int64_t keep = static_cast<int64_t>(p.kept.size());
    const Tensor index =
        Tensor::from_vector(p.kept, {keep}, TensorOptions().dtype(DType::i64).device(p.conv->weight.device()));
    report.push_back({std::to_string(p.conv_index), p.conv->out_channels, keep, p.kept});
    replace(p.conv->weight, select_channels(p.conv->weight, 0, index));
    if (p.conv->bias.defined()) replace(p.conv->bias, select_channels(p.conv->bias, 0, index));
    p.conv->out_channels = keep;
    for (const auto& bn : p.norms) {
      replace(bn->weight, select_channels(bn->weight, 0, index));
      replace(bn->bias, select_channels(bn->bias, 0, index));
      replace(bn->running_mean, select_channels(bn->running_mean, 0, index));
      replace(bn->running_var, select_channels(bn->running_var, 0, index));
      bn->channels = keep;
    }
    if (p.next_conv) {
      replace(p.next_conv->weight, select_channels(p.next_conv->weight, 1, index));
      p.next_conv->in_channels = keep;
    } else {
      Tensor& w = p.next_linear->weight;  // [out, C * positions], channel-major
      const int64_t out = w.size(0), channels = w.size(1) / p.positions;
      Tensor cut =
          select_channels(w.reshape({out, channels, p.positions}), 1, index).reshape({out, keep * p.positions});
      replace(w, cut);
      p.next_linear->in_features = keep * p.positions;
    }
  }
  return report;
}

}  // namespace headroom::nn
