// Knowledge distillation (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural
// Network", 2015): a small student learns from a trained teacher's softened outputs as well as
// from the labels.
//
//   loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
//        + (1 - alpha) * cross_entropy(student, labels)
//
// KL is summed over the classes and averaged over the batch (PyTorch's kl_div with reduction
// "batchmean"). The T^2 keeps the soft term's gradient, which shrinks as 1/T^2, on the scale of
// the hard term's whatever the temperature.
//
// Memory note: the teacher runs forward only. Under InferenceGuard (or NoGradGuard) it records
// no graph, so none of its activations are saved for a backward that will never come: each layer's
// output is freed as soon as the next one has read it, and a distillation step costs the student's
// activations plus the teacher's largest layer or two of temporaries, not two models' activations.
// The loss refuses teacher logits that require grad, which would mean the teacher's whole graph
// is being kept alive:
//
//   Tensor teacher_logits;
//   { InferenceGuard inference; teacher_logits = teacher(images); }
//   Tensor loss = nn::distillation_loss(student(images), teacher_logits, labels, /*T=*/4, /*alpha=*/0.9);
#pragma once

#include "autograd/functions.h"

namespace headroom::nn {

// student_logits and teacher_logits [N, C] of one dtype, labels [N] class indices; temperature
// > 0, alpha in [0, 1]. ValueError / ShapeError naming what is wrong, including teacher logits
// that require grad (run the teacher under InferenceGuard or NoGradGuard). The gradient flows to
// the student only.
Tensor distillation_loss(const Tensor& student_logits, const Tensor& teacher_logits, const Tensor& labels,
                         double temperature, double alpha);

// The loss as a callable with its temperature and alpha checked once, like nn::CrossEntropyLoss.
class DistillationLoss {
 public:
  DistillationLoss(double temperature, double alpha);
  Tensor operator()(const Tensor& student_logits, const Tensor& teacher_logits, const Tensor& labels) const {
    return distillation_loss(student_logits, teacher_logits, labels, temperature_, alpha_);
  }
  double temperature() const { return temperature_; }
  double alpha() const { return alpha_; }

 private:
  double temperature_, alpha_;
};

}  // namespace headroom::nn
