// Whether ops record history. Thread-local, like PyTorch's: one thread's no_grad does not
// switch off another's autograd.
#pragma once

namespace headroom {

class GradMode {
 public:
  static bool is_enabled();
  static void set_enabled(bool enabled);
  static bool is_inference();
  static void set_inference(bool inference);
};

// Within its scope no op records history: results do not require grad, nothing is saved for
// backward. Use it for evaluation and for optimizer updates.
class NoGradGuard {
 public:
  NoGradGuard() : prev_(GradMode::is_enabled()) { GradMode::set_enabled(false); }
  ~NoGradGuard() { GradMode::set_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// Re-enables recording inside a no_grad scope (e.g. a recomputed segment in backward).
class EnableGradGuard {
 public:
  EnableGradGuard() : prev_(GradMode::is_enabled()) { GradMode::set_enabled(true); }
  ~EnableGradGuard() { GradMode::set_enabled(prev_); }
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool prev_;
};

// Inference: no history is recorded, as under NoGradGuard. In-place edits still bump version
// counters, so a tensor saved by a graph built outside the scope and edited inside it is caught.
class InferenceGuard {
 public:
  InferenceGuard() : prev_grad_(GradMode::is_enabled()), prev_inf_(GradMode::is_inference()) {
    GradMode::set_enabled(false);
    GradMode::set_inference(true);
  }
  ~InferenceGuard() {
    GradMode::set_enabled(prev_grad_);
    GradMode::set_inference(prev_inf_);
  }
  InferenceGuard(const InferenceGuard&) = delete;
  InferenceGuard& operator=(const InferenceGuard&) = delete;

 private:
  bool prev_grad_;
  bool prev_inf_;
};

}  // namespace headroom
