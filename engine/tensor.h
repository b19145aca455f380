// Tensor: a handle to (shape, strides, offset, dtype) over a refcounted Storage.
//
// Copying a Tensor copies the handle, not the data: both handles name the same TensorImpl.
// Views (reshape of a contiguous tensor, transpose, permute, slice, expand, squeeze) make a new
// TensorImpl over the same Storage, so they cost no memory and writes through one are seen by
// all. A tensor's autograd state (requires_grad, grad, grad_fn) hangs off TensorImpl::autograd,
// a slot whose type autograd/ defines; engine/ only carries it.
//
// The differentiable methods declared here (reshape, sum, exp, ...) are defined in autograd/,
// next to their gradient rules; the factories and raw accessors are defined in engine/.
//
//   Tensor x = Tensor::randn({4, 3});
//   Tensor w = Tensor::zeros({3, 2}).set_requires_grad(true);
//   Tensor loss = matmul(x, w).relu().sum();
//   loss.backward();                 // w.grad() now holds dloss/dw
#pragma once

#include <concepts>
#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/shape.h"
#include "engine/storage.h"

namespace headroom {

struct AutogradMeta;  // autograd/autograd_meta.h
class Node;           // autograd/node.h

struct TensorOptions {
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu();
  bool requires_grad_ = false;

  TensorOptions() = default;
  TensorOptions(DType d) : dtype_(d) {}    // NOLINT: Tensor::zeros({2}, DType::f16)
  TensorOptions(Device d) : device_(d) {}  // NOLINT
  TensorOptions dtype(DType d) const {
    auto o = *this;
    o.dtype_ = d;
    return o;
  }
  TensorOptions device(Device d) const {
    auto o = *this;
    o.device_ = d;
    return o;
  }
  TensorOptions requires_grad(bool r) const {
    auto o = *this;
    o.requires_grad_ = r;
    return o;
  }
};

struct TensorImpl {
  Storage storage;
  Shape shape;
  Shape strides;
  int64_t offset = 0;  // in elements
  DType dtype = DType::f32;
  std::shared_ptr<AutogradMeta> autograd;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- metadata (engine/tensor.cpp) ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const;
  int64_t size(int64_t dim) const;  // negative dims count from the end
  int64_t dim() const { return static_cast<int64_t>(shape().size()); }
  const Shape& strides() const;
  int64_t stride(int64_t dim) const;
  int64_t offset() const;
  int64_t numel() const;
  DType dtype() const;
  Device device() const;
  TensorOptions options() const { return TensorOptions().dtype(dtype()).device(device()); }
  bool is_contiguous() const;
  // numel * dtype size; throws ShapeError when that does not fit a size_t (an expanded view).
  size_t nbytes() const;
  const Storage& storage() const;
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool is_same(const Tensor& o) const { return impl_ == o.impl_; }

  // Pointer to the first element (storage + offset). data<T>() checks that T is the dtype.
  void* raw_data() const;
  // Shapes and allocator blocks, no data (Note [meta execution] in engine/meta.h).
  bool is_meta() const;
  template <typename T>
  T* data() const {
    check_dtype(dtype_of<T>(), "data<T>()");
    return static_cast<T*>(raw_data());
  }
  // The single element of a one-element tensor, converted to T (copied from the device). An
  // integer T reads an integer tensor through int64_t, so i64 values past 2^53 stay exact.
  template <typename T>
  T item() const {
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) return static_cast<T>(item_int64());
    else return static_cast<T>(item_double());
  }
  double item_double() const;
  int64_t item_int64() const;  // a floating value converted as static_cast<int64_t> would
  // All elements in row-major order, converted to T (copied from the device).
  template <typename T>
  std::vector<T> to_vector() const;

  // The storage's version counter (Note [version counter] in storage.h).
  uint64_t version() const;
  void bump_version() const;

  std::string str() const;  // values and metadata, abbreviated past 1000 elements

  // ---- factories (engine/tensor.cpp) ----
  static Tensor empty(const Shape& shape, TensorOptions opts = {});
  // A CPU tensor in plain host memory, outside the CPU device's caching allocator: its bytes
  // count in no memory statistics and no limit. For data sets and staging buffers -- what a GPU
  // run keeps on the host -- so that a CPU run under HEADROOM_MEMORY_LIMIT emulates the device.
  static Tensor empty_host(const Shape& shape, DType dtype);
  // A CPU tensor in the pinned host pool (Note [host pool] in engine/allocator.h): page-locked
  // memory, from which a GPU copies asynchronously (to(device, true)), when a GPU is present;
  // ordinary host memory counted by the pool otherwise, so code written for both runs
  // everywhere and its bytes are counted either way. Tagged with the current MemoryCategory.
  static Tensor empty_pinned(const Shape& shape, DType dtype);
  static Tensor zeros(const Shape& shape, TensorOptions opts = {});
  static Tensor ones(const Shape& shape, TensorOptions opts = {});
  static Tensor full(const Shape& shape, double value, TensorOptions opts = {});
  static Tensor scalar(double value, TensorOptions opts = {});  // 0-d
  static Tensor arange(double end, TensorOptions opts = {});
  static Tensor arange(double start, double end, double step = 1, TensorOptions opts = {});
  // Uniform in [0, 1) and standard normal, from the global Philox generator (engine/rng.h).
  static Tensor rand(const Shape& shape, TensorOptions opts = {});
  static Tensor randn(const Shape& shape, TensorOptions opts = {});
  // Values given row-major, converted to opts' dtype. Integers stay exact: DTypeError when a
  // value would change on the way -- a fraction or an out-of-range value for an integer dtype,
  // an integer that a floating dtype would round (2^53 + 1 in f64, 2^24 + 1 in f32). Floating
  // values into a floating dtype round as usual; a bool dtype takes any value (nonzero: true).
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape, TensorOptions opts = {});
  static Tensor from_vector(std::initializer_list<double> values, const Shape& shape, TensorOptions opts = {});
  // A list of integers of one type is read as integers, never through double:
  //   Tensor::from_vector({1, 2, 3}, {3}, DType::i64)
  //   Tensor::from_vector({9007199254740993, 9007199254740995}, {2}, DType::i64)  // exact
  // A list that mixes types ({1, 2.5}, or a long 1L << 60 beside an int 1) takes the double
  // overload, where a value a double cannot hold is a compile error (narrowing); for such
  // integers write std::vector<int64_t>{...}.
  template <std::integral T>
  requires(!std::same_as<T, bool>) static Tensor
      from_vector(std::initializer_list<T> values, const Shape& shape, TensorOptions opts = {});

  // A view of the same storage with other metadata. No autograd: for kernels and for the
  // differentiable view functions, which record their own gradient.
  Tensor as_strided(const Shape& shape, const Shape& strides, int64_t offset) const;

  // ---- autograd state (autograd/tensor_autograd.cpp) ----
  bool requires_grad() const;
  // Marks a leaf as needing .grad; returns *this so it chains after a factory.
  Tensor& set_requires_grad(bool requires_grad = true);
  Tensor grad() const;  // undefined until a backward reaches this leaf
  void set_grad(const Tensor& grad) const;
  void zero_grad() const;  // drops .grad (frees its memory)
  bool is_leaf() const;
  std::shared_ptr<Node> grad_fn() const;
  // Backpropagates from this tensor; a non-scalar needs an explicit gradient.
  void backward(const Tensor& gradient = {}, bool retain_graph = false) const;
  Tensor detach() const;  // same storage, no history

  // ---- differentiable methods (autograd/functions/*.cpp) ----
  Tensor reshape(const Shape& shape) const;  // a view when strides allow, else a copy
  Tensor view(const Shape& shape) const;     // a view or a ShapeError
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  Tensor transpose(int64_t dim0, int64_t dim1) const;
  Tensor t() const;  // transpose of a 2-d tensor
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor select(int64_t dim, int64_t index) const;
  Tensor expand(const Shape& shape) const;
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor contiguous() const;  // *this when already contiguous
  Tensor clone() const;
  Tensor to(Device device) const;
  // non_blocking: when one side is pinned host memory (a copy to the host allocates pinned
  // memory for the result), the copy is queued on the device's current stream and this returns
  // at once; synchronize the stream (engine/event.h) before reading a result on the host or
  // writing the pinned source. Otherwise the same as to(device).
  Tensor to(Device device, bool non_blocking) const;
  Tensor to(DType dtype) const;
  bool is_pinned() const;  // storage in the pinned host pool (empty_pinned)
  // The storage is also used by work queued on `stream`: the allocator will not hand its memory
  // out again before that work is done (Note [stream reuse] in caching_allocator.h).
  void record_stream(Stream stream) const;

  Tensor sum() const;
  Tensor sum(const std::vector<int64_t>& dims, bool keepdim = false) const;
  Tensor mean() const;
  Tensor mean(const std::vector<int64_t>& dims, bool keepdim = false) const;
  Tensor max() const;
  Tensor max(int64_t dim, bool keepdim = false) const;
  Tensor argmax(int64_t dim, bool keepdim = false) const;
  Tensor var(const std::vector<int64_t>& dims, int64_t correction = 1, bool keepdim = false) const;
  // The p-norm (torch.linalg.vector_norm): (sum |x|^p)^(1/p) over all elements, or over dims;
  // p = inf: max |x|, p = -inf: min |x|. p must be > 0 or +-inf; floating tensors only.
  //   x.norm()  x.norm(1)  x.norm(INFINITY, {1}, true)
  Tensor norm(double p = 2.0) const;
  Tensor norm(double p, const std::vector<int64_t>& dims, bool keepdim = false) const;

  Tensor neg() const;
  Tensor exp() const;
  Tensor log() const;
  Tensor sqrt() const;
  Tensor abs() const;
  Tensor relu() const;
  Tensor tanh() const;
  Tensor sigmoid() const;
  Tensor pow(double exponent) const;

  // ---- in-place, not differentiable (autograd/functions/inplace.cpp) ----
  // Each bumps the version counter. On a tensor that requires grad they are allowed only
  // under NoGradGuard (an optimizer step); elsewhere they throw.
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }
  Tensor& copy_(const Tensor& src);                       // src broadcast to this shape, cast to this dtype
  Tensor& add_(const Tensor& other, double alpha = 1.0);  // this += alpha * other
  Tensor& sub_(const Tensor& other) { return add_(other, -1.0); }
  Tensor& mul_(const Tensor& other);
  Tensor& mul_(double value);
  Tensor& div_(const Tensor& other);

 private:
  void check_dtype(DType expected, const char* what) const;
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

// Human-readable description for error messages: "f32 (4, 3) on cpu".
std::string describe(const Tensor& t);

// Raw (no autograd) copy of src into dst through the backend: shapes must match; dtypes may
// differ (a cast); devices may differ (a transfer through host memory). non_blocking: a
// transfer between a device and contiguous pinned host memory of the same dtype is queued on
// the device's current stream without waiting (Tensor::to(Device, bool)).
void copy_tensor(const Tensor& dst, const Tensor& src, bool non_blocking = false);

namespace detail {
// Throw DTypeError naming the value and its index when it would not survive conversion to
// dtype (Tensor::from_vector).
void check_exact_integer(int64_t value, DType dtype, size_t index);
void check_exact_floating(double value, DType dtype, size_t index);
}  // namespace detail

// ---- template definitions ----
template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, TensorOptions opts) {
  HR_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), ShapeError, "from_vector: ", values.size(),
           " values do not fill shape ", shape_str(shape));
  if (opts.dtype_ != dtype_of<T>() && opts.dtype_ != DType::boolean) {
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      for (size_t i = 0; i < values.size(); ++i)
        detail::check_exact_integer(static_cast<int64_t>(values[i]), opts.dtype_, i);
    } else if constexpr (!std::is_same_v<T, bool>) {
      if (!is_floating(opts.dtype_))
        for (size_t i = 0; i < values.size(); ++i)
          detail::check_exact_floating(static_cast<double>(values[i]), opts.dtype_, i);
    }
  }
  Tensor host = empty(shape, TensorOptions().dtype(dtype_of<T>()));
  if (!host.is_meta()) {  // Note [meta execution]: no bytes to write
    T* dst = host.data<T>();
    for (size_t i = 0; i < values.size(); ++i) dst[i] = values[i];
  }
  if (opts.dtype_ == dtype_of<T>() && opts.device_ == host.device()) {
    if (opts.requires_grad_) host.set_requires_grad(true);
    return host;
  }
  Tensor out = empty(shape, opts.requires_grad(false));
  copy_tensor(out, host);
  if (opts.requires_grad_) out.set_requires_grad(true);
  return out;
}

template <std::integral T>
requires(!std::same_as<T, bool>) Tensor Tensor::from_vector(std::initializer_list<T> values, const Shape& shape,
                                                            TensorOptions opts) {
  std::vector<int64_t> v;
  v.reserve(values.size());
  for (T x : values) {
    if constexpr (std::is_unsigned_v<T>)
      HR_CHECK(static_cast<uint64_t>(x) <= static_cast<uint64_t>(INT64_MAX), DTypeError, "from_vector: value ",
               static_cast<uint64_t>(x), " at index ", v.size(), " does not fit i64");
    v.push_back(static_cast<int64_t>(x));
  }
  return from_vector(v, shape, opts);
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  Tensor host = empty(shape(), TensorOptions().dtype(dtype_of<T>()));
  copy_tensor(host, *this);
  if (host.is_meta()) return std::vector<T>(static_cast<size_t>(numel()), T(0));  // Note [meta execution]
  const T* p = host.data<T>();
  return std::vector<T>(p, p + numel());
}

}  // namespace headroom
