// Distillation loss (nn/distill.h), composed from differentiable ops: log_softmax of the student,
// softmax and log_softmax of the (constant) teacher, and cross_entropy. No new op and no new
// backward: the gradient of the soft term with respect to the student's logits comes out as
// alpha * T * (softmax(s/T) - softmax(t/T)) / N, which the tests check by hand.
#include "nn/distill.h"

#include <cmath>

namespace headroom::nn {

namespace {
void check_settings(double temperature, double alpha, const char* what) {
  HR_CHECK(std::isfinite(temperature) && temperature > 0, ValueError, what, ": temperature must be positive, got ",
           temperature);
  HR_CHECK(std::isfinite(alpha) && alpha >= 0 && alpha <= 1, ValueError, what, ": alpha must be in [0, 1], got ",
           alpha);
}
}  // namespace

Tensor distillation_loss(const Tensor& student, const Tensor& teacher, const Tensor& labels, double temperature,
                         double alpha) {
  check_settings(temperature, alpha, "distillation_loss");
  HR_CHECK(student.dim() == 2, ShapeError, "distillation_loss: student logits must be [N, C], got ",
           shape_str(student.shape()));
  HR_CHECK(teacher.shape() == student.shape(), ShapeError, "distillation_loss: teacher logits ",
           shape_str(teacher.shape()), " and student logits ", shape_str(student.shape()), " differ in shape");
  HR_CHECK(teacher.dtype() == student.dtype(), DTypeError, "distillation_loss: teacher logits are ",
           dtype_name(teacher.dtype()), ", student logits ", dtype_name(student.dtype()));
  HR_CHECK(labels.dim() == 1 && labels.size(0) == student.size(0), ShapeError, "distillation_loss: labels must be [",
           student.size(0), "], got ", shape_str(labels.shape()));
  HR_CHECK(!teacher.requires_grad(), ValueError,
           "distillation_loss: the teacher logits require grad, so the teacher's graph and activations are being "
           "kept; run the teacher under InferenceGuard or NoGradGuard");
  const double n = static_cast<double>(student.size(0));
  Tensor loss;
  if (alpha > 0) {
    const Tensor log_q = log_softmax(student / temperature, 1);  // the student's softened log-probabilities
    const Tensor p = softmax(teacher / temperature, 1);
    const Tensor log_p = log_softmax(teacher / temperature, 1);
    const Tensor kl = sum(p * (log_p - log_q)) / n;  // KL(p || q), batchmean
    loss = kl * (alpha * temperature * temperature);
  }
  if (alpha < 1) {
    const Tensor hard = cross_entropy(student, labels) * (1 - alpha);
    loss = loss.defined() ? loss + hard : hard;
  }
  return loss;
}

DistillationLoss::DistillationLoss(double temperature, double alpha) : temperature_(temperature), alpha_(alpha) {
  check_settings(temperature, alpha, "DistillationLoss");
}

}  // namespace headroom::nn
