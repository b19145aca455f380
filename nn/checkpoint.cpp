#include "nn/checkpoint.h"

#include <cmath>

#include "autograd/grad_mode.h"

namespace headroom::nn {

const char* checkpoint_mode_name(CheckpointMode mode) {
  switch (mode) {
    case CheckpointMode::none: return "none";
    case CheckpointMode::block: return "block";
    case CheckpointMode::sqrt: return "sqrt";
    case CheckpointMode::selective: return "selective";
  }
  return "?";
}

CheckpointMode parse_checkpoint_mode(std::string_view text, const char* what) {
  for (CheckpointMode m :
       {CheckpointMode::none, CheckpointMode::block, CheckpointMode::sqrt, CheckpointMode::selective})
    if (text == checkpoint_mode_name(m)) return m;
  throw ValueError(str_cat(what, ": unknown checkpointing mode '", text, "' (none, block, sqrt or selective)"));
}

int64_t default_checkpoint_segments(int64_t n) {
  return std::max<int64_t>(1, std::llround(std::sqrt(static_cast<double>(std::max<int64_t>(n, 0)))));
}

Tensor checkpoint_sequential(const std::vector<std::shared_ptr<Module>>& modules, const Tensor& x, int64_t segments,
                             const CheckpointOptions& options) {
  const auto n = static_cast<int64_t>(modules.size());
  HR_CHECK(segments >= 0 && segments <= std::max<int64_t>(n, 1), ValueError, "checkpoint_sequential: ", segments,
           " segments for ", n, " modules (0 picks round(sqrt(n)); at most one segment per module)");
  for (int64_t i = 0; i < n; ++i)
    HR_CHECK(modules[static_cast<size_t>(i)], ValueError, "checkpoint_sequential: module ", i, " is null");
  if (n == 0) return x;
  const int64_t k = segments == 0 ? default_checkpoint_segments(n) : segments;
  Tensor h = x;
  int64_t begin = 0;
  for (int64_t s = 0; s < k; ++s) {
    const int64_t len = n / k + (s < n % k ? 1 : 0);
    const int64_t end = begin + len;
    // The segment's modules by value: the function runs again in backward, after the caller's
    // vector may be gone.
    std::vector<std::shared_ptr<Module>> segment(modules.begin() + begin, modules.begin() + end);
    auto run = [segment](const std::vector<Tensor>& in) -> std::vector<Tensor> {
      Tensor y = in[0];
      for (const auto& m : segment) y = m->forward(y);
      return {y};
    };
    h = s + 1 < k ? checkpoint(run, {h}, options).front() : run({h}).front();
    begin = end;
  }
  return h;
}

Tensor run_checkpointed(const std::vector<std::shared_ptr<Module>>& modules, const Tensor& x, CheckpointMode mode) {
  switch (mode) {
    case CheckpointMode::none: break;
    case CheckpointMode::block:
    case CheckpointMode::selective: {
      const CheckpointOptions options =
          mode == CheckpointMode::selective ? selective_checkpoint_options() : CheckpointOptions{};
      Tensor h = x;
      for (const auto& m : modules) {
        CheckpointFn fn = [m](const std::vector<Tensor>& in) -> std::vector<Tensor> { return {m->forward(in[0])}; };
        h = checkpoint(fn, {h}, options).front();
      }
      return h;
    }
    case CheckpointMode::sqrt: return checkpoint_sequential(modules, x);
  }
  Tensor h = x;
  for (const auto& m : modules) h = m->forward(h);
  return h;
}

}  // namespace headroom::nn
