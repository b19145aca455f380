// The backend interface: every op a device must implement, and nothing about graphs.
//
// One Backend per device kind, implemented in kernels/cpu and kernels/cuda. The functions in
// autograd/functions compute shapes, dtypes and broadcasting, allocate outputs, and call these;
// a backend only does the arithmetic. Contract for every op:
//  - all tensors are on one device of the backend's kind (the op's entry point checks);
//  - outputs are allocated by the caller with the right shape and dtype;
//  - "written" outputs are overwritten (=); none is accumulated into unless a comment says so;
//  - inputs may have any strides unless a comment asks for contiguous.
// The ops are one table (engine/op_table.h, Note [op table]); adding one means a line there, two
// kernels, a function with its gradient in autograd/functions, and tests. Note [op count] below
// keeps the enums and their tables in step.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/device.h"
#include "engine/memory.h"
#include "engine/tensor.h"
#include "engine/op_table.h"

namespace headroom {

// Note [statistics dtype]: what an op saves for its backward about its input -- cross-entropy's
// and attention's log-sum-exp, layer/batch/group norm's mean and rstd -- is kept in f32 for
// f32, f16 and bf16 data (reduced precision accumulates in f32) and in f64 for f64 data, so that
// f64 gradients are f64-accurate and gradcheck in f64 tests the formulas, not f32 rounding.
inline DType statistics_dtype(DType data) { return data == DType::f64 ? DType::f64 : DType::f32; }

enum class UnaryOp : uint8_t {
  neg,
  exp,
  log,
  sqrt,
  abs,
  relu,
  gelu,
  tanh,
  sigmoid,
  sign,
  reciprocal,
  square,
  logical_not,
  kCount
};
enum class BinaryOp : uint8_t {
  add,
  sub,
  mul,
  div,
  pow,
  maximum,
  minimum,
  eq,
  ne,
  lt,
  le,
  gt,
  ge,             // comparisons write a bool output
  relu_backward,  // a = grad, b = x: grad where x > 0, else 0
  gelu_backward,  // a = grad, b = x: grad * d gelu(x) / dx (tanh form)
  kCount
};
enum class ReduceOp : uint8_t { sum, mean, max, min, argmax, argmin, kCount };

// Note [op count]: adding an op to an enum breaks these until its name tables are updated.
static_assert(static_cast<int>(UnaryOp::kCount) == 13, "update unary_op_name and the backends");
static_assert(static_cast<int>(BinaryOp::kCount) == 15, "update binary_op_name and the backends");
static_assert(static_cast<int>(ReduceOp::kCount) == 6, "update reduce_op_name and the backends");
const char* unary_op_name(UnaryOp op);
const char* binary_op_name(BinaryOp op);
const char* reduce_op_name(ReduceOp op);
bool is_comparison(BinaryOp op);

struct Conv2dParams {
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;
  int64_t groups = 1;
};

// The constants of one Adam / AdamW step (Backend::adam_update), worked out in double on the
// host and rounded once to the dtype the kernel computes in. Note [optimizer step constants]:
// the kernel must not derive any of them itself -- 1 - beta2 taken in f32 from beta2 already
// rounded to f32 is 1 - 0.999f = 0.00099998713, not 0.001, which made a fused first step 6.7e-6
// too large against the generic path of Tensor ops (whose scalars are doubles rounded once).
// make() is the one place they are folded.
struct AdamStep {
  double beta1 = 0, one_minus_beta1 = 1;  // m = beta1 m + one_minus_beta1 d
  double beta2 = 0, one_minus_beta2 = 1;  // v = beta2 v + one_minus_beta2 d^2
  double eps = 0;
  double decay = 1;         // AdamW: p is first scaled by 1 - lr weight_decay (else 1)
  double l2 = 0;            // Adam: d = g + weight_decay p (else 0)
  double step_size = 0;     // lr / bias_correction1
  double inv_sqrt_bc2 = 1;  // 1 / sqrt(bias_correction2)
  static AdamStep make(double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                       double bias_correction1, double bias_correction2);
};

struct Pool2dParams {
  int64_t kernel_h = 2, kernel_w = 2;
  int64_t stride_h = 2, stride_w = 2;
  int64_t pad_h = 0, pad_w = 0;
  bool count_include_pad = true;  // average pooling: divide by the full window
};

// One op's device time in a profiled step (Backend::stop_op_profile).
struct OpTime {
  std::string name;
  int64_t calls = 0;
  double ms = 0;  // summed device time between each call's two events
};

// What a device is (device_properties): for the reports, and for the planner's sense of how many
// devices compute at once (headroom-bench and headroom-plan ask here, not the kernels).
struct DeviceProperties {
  std::string name;          // "cpu", "NVIDIA H200"
  int64_t total_memory = 0;  // bytes: the GPU's; for the cpu devices, the host's, which they share
  int compute_units = 0;     // the host's cores, or the GPU's streaming multiprocessors
  int threads_per_op = 1;    // cpu: the threads one op spreads over (HEADROOM_NUM_THREADS); cuda: 1
  int capability = 0;        // cuda: the compute capability, 90 for sm_90; 0 on the cpu
};
// Loads the device's backend; DeviceError for a device that does not exist.
DeviceProperties device_properties(Device device);

class Backend {
 public:
  // `supported`: the ops this backend has kernels for (supports_op); calling another is a
  // DeviceError that names it. `meta_kernels`: the kernels that run inside a MetaScope, up to
  // the scratch memory they take from the allocator and no further (Note [meta execution] in
  // engine/meta.h); every other kernel is skipped there.
  explicit Backend(OpSet supported = OpSet::all(), OpSet meta_kernels = {})
      : supported_(supported), meta_kernels_(meta_kernels) {}
  virtual ~Backend() = default;
  virtual DeviceType device_type() const = 0;

  // ======== The runtime part: host transfers, streams, events (not in the op table) ========

  // Contiguous bytes between this device and host memory, ordered on the device's current
  // stream. Blocking (non_blocking false): returns once the bytes have landed, whatever host
  // memory it is. non_blocking: the host memory is pinned (Tensor::empty_pinned) and the copy
  // may still be running when this returns; the caller waits for the stream (or an event
  // recorded on it) before touching the host side. The CPU always copies at once.
  virtual void copy_to_host(void* host_dst, const void* src, size_t nbytes, Device device, bool non_blocking) = 0;
  virtual void copy_from_host(void* dst, const void* host_src, size_t nbytes, Device device, bool non_blocking) = 0;

  // ---- streams and events (engine/event.h) ----
  // The CPU runs everything in order as it is called, so these do nothing there; an event id
  // is the backend's own handle (0 on the CPU).
  virtual void synchronize(Stream /*stream*/) {}         // waits for the work queued on stream
  virtual void synchronize_device(Device /*device*/) {}  // waits for all work on the device
  virtual uint64_t event_create(Device /*device*/, bool /*timing*/) { return 0; }
  virtual void event_destroy(Device /*device*/, uint64_t /*event*/) {}
  virtual void event_record(uint64_t /*event*/, Stream /*stream*/) {}
  // Work queued on `stream` after this waits for the event (the host does not wait).
  virtual void event_wait(uint64_t /*event*/, Stream /*stream*/) {}
  virtual void event_synchronize(uint64_t /*event*/) {}          // the host waits for the event
  virtual bool event_query(uint64_t /*event*/) { return true; }  // completed?
  // Milliseconds between two completed timing events.
  virtual double event_elapsed_ms(uint64_t /*start*/, uint64_t /*end*/) { return 0; }

  // Contiguous bytes from one device of this backend's type to another, without passing
  // through the host (CUDA: a peer copy; the driver stages it where the GPUs cannot reach each
  // other). Ordered after the work that produced src and before later work on dst; returns once
  // the bytes have landed. false: this backend has no such copy (the caller goes through the host).
  virtual bool copy_between_devices(void* /*dst*/, Device /*dst_device*/, const void* /*src*/, Device /*src_device*/,
                                    size_t /*nbytes*/) {
    return false;
  }

  // ---- about the device, and profiling ----
  // "cpu"; "NVIDIA H200, 143771 MiB".
  virtual std::string device_description(Device device) { return device.str(); }
  // What device_properties() returns for this backend's devices.
  virtual DeviceProperties properties(Device device);
  // Device time by op (the CUDA backend: Note [op profile] in kernels/cuda/op_profile.h):
  // start, run a step, stop (which waits for the step) and read the ops, most time first.
  // Backends without one throw DeviceError.
  virtual void start_op_profile();
  virtual std::vector<OpTime> stop_op_profile();

  // ======== The math: the ops of the table (engine/op_table.h, Note [op table]) ========
  // Each is non-virtual: it checks its arguments once (devices, then the op's contract below)
  // and calls the backend's impl_name.
#define HEADROOM_OP_WRAPPER(name, params, args) void name params;
  HEADROOM_OPS(HEADROOM_OP_WRAPPER)
#undef HEADROOM_OP_WRAPPER

  bool supports_op(OpId op) const { return supported_.contains(op); }

  // The contracts (what each op's caller provides and its kernel does):
  //
  // ---- memory movement ----
  // dst = src elementwise: same shape, any strides, dtypes may differ (a cast).
  //   => copy
  // out = value, any strides.
  //   => fill
  // out (contiguous, 1-d) = start + i * step.
  //   => arange
  // out (contiguous) from Philox(seed), counters starting at offset (engine/rng.h):
  // uniform in [0, 1), and standard normal by Box-Muller.
  //   => random_uniform, random_normal
  //
  // ---- elementwise ----
  // Inputs are views already broadcast to out's shape (zero strides allowed) and of out's
  // dtype (for comparisons: of one common dtype, out bool). out may alias an input exactly.
  //   => unary
  //   => binary
  // out = cond ? a : b; cond bool, all broadcast to out's shape.
  //   => where

  // ---- reductions ----
  // out has x's rank; a dim of out that is 1 where x's is not is reduced. argmax/argmin write
  // i64 indices along the single reduced dim; the others write x's dtype (accumulating in f32
  // or wider).
  //   => reduce

  // ---- linear algebra ----
  // out[b] = a[b] @ b[b] + beta * out[b]. a: [B, M, K], b: [B, K, N], any strides (a batch
  // stride of 0 broadcasts); out: [B, M, N] contiguous; one float dtype.
  //   => matmul

  // ---- convolution and pooling (NCHW, contiguous) ----
  // x: [N, C, H, W], w: [O, C / groups, KH, KW], bias: [O] or undefined, out: [N, O, OH, OW].
  //   => conv2d_forward
  //   => conv2d_backward_input
  //   => conv2d_backward_weight
  // indices hold each maximum's offset within its window, kh * kernel_w + kw counted from the
  // window's corner (padding included): u8 when the window has at most 256 cells, else i32
  // (kernels/contract_checks.h pool_index_dtype) -- an eighth of an i64 plane position, and the
  // largest tensor max pooling keeps for backward under autocast. Padding never wins.
  //   => max_pool2d_forward
  //   => max_pool2d_backward
  //   => avg_pool2d_forward
  //   => avg_pool2d_backward

  // ---- normalisation and losses (contiguous) ----
  // Softmax (or log-softmax when log) along dim. Backward takes the forward's output y.
  //   => softmax_forward
  //   => softmax_backward
  // logits: [N, C], target: [N] i64 (a negative target is ignored: loss 0, gradient 0);
  // losses: [N] per-sample -log softmax(logits)[target]; lse: [N] logsumexp per row, in
  // statistics_dtype (Note [statistics dtype]).
  // Backward: dlogits = dlosses[n] * (softmax - onehot(target)).
  //   => cross_entropy_forward
  //   => cross_entropy_backward
  // x: [M, N] normalised over N; weight, bias: [N] or undefined; mean, rstd: [M] in
  // statistics_dtype.
  //   => layer_norm_forward
  // dweight, dbias may be undefined (not needed).
  //   => layer_norm_backward
  // x: [N, C, S]; statistics per channel C. Training: batch statistics, saved in save_mean and
  // save_invstd ([C] in statistics_dtype), and running_mean/var (if defined) updated with momentum using the
  // unbiased variance. Eval: running statistics, saved likewise for backward.
  //   => batch_norm_forward
  //   => batch_norm_backward
  // x, y: [N, C, S] contiguous, one float dtype; C divisible by groups G; statistics per (n, g)
  // over the C/G channels of group g and all S positions of sample n. weight, bias: [C] of any
  // float dtype and stride (f32 parameters with 16-bit data under autocast) or undefined (1 and
  // 0). save_mean, save_rstd: [N, G] contiguous in statistics_dtype, written for backward (rstd =
  // 1 / sqrt(biased var + eps)). Statistics and arithmetic in f32 or wider (f64 for f64 data)
  // from 16-bit data; y in the data's dtype: y = (x - mean) * rstd * weight + bias. Written (=).
  //   => group_norm_forward
  // With xhat = (x - mean) * rstd, g = dy * weight and m = C/G * S values per (n, g):
  //   dx = rstd * (g - mean_(n,g)(g) - xhat * mean_(n,g)(g * xhat))
  //   dweight[c] = sum_(n,s)(dy * xhat), dbias[c] = sum_(n,s)(dy)   (deterministic order)
  // dy, dx like x; dx, dweight, dbias (any float dtype and stride, [C]) may each be undefined
  // (not wanted); all written (=), never accumulated.
  //   => group_norm_backward

  // ---- attention (fused: memory linear in T) ----
  // q, k, v, out: [B, H, T, D] contiguous, one float dtype; lse: [B, H, T] in statistics_dtype, the
  // log-sum-exp of each query's scaled scores, written for backward. out = softmax(scale q k^T
  // (+ causal mask: query t sees keys 0..t)) v, computed block by block with an online softmax
  // so that no T x T matrix is ever held.
  //   => attention_forward
  // Recomputes the scores block by block from q, k, v and lse; dq, dk, dv written (=).
  //   => attention_backward

  // ---- optimizer updates (in place; p, g and the state contiguous, one float dtype and shape) ----
  // One pass over each parameter instead of a dozen elementwise ops and their temporaries,
  // computing in f32 (f64 for f64). Every scalar is rounded to that dtype as given, and no
  // arithmetic is done on the scalars in it (Note [optimizer step constants]).
  // SGD: d = g + weight_decay p; with momentum: buf = first ? d : momentum buf + d, then
  // d = nesterov ? d + momentum buf : buf (buf undefined when momentum == 0); p -= lr d.
  //   => sgd_update
  // Adam / AdamW with the constants of AdamStep: w = decay p; d = g + l2 w;
  // m = beta1 m + one_minus_beta1 d; v = beta2 v + one_minus_beta2 (d d);
  // p = w - (m / (sqrt(v) inv_sqrt_bc2 + eps)) step_size, in the generic path's order.
  //   => adam_update

  // ---- mixed precision (optim/grad_scaler.h) ----
  // One pass over all of a step's gradients on this device: each g (contiguous, any float
  // dtype; the list may mix dtypes) is multiplied in place by inv_scale (=), and found_inf (an
  // f32 [1] on this device) is set to 1 when any scaled element is inf or NaN. found_inf is
  // only ever set, never cleared: the caller zeroes it once per step.
  //   => unscale_and_check

  // ---- indexing ----
  // out = x gathered along dim at index (i64, 1-d). Throws ValueError on an index out of range.
  //   => index_select
  // out[.., index[i], ..] += src[.., i, ..] along dim (accumulates; repeated indices add up).
  //   => index_add

 protected:
  // The kernels. A backend overrides those it supports (HEADROOM_OP_OVERRIDES declares them
  // all); the defaults throw DeviceError.
#define HEADROOM_OP_IMPL(name, params, args) virtual void impl_##name params;
  HEADROOM_OPS(HEADROOM_OP_IMPL)
#undef HEADROOM_OP_IMPL

 private:
  OpSet supported_;
  OpSet meta_kernels_;
};

// In a backend's class: declares an override of every op's kernel.
#define HEADROOM_OP_OVERRIDE(name, params, args) void impl_##name params override;
#define HEADROOM_OP_OVERRIDES HEADROOM_OPS(HEADROOM_OP_OVERRIDE)

// Whether CPU kernels flush denormal floats to zero (Note [denormals] in kernels/cpu/denormal.h).
// On by default; returns the previous setting.
bool set_flush_denormal(bool on);
bool flush_denormal();

// The backend of a device kind; throws DeviceError when none is registered (a CUDA op in a
// build without CUDA, or where the CUDA backend cannot be loaded).
Backend& backend_for(Device device);
void register_backend(DeviceType type, Backend* backend);

// Note [loadable backends]: the CUDA backend is its own shared library, libheadroom_cuda.so,
// beside libheadroom.so. Nothing loads it until a cuda device is first used -- a cuda tensor or
// allocator, backend_for(cuda), device_count(cuda), Tensor::empty_pinned -- so that a CPU run
// maps no CUDA library (cudart, cuBLAS, cuDNN: about 200 MiB resident, and their start-up
// time) and a CUDA build runs unchanged, on the CPU, where the CUDA runtime is not installed.
// Loading runs the library's registrations (its backend, one allocator per visible GPU, the
// pinned-memory allocator, how many GPUs the runtime sees); when it fails, the reason -- the
// loader's own message, e.g. "libcudart.so.13: cannot open shared object file" -- is what
// using a cuda device then says (Note [missing devices]). HEADROOM_CUDA_LIBRARY names another
// file to load. A program linked with libheadroom_cuda.so (the cuda tests) has it from the start.
void load_device_backend(DeviceType type);
namespace detail {
// dlopen's message for `path`, or "" once it is loaded.
std::string load_backend_library(const std::string& path);
// The folder libheadroom.so was loaded from, with a trailing '/' ("" when it cannot be told):
// the loadable libraries are built beside it.
std::string library_directory();
}  // namespace detail

}  // namespace headroom
