// Normalisation, losses and their friends: softmax, log_softmax, cross_entropy, mse_loss,
// layer_norm, batch_norm, group_norm, embedding and dropout, each with its gradient.
//
// The fused ops check their arguments here (shapes, dtypes, devices, named in the message),
// make their operands contiguous, call one forward kernel, and save for backward only what the
// backward kernel reads: softmax its output (not its input), cross-entropy the logits and an
// [N] logsumexp (not an [N, C] probability tensor), the norms their input and [rows] or [C]
// statistics -- f32, f64 for f64 data (Note [statistics dtype] in engine/backend.h) -- dropout a one-byte keep mask. Outputs are saved through a detached alias,
// so that a graph dropped before backward does not keep itself alive through its own output.
// mse_loss and embedding are composites of ops that already have gradients.
//
// Under autocast (autograd/autocast.h) softmax, log_softmax, cross_entropy, mse_loss and
// layer_norm upcast 16-bit inputs to f32 first. batch_norm casts nothing (policy f32_params): a
// 16-bit input runs with the f32 weight, bias and running statistics as they are, the kernels
// computing in f32, and the output keeps the input's dtype. group_norm follows the same policy.
#include <cmath>

#include "autograd/autocast.h"
#include "autograd/checkpoint.h"
#include "autograd/functions/internal.h"

namespace headroom {

using namespace detail;

namespace {

// The contiguous row-major form of t as `shape` (t must have that many elements).
Tensor as_shape(const Tensor& t, const Shape& shape) {
  Tensor c = contiguous_raw(t);
  return c.as_strided(shape, contiguous_strides(shape), c.offset());
}

// g in dtype and contiguous, as a backward kernel wants it.
Tensor grad_for_kernel(const Tensor& g, DType dtype) { return contiguous_raw(cast_raw(g, dtype)); }

void check_reduction(const char* op, const std::string& reduction) {
  HR_CHECK(reduction == "mean" || reduction == "sum" || reduction == "none", ValueError, op,
           ": reduction must be \"mean\", \"sum\" or \"none\", got \"", reduction, "\"");
}

// Float dtype that statistics and counts are kept in: f64 for f64, f32 otherwise.
DType stat_dtype(DType d) { return statistics_dtype(d); }

Tensor softmax_impl(const Tensor& x, int64_t dim, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  check_floating(op, x);
  if (DType f32; autocast_target(log ? AutocastOp::log_softmax : AutocastOp::softmax, {&x}, &f32))
    return softmax_impl(autocast_cast(x, f32), dim, log);
  const int64_t d = x.dim() == 0 ? wrap_dim(dim, 1, op) : wrap_dim(dim, x.dim(), op);
  Tensor xc = contiguous_raw(x);
  Tensor out = empty_like(xc);
  if (out.numel() > 0) backend_for(x.device()).softmax_forward(xc, out, d, log);
  if (needs_grad({x})) {
    SavedTensor so(out.detach(), op);
    record(op, out, {x}, [so, d, log](const Tensor& g) -> std::vector<Tensor> {
      const Tensor& y = so.unpack();
      Tensor dx = empty_like(y);
      if (y.numel() > 0) backend_for(y.device()).softmax_backward(y, grad_for_kernel(g, y.dtype()), dx, d, log);
      return {dx};
    });
  }
  return out;
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, true); }

// ---- cross-entropy ----

Tensor cross_entropy(const Tensor& logits, const Tensor& target, const std::string& reduction, int64_t ignore_index) {
  const char* op = "cross_entropy";
  check_reduction(op, reduction);
  check_floating(op, logits, "logits");
  if (DType f32; autocast_target(AutocastOp::cross_entropy, {&logits}, &f32))
    return cross_entropy(autocast_cast(logits, f32), target, reduction, ignore_index);
  HR_CHECK(logits.dim() == 2, ShapeError, op, ": logits must be [N, C], got ", describe(logits));
  HR_CHECK(target.dim() == 1, ShapeError, op, ": target must be [N] class indices, got ", describe(target));
  HR_CHECK(is_integral(target.dtype()) && target.dtype() != DType::boolean, DTypeError, op,
           ": target must be an integer tensor of class indices, got ", describe(target));
  HR_CHECK(target.size(0) == logits.size(0), ShapeError, op, ": logits ", shape_str(logits.shape()), " hold ",
           logits.size(0), " samples but target ", shape_str(target.shape()), " has ", target.size(0));
  check_same_device(op, {logits, target});
  const int64_t n = logits.size(0), c = logits.size(1);
  HR_CHECK(c > 0 || n == 0, ShapeError, op, ": logits ", shape_str(logits.shape()), " have no classes");
  Backend& be = backend_for(logits.device());

  // The kernel ignores negative targets: map ignore_index to -1, and refuse any other negative.
  Tensor t = contiguous_raw(cast_raw(target, DType::i64));
  Tensor ignored = binary_raw(
      BinaryOp::eq, t,
      Tensor::scalar(static_cast<double>(ignore_index), TensorOptions().dtype(DType::i64).device(t.device())));
  Tensor neg_one = Tensor::scalar(-1, TensorOptions().dtype(DType::i64).device(t.device()));
  Tensor zero = Tensor::scalar(0, TensorOptions().dtype(DType::i64).device(t.device()));
  if (n > 0) {
    // The smallest and largest target in one read back to the host: one synchronisation on a
    // GPU, where a kernel cannot throw and must never index past the row.
    Tensor checked = where_raw(ignored, zero, t);
    Tensor bounds = Tensor::empty({2}, t.options());
    copy_tensor(bounds.slice(0, 0, 1), reduce_raw(ReduceOp::min, checked, {}, false).reshape({1}));
    copy_tensor(bounds.slice(0, 1, 2), reduce_raw(ReduceOp::max, checked, {}, false).reshape({1}));
    const std::vector<int64_t> b = bounds.to_vector<int64_t>();
    if (b[0] < 0 || b[1] >= c) {
      std::vector<int64_t> tv = checked.to_vector<int64_t>();
      for (size_t i = 0; i < tv.size(); ++i) {
        HR_CHECK(tv[i] >= 0, ValueError, op, ": target ", tv[i], " at row ", i, " is negative and not ignore_index (",
                 ignore_index, ")");
        HR_CHECK(tv[i] < c, ValueError, op, ": target ", tv[i], " at row ", i, " is out of range for ", c,
                 " classes (logits ", shape_str(logits.shape()), ")");
      }
    }
  }
  t = contiguous_raw(where_raw(ignored, neg_one, t));

  Tensor lc = contiguous_raw(logits);
  Tensor losses = Tensor::empty({n}, lc.options());
  Tensor lse = Tensor::empty({n}, lc.options().dtype(statistics_dtype(lc.dtype())));  // Note [statistics dtype]
  if (n > 0) be.cross_entropy_forward(lc, t, losses, lse);

  Tensor out, count;
  const DType sd = stat_dtype(lc.dtype());
  if (reduction == "none") {
    out = losses;
  } else if (reduction == "sum") {
    out = reduce_raw(ReduceOp::sum, losses, {}, false);
  } else {
    // Mean over the samples that count; 0 / 0 (all ignored) gives NaN, as in PyTorch.
    count = reduce_raw(ReduceOp::sum, cast_raw(binary_raw(BinaryOp::ge, t, zero), sd), {}, false);
    out = cast_raw(binary_raw(BinaryOp::div, reduce_raw(ReduceOp::sum, cast_raw(losses, sd), {}, false), count),
                   lc.dtype());
  }
  if (needs_grad({logits})) {
    SavedTensor sl(lc, op), st(t, op), slse(lse, op), scount(count, op);
    std::string red = reduction;
    record(op, out, {logits}, [sl, st, slse, scount, red, n](const Tensor& g) -> std::vector<Tensor> {
      const Tensor& l = sl.unpack();
      const Tensor& valid = scount.unpack();
      Tensor dl;
      if (red == "none") {
        dl = grad_for_kernel(g, l.dtype());
      } else {
        Tensor per_sample = red == "sum" ? g : binary_raw(BinaryOp::div, cast_raw(g, valid.dtype()), valid);
        Tensor b = cast_raw(per_sample, l.dtype());
        dl = contiguous_raw(b.as_strided({n}, {0}, b.offset()));
      }
      Tensor dlogits = empty_like(l);
      if (l.numel() > 0) backend_for(l.device()).cross_entropy_backward(l, st.unpack(), slse.unpack(), dl, dlogits);
      return {dlogits};
    });
  }
  return out;
}

// ---- mean squared error ----

Tensor mse_loss(const Tensor& input, const Tensor& target, const std::string& reduction) {
  const char* op = "mse_loss";
  check_reduction(op, reduction);
  check_floating(op, input, "input");
  check_floating(op, target, "target");
  if (DType f32; autocast_target(AutocastOp::mse_loss, {&input, &target}, &f32))
    return mse_loss(autocast_cast(input, f32), autocast_cast(target, f32), reduction);
  HR_CHECK(input.shape() == target.shape(), ShapeError, op, ": input ", shape_str(input.shape()), " and target ",
           shape_str(target.shape()), " differ in shape");
  check_same_device(op, {input, target});
  Tensor sq = square(input - target);
  if (reduction == "none") return sq;
  return reduction == "sum" ? sum(sq) : mean(sq);
}

// ---- layer norm ----

Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight, const Tensor& bias,
                  double eps) {
  const char* op = "layer_norm";
  check_floating(op, x);
  if (DType f32; autocast_target(AutocastOp::layer_norm, {&x, &weight, &bias}, &f32))
    return layer_norm(autocast_cast(x, f32), normalized_shape, autocast_cast(weight, f32), autocast_cast(bias, f32),
                      eps);
  const auto k = static_cast<int64_t>(normalized_shape.size());
  HR_CHECK(k > 0, ValueError, op, ": normalized_shape must name at least one dim");
  bool fits = k <= x.dim();
  for (int64_t i = 0; fits && i < k; ++i) fits = x.size(x.dim() - k + i) == normalized_shape[static_cast<size_t>(i)];
  HR_CHECK(fits, ShapeError, op, ": normalized_shape ", shape_str(normalized_shape),
           " does not match the trailing dims of the input ", describe(x));
  for (const auto& [p, name] : {std::pair{weight, "weight"}, std::pair{bias, "bias"}}) {
    if (!p.defined()) continue;
    HR_CHECK(p.shape() == normalized_shape, ShapeError, op, ": ", name, " has shape ", shape_str(p.shape()),
             " but normalized_shape is ", shape_str(normalized_shape));
    check_floating(op, p, name);
  }
  check_same_device(op, {x, weight, bias});
  HR_CHECK(eps >= 0, ValueError, op, ": eps must be non-negative, got ", eps);
  const int64_t n = shape_numel(normalized_shape);
  HR_CHECK(n > 0, ShapeError, op, ": normalized_shape ", shape_str(normalized_shape), " has no elements");
  const int64_t m = x.numel() / n;

  Tensor x2 = as_shape(x, {m, n});
  Tensor w1 = weight.defined() ? as_shape(weight, {n}) : Tensor();
  Tensor b1 = bias.defined() ? as_shape(bias, {n}) : Tensor();
  Tensor y2 = Tensor::empty({m, n}, x.options());
  Tensor mean = Tensor::empty({m}, x.options().dtype(statistics_dtype(x.dtype())));  // Note [statistics dtype]
  Tensor rstd = Tensor::empty({m}, x.options().dtype(statistics_dtype(x.dtype())));
  if (m > 0) backend_for(x.device()).layer_norm_forward(x2, w1, b1, eps, y2, mean, rstd);
  Tensor out = y2.as_strided(x.shape(), contiguous_strides(x.shape()), y2.offset());

  if (needs_grad({x, weight, bias})) {
    const bool gx = x.requires_grad(), gw = weight.defined() && weight.requires_grad();
    const bool gb = bias.defined() && bias.requires_grad();
    SavedTensor sx(x2, op), sw(w1, op), smean(mean, op), srstd(rstd, op);
    Shape x_shape = x.shape();
    Shape p_shape = normalized_shape;
    DType wdt = weight.defined() ? weight.dtype() : x.dtype();
    DType bdt = bias.defined() ? bias.dtype() : x.dtype();
    record(
        op, out, {x, weight, bias},
        [sx, sw, smean, srstd, x_shape, p_shape, gx, gw, gb, wdt, bdt, m, n](const Tensor& g) -> std::vector<Tensor> {
          const Tensor& xs = sx.unpack();
          Tensor dy = as_shape(cast_raw(g, xs.dtype()), {m, n});
          Tensor dx = gx ? empty_like(xs) : Tensor();
          Tensor dw = gw ? Tensor::empty({n}, xs.options().dtype(wdt)) : Tensor();
          Tensor db = gb ? Tensor::empty({n}, xs.options().dtype(bdt)) : Tensor();
          backend_for(xs.device()).layer_norm_backward(dy, xs, sw.unpack(), smean.unpack(), srstd.unpack(), dx, dw, db);
          auto reshaped = [](const Tensor& t, const Shape& s) {
            return t.defined() ? t.as_strided(s, contiguous_strides(s), t.offset()) : Tensor();
          };
          return {reshaped(dx, x_shape), reshaped(dw, p_shape), reshaped(db, p_shape)};
        });
  }
  return out;
}

// ---- batch norm ----

namespace {

// Records the node of a per-channel normalisation (batch_norm, group_norm): it saves x as
// [N, C, S], the weight and the two statistics the forward kernel wrote; backward allocates dx,
// dweight and dbias where they are wanted (the parameters' gradients in their own dtypes) and
// lets `run` -- the backend's backward -- write them.
template <typename Run>
void record_channel_norm(const char* op, const Tensor& out, const Tensor& x, const Tensor& x3, const Tensor& weight,
                         const Tensor& bias, const Tensor& stat_a, const Tensor& stat_b, Run run) {
  const bool gx = x.requires_grad(), gw = weight.defined() && weight.requires_grad();
  const bool gb = bias.defined() && bias.requires_grad();
  SavedTensor sx(x3, op), sw(weight, op), sa(stat_a, op), sb(stat_b, op);
  const Shape x_shape = x.shape();
  const int64_t c = x3.size(1);
  const DType wdt = weight.defined() ? weight.dtype() : x.dtype();
  const DType bdt = bias.defined() ? bias.dtype() : x.dtype();
  record(op, out, {x, weight, bias},
         [sx, sw, sa, sb, x_shape, gx, gw, gb, wdt, bdt, c, run](const Tensor& g) -> std::vector<Tensor> {
           const Tensor& xs = sx.unpack();
           Tensor dy = as_shape(cast_raw(g, xs.dtype()), xs.shape());
           Tensor dx = gx ? empty_like(xs) : Tensor();
           Tensor dw = gw ? Tensor::empty({c}, xs.options().dtype(wdt)) : Tensor();
           Tensor db = gb ? Tensor::empty({c}, xs.options().dtype(bdt)) : Tensor();
           run(backend_for(xs.device()), dy, xs, sw.unpack(), sa.unpack(), sb.unpack(), dx, dw, db);
           if (dx.defined()) dx = dx.as_strided(x_shape, contiguous_strides(x_shape), dx.offset());
           return {dx, dw, db};
         });
}

}  // namespace

Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                  const Tensor& running_var, bool training, double momentum, double eps) {
  const char* op = "batch_norm";
  check_floating(op, x);
  // Policy f32_params: never true today; kept so that the table alone decides.
  if (DType to; autocast_target(AutocastOp::batch_norm, {&x, &weight, &bias}, &to))
    return batch_norm(autocast_cast(x, to), autocast_cast(weight, to), autocast_cast(bias, to), running_mean,
                      running_var, training, momentum, eps);
  HR_CHECK(x.dim() >= 2, ShapeError, op, ": input must be [N, C, ...], got ", describe(x));
  const int64_t n = x.size(0), c = x.size(1);
  const int64_t s = c == 0 ? 0 : x.numel() / std::max<int64_t>(n * c, 1);
  for (const auto& [p, name] : {std::pair{weight, "weight"}, std::pair{bias, "bias"},
                                std::pair{running_mean, "running_mean"}, std::pair{running_var, "running_var"}}) {
    if (!p.defined()) continue;
    HR_CHECK(p.dim() == 1 && p.size(0) == c, ShapeError, op, ": ", name, " has shape ", shape_str(p.shape()),
             " but the input ", shape_str(x.shape()), " has ", c, " channels (expected ", shape_str({c}), ")");
    check_floating(op, p, name);
  }
  HR_CHECK(running_mean.defined() == running_var.defined(), ValueError, op,
           ": running_mean and running_var must be given together");
  check_same_device(op, {x, weight, bias, running_mean, running_var});
  HR_CHECK(eps >= 0, ValueError, op, ": eps must be non-negative, got ", eps);
  // Without running statistics, evaluation normalises with the batch's own (as PyTorch does).
  const bool batch_stats = training || !running_mean.defined();
  // A checkpoint's re-run normalises as the forward did but leaves the running statistics as
  // the forward left them: they are updated once per forward (Note [recompute state]).
  const bool update_running = training && running_mean.defined() && !is_recomputing();
  const Tensor no_stats;
  const Tensor& run_mean = training && !update_running ? no_stats : running_mean;
  const Tensor& run_var = training && !update_running ? no_stats : running_var;
  HR_CHECK(!batch_stats || n * s > 1, ValueError, op, ": training needs more than one value per channel, got input ",
           shape_str(x.shape()));

  Tensor x3 = as_shape(x, {n, c, s});
  Tensor y3 = Tensor::empty({n, c, s}, x.options());
  Tensor save_mean = Tensor::empty({c}, x.options().dtype(statistics_dtype(x.dtype())));  // Note [statistics dtype]
  Tensor save_invstd = Tensor::empty({c}, x.options().dtype(statistics_dtype(x.dtype())));
  {
    // The running statistics are buffers: updated in place, never part of the graph.
    NoGradGuard no_grad;
    backend_for(x.device())
        .batch_norm_forward(x3, weight, bias, run_mean, run_var, batch_stats, momentum, eps, y3, save_mean,
                            save_invstd);
    if (update_running && !GradMode::is_inference()) {
      running_mean.bump_version();
      running_var.bump_version();
    }
  }
  Tensor out = y3.as_strided(x.shape(), contiguous_strides(x.shape()), y3.offset());

  if (needs_grad({x, weight, bias}))
    record_channel_norm(
        op, out, x, x3, weight, bias, save_mean, save_invstd,
        [batch_stats](Backend& be, const Tensor& dy, const Tensor& xs, const Tensor& w, const Tensor& mean,
                      const Tensor& invstd, const Tensor& dx, const Tensor& dw,
                      const Tensor& db) { be.batch_norm_backward(dy, xs, w, mean, invstd, batch_stats, dx, dw, db); });
  return out;
}

// ---- group norm ----

Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias, double eps) {
  const char* op = "group_norm";
  HR_CHECK(x.defined() && x.dim() >= 2, ShapeError, op, ": expected input [N, C, *], got ",
           x.defined() ? shape_str(x.shape()) : std::string("an undefined tensor"));
  check_floating(op, x);
  const int64_t n = x.size(0), c = x.size(1);
  HR_CHECK(groups > 0 && c % groups == 0, ValueError, op, ": ", c, " channels of input ", shape_str(x.shape()),
           " cannot be split into ", groups, " groups");
  HR_CHECK(eps >= 0, ValueError, op, ": eps must be non-negative, got ", eps);
  // Policy f32_params, as batch_norm's: never true today; kept so that the table alone decides.
  if (DType to; autocast_target(AutocastOp::group_norm, {&x, &weight, &bias}, &to))
    return group_norm(autocast_cast(x, to), groups, autocast_cast(weight, to), autocast_cast(bias, to), eps);
  // Under that policy nothing is cast. A 16-bit input runs with f32
  // weight and bias as they are (the kernels compute in f32 and write the input's dtype), so no
  // f32 copy of the input is kept for backward. Otherwise the parameters have the input's dtype.
  const bool half_input = x.dtype() == DType::f16 || x.dtype() == DType::bf16;
  for (const auto& [p, what] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"}}) {
    if (!p->defined()) continue;
    HR_CHECK(p->dim() == 1 && p->size(0) == c, ShapeError, op, ": ", what, " has shape ", shape_str(p->shape()),
             ", expected ", shape_str(Shape{c}), " for input ", shape_str(x.shape()));
    HR_CHECK(p->dtype() == x.dtype() || (half_input && p->dtype() == DType::f32), DTypeError, op, ": ", what, " is ",
             dtype_name(p->dtype()), " but the input is ", dtype_name(x.dtype()),
             " (parameters take the input's dtype, or f32 with a 16-bit input)");
  }
  check_same_device(op, {x, weight, bias});
  const int64_t s = c == 0 || n == 0 ? 0 : x.numel() / (n * c);

  Tensor x3 = as_shape(x, {n, c, s});
  Tensor y3 = Tensor::empty({n, c, s}, x.options());
  Tensor save_mean =
      Tensor::empty({n, groups}, x.options().dtype(statistics_dtype(x.dtype())));  // Note [statistics dtype]
  Tensor save_rstd = Tensor::empty({n, groups}, x.options().dtype(statistics_dtype(x.dtype())));
  if (x.numel() > 0) {
    HR_CHECK(s > 0, ValueError, op, ": cannot normalise groups of size 0 in input ", shape_str(x.shape()));
    backend_for(x.device()).group_norm_forward(x3, weight, bias, groups, eps, y3, save_mean, save_rstd);
  }
  Tensor out = y3.as_strided(x.shape(), contiguous_strides(x.shape()), y3.offset());

  // Saved: x (alive anyway as the previous op's output), weight and the [N, G] statistics --
  // never y or the normalised input.
  if (needs_grad({x, weight, bias}))
    record_channel_norm(op, out, x, x3, weight, bias, save_mean, save_rstd,
                        [groups](Backend& be, const Tensor& dy, const Tensor& xs, const Tensor& w, const Tensor& mean,
                                 const Tensor& rstd, const Tensor& dx, const Tensor& dw, const Tensor& db) {
                          be.group_norm_backward(dy, xs, w, mean, rstd, groups, dx, dw, db);
                        });
  return out;
}

// ---- embedding ----

Tensor embedding(const Tensor& weight, const Tensor& indices) {
  const char* op = "embedding";
  HR_CHECK(weight.dim() == 2, ShapeError, op, ": weight must be [num_embeddings, dim], got ", describe(weight));
  HR_CHECK(is_integral(indices.dtype()) && indices.dtype() != DType::boolean, DTypeError, op,
           ": indices must be an integer tensor, got ", describe(indices));
  check_same_device(op, {weight, indices});
  Tensor flat = as_shape(indices, {indices.numel()});
  Tensor rows;
  try {
    rows = index_select(weight, 0, flat);  // its gradient is an index_add into the weight
  } catch (const ValueError& e) {
    throw ValueError(str_cat(op, ": an index is out of range for weight ", describe(weight), ": ", e.what()));
  }
  Shape shape = indices.shape();
  shape.push_back(weight.size(1));
  return reshape(rows, shape);
}

// ---- dropout ----

Tensor dropout(const Tensor& x, double p, bool training) {
  const char* op = "dropout";
  HR_CHECK(p >= 0 && p < 1, ValueError, op, ": p must be in [0, 1), got ", p);
  if (!training || p == 0) return x;
  check_floating(op, x);
  // The mask comes from the global generator, so manual_seed fixes it; a one-byte keep mask is
  // all that backward needs.
  Tensor u = Tensor::rand(x.shape(), x.options().dtype(DType::f32));
  Tensor keep = binary_raw(BinaryOp::ge, u, Tensor::scalar(p, u.options()));
  const double scale = 1.0 / (1.0 - p);
  Tensor out =
      binary_raw(BinaryOp::mul, binary_raw(BinaryOp::mul, x, cast_raw(keep, x.dtype())), scalar_like(x, scale));
  if (needs_grad({x})) {
    SavedTensor sk(keep, op);
    record(op, out, {x}, [sk, scale](const Tensor& g) -> std::vector<Tensor> {
      return {binary_raw(BinaryOp::mul, binary_raw(BinaryOp::mul, g, cast_raw(sk.unpack(), g.dtype())),
                         scalar_like(g, scale))};
    });
  }
  return out;
}

}  // namespace headroom
