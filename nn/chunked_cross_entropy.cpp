// chunked_cross_entropy: a custom autograd function over the backend's matmul and fused
// cross-entropy kernels (engine/backend.h), one chunk of rows at a time.
//
// Everything between the checks and record() runs without history (NoGradGuard): the function
// records a single node whose backward is written here. The chunk buffers are plain
// temporaries, allocated once per call and viewed per chunk (the last chunk may be shorter), so
// the allocator's peak holds one chunk of logits in forward and one chunk of logits plus one of
// dlogits in backward, all counted as MemoryCategory::temporary (in backward too, where the
// engine would count them as gradients). Gradients: dh rows written (=) chunk by chunk, dweight written by the
// first chunk's gemm (beta 0) and accumulated (+=, beta 1) by the others.
//
// Autocast (autograd/autocast.h): the function is a linear followed by a cross-entropy, and it
// asks the policy table for both halves -- AutocastOp::linear for the gemms' dtype (low: the
// scope's f16/bf16), AutocastOp::cross_entropy for the loss (f32). h and the weight are cast
// with detail::autocast_cast before the node is recorded, so the weight goes through the cast
// cache (a tied embedding is cast once per scope) and the gradients reach the f32 tensors
// through the casts' own nodes. The chunk buffers (logits, dlogits) then hold 16-bit values --
// half the bytes for the same chunk_rows, so the default takes twice the rows -- while the statistics stay f32: the kernels'
// log-sum-exp is f32 by contract, and the per-row losses, which the kernel writes in the
// logits' dtype, are summed in f32. What 16 bits cost: the logits and dlogits are rounded once
// each (as in linear + cross_entropy under autocast), each row's loss is rounded before the
// f32 sum, and dweight is accumulated chunk by chunk in the low dtype (one rounding per chunk,
// where the materialised path rounds once: fewer, larger chunks round less). f64 inputs are never cast.
#include "nn/chunked_cross_entropy.h"

#include <algorithm>

#include "autograd/autocast.h"
#include "autograd/function.h"
#include "autograd/functions.h"
#include "engine/backend.h"
#include "engine/memory.h"

namespace headroom::nn {

namespace {

// A [1, rows, cols] view of rows [r0, r0 + rows) of a contiguous [*, cols] matrix.
Tensor rows_3d(const Tensor& m, int64_t r0, int64_t rows, int64_t cols) {
  return m.as_strided({1, rows, cols}, {rows * cols, cols, 1}, m.offset() + r0 * cols);
}

// The same rows as a 2-d [rows, cols] view.
Tensor rows_2d(const Tensor& m, int64_t r0, int64_t rows, int64_t cols) {
  return m.as_strided({rows, cols}, {cols, 1}, m.offset() + r0 * cols);
}

Tensor slice_1d(const Tensor& v, int64_t r0, int64_t n) { return v.as_strided({n}, {1}, v.offset() + r0); }

}  // namespace

int64_t default_chunk_rows(int64_t vocab_size, int64_t element_size) {
  return std::max<int64_t>(
      1, kDefaultChunkBytes / (std::max<int64_t>(vocab_size, 1) * std::max<int64_t>(element_size, 1)));
}

namespace {

// The function proper on checked inputs of one dtype (the compute dtype); the loss is returned
// in loss_dtype.
Tensor chunked_impl(const Tensor& h, const Tensor& weight, const Tensor& target, int64_t chunk_rows,
                    int64_t ignore_index, DType loss_dtype) {
  const char* op = "chunked_cross_entropy";
  const int64_t n = h.size(0), c = h.size(1), vocab = weight.size(0);
  const int64_t rows =
      std::min(std::max<int64_t>(n, 1),
               chunk_rows > 0 ? chunk_rows : default_chunk_rows(vocab, static_cast<int64_t>(dtype_size(h.dtype()))));
  const bool grad = needs_grad({h, weight});
  Backend& be = backend_for(h.device());
  const TensorOptions i64 = TensorOptions().dtype(DType::i64).device(h.device());
  const DType stat = statistics_dtype(h.dtype());  // Note [statistics dtype] in engine/backend.h

  Tensor hc, wc, t, lse, count, out;
  {
    NoGradGuard no_grad;
    hc = h.detach().contiguous();
    wc = weight.detach().contiguous();
    // The kernel ignores negative targets: ignore_index becomes -1, any other negative is refused.
    t = target.to(DType::i64).contiguous();
    Tensor ignored = eq(t, Tensor::scalar(static_cast<double>(ignore_index), i64));
    if (n > 0) {
      Tensor checked = where(ignored, Tensor::scalar(0, i64), t);
      if (amin(checked).item<int64_t>() < 0) {
        std::vector<int64_t> tv = checked.to_vector<int64_t>();
        for (size_t i = 0; i < tv.size(); ++i)
          HR_CHECK(tv[i] >= 0, ValueError, op, ": target ", tv[i], " at row ", i, " is negative and not ignore_index (",
                   ignore_index, ")");
      }
    }
    t = where(ignored, Tensor::scalar(-1, i64), t).contiguous();
    count = ge(t, Tensor::scalar(0, i64)).to(stat).sum();

    Tensor losses = Tensor::empty({n}, hc.options());
    lse = Tensor::empty({n}, hc.options().dtype(stat));
    if (n > 0) {
      Tensor buffer = Tensor::empty({rows * vocab}, hc.options());
      const Tensor wt = wc.as_strided({1, c, vocab}, {vocab * c, 1, c}, wc.offset());  // W^T as a view
      for (int64_t r0 = 0; r0 < n; r0 += rows) {
        const int64_t m = std::min(rows, n - r0);
        const Tensor logits = rows_3d(buffer, 0, m, vocab);
        be.matmul(rows_3d(hc, r0, m, c), wt, logits, 0.0);
        be.cross_entropy_forward(rows_2d(buffer, 0, m, vocab), slice_1d(t, r0, m), slice_1d(losses, r0, m),
                                 slice_1d(lse, r0, m));
      }
    }
    out = (losses.to(stat).sum() / count).to(loss_dtype);  // per-row losses summed in f32 or f64
  }

  if (grad) {
    const bool gh = h.requires_grad(), gw = weight.requires_grad();
    SavedTensor sh(hc, op), sw(wc, op), st(t, op), slse(lse, op), scount(count, op);
    record(op, out, {h, weight}, [sh, sw, st, slse, scount, gh, gw, rows](const Tensor& g) -> std::vector<Tensor> {
      const Tensor& hs = sh.unpack();
      const Tensor& ws = sw.unpack();
      const Tensor& ts = st.unpack();
      const Tensor& ls = slse.unpack();
      const int64_t n_ = hs.size(0), c_ = hs.size(1), v_ = ws.size(0);
      Backend& b = backend_for(hs.device());
      // Every counted row's loss has weight g / count in the mean.
      Tensor per_row = (g.to(scount.unpack().dtype()) / scount.unpack()).to(hs.dtype());
      Tensor dlosses = per_row.reshape({1}).expand({n_}).contiguous();
      Tensor dh = gh ? Tensor::empty({n_, c_}, hs.options()) : Tensor();
      Tensor dw = gw ? Tensor::empty({v_, c_}, ws.options()) : Tensor();
      if (n_ == 0) {
        if (dw.defined()) b.fill(dw, 0.0);
        return {dh, dw};
      }
      Tensor logits, dlogits;
      {
        // Scratch, not gradients: the engine's gradient category would count them as such.
        CategoryScope scratch(MemoryCategory::temporary);
        logits = Tensor::empty({rows * v_}, hs.options());
        dlogits = Tensor::empty({rows * v_}, hs.options());
      }
      const Tensor wt = ws.as_strided({1, c_, v_}, {v_ * c_, 1, c_}, ws.offset());
      const Tensor w3 = ws.as_strided({1, v_, c_}, {v_ * c_, c_, 1}, ws.offset());
      const Tensor dw3 = gw ? dw.as_strided({1, v_, c_}, {v_ * c_, c_, 1}, dw.offset()) : Tensor();
      for (int64_t r0 = 0; r0 < n_; r0 += rows) {
        const int64_t m = std::min(rows, n_ - r0);
        b.matmul(rows_3d(hs, r0, m, c_), wt, rows_3d(logits, 0, m, v_), 0.0);
        b.cross_entropy_backward(rows_2d(logits, 0, m, v_), slice_1d(ts, r0, m), slice_1d(ls, r0, m),
                                 slice_1d(dlosses, r0, m), rows_2d(dlogits, 0, m, v_));
        if (gh) b.matmul(rows_3d(dlogits, 0, m, v_), w3, rows_3d(dh, r0, m, c_), 0.0);
        if (gw) {
          const Tensor dlt = dlogits.as_strided({1, v_, m}, {v_ * m, 1, v_}, dlogits.offset());  // dlogits^T
          b.matmul(dlt, rows_3d(hs, r0, m, c_), dw3, r0 == 0 ? 0.0 : 1.0);
        }
      }
      return {dh, dw};
    });
  }
  return out;
}

}  // namespace

Tensor chunked_cross_entropy(const Tensor& h, const Tensor& weight, const Tensor& target, int64_t chunk_rows,
                             int64_t ignore_index) {
  const char* op = "chunked_cross_entropy";
  HR_CHECK(h.defined() && weight.defined() && target.defined(), ValueError, op,
           ": h, weight and target must be defined");
  HR_CHECK(h.dim() == 2, ShapeError, op, ": h must be [N, C], got ", describe(h));
  HR_CHECK(weight.dim() == 2, ShapeError, op, ": weight must be [V, C], got ", describe(weight));
  HR_CHECK(is_floating(h.dtype()), DTypeError, op, ": h must be a float tensor, got ", describe(h));
  HR_CHECK(is_floating(weight.dtype()), DTypeError, op, ": weight must be a float tensor, got ", describe(weight));
  // Under autocast f32, f16 and bf16 mix (both are cast to the scope's dtype); f64 never does.
  const bool amp = autocast_enabled(h.device().type) && h.dtype() != DType::f64 && weight.dtype() != DType::f64;
  HR_CHECK(amp || weight.dtype() == h.dtype(), DTypeError, op, ": weight is ", dtype_name(weight.dtype()), " but h is ",
           dtype_name(h.dtype()), " (cast one of them)");
  HR_CHECK(weight.size(1) == h.size(1), ShapeError, op, ": h ", shape_str(h.shape()), " has ", h.size(1),
           " features but weight ", shape_str(weight.shape()), " has ", weight.size(1));
  HR_CHECK(target.dim() == 1 && target.size(0) == h.size(0), ShapeError, op, ": target must be [", h.size(0),
           "] for h ", shape_str(h.shape()), ", got ", shape_str(target.shape()));
  HR_CHECK(is_integral(target.dtype()) && target.dtype() != DType::boolean, DTypeError, op,
           ": target must be an integer tensor of class indices, got ", describe(target));
  HR_CHECK(h.device() == weight.device() && h.device() == target.device(), DeviceError, op,
           ": h, weight and target must be on one device, got h on ", h.device().str(), ", weight on ",
           weight.device().str(), ", target on ", target.device().str());
  HR_CHECK(chunk_rows >= 0, ValueError, op, ": chunk_rows must be >= 0 (0: default), got ", chunk_rows);
  HR_CHECK(weight.size(0) > 0 || h.size(0) == 0, ShapeError, op, ": weight ", shape_str(weight.shape()),
           " has no classes");

  // Autocast: f32/f16/bf16 inputs run the gemms in the dtype linear would use in this scope
  // (its table entry) and give the loss in cross_entropy's (f32).
  if (amp) {
    DType compute = h.dtype();
    detail::autocast_target(AutocastOp::linear, {&h, &weight}, &compute);
    const DType loss_dtype = autocast_policy(AutocastOp::cross_entropy) == CastPolicy::f32 ? DType::f32 : compute;
    return chunked_impl(detail::autocast_cast(h, compute), detail::autocast_cast(weight, compute), target, chunk_rows,
                        ignore_index, loss_dtype);
  }
  return chunked_impl(h, weight, target, chunk_rows, ignore_index, h.dtype());
}

}  // namespace headroom::nn
