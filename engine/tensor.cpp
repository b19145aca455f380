#include "engine/tensor.h"

#include "engine/caching_allocator.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <iomanip>
#include <ostream>
#include <sstream>
#include <utility>

#include "engine/backend.h"
#include "engine/meta.h"
#include "engine/rng.h"

namespace headroom {

namespace {
const TensorImpl& checked(const std::shared_ptr<TensorImpl>& impl) {
  if (!impl) throw Error("use of an undefined tensor");
  return *impl;
}
}  // namespace

const Shape& Tensor::shape() const { return checked(impl_).shape; }
const Shape& Tensor::strides() const { return checked(impl_).strides; }
int64_t Tensor::size(int64_t d) const { return shape()[wrap_dim(d, dim(), "size")]; }
int64_t Tensor::stride(int64_t d) const { return strides()[wrap_dim(d, dim(), "stride")]; }
int64_t Tensor::offset() const { return checked(impl_).offset; }
int64_t Tensor::numel() const { return shape_numel(shape()); }
size_t Tensor::nbytes() const {
  size_t n = 0;
  if (__builtin_mul_overflow(static_cast<size_t>(numel()), dtype_size(dtype()), &n))
    throw ShapeError(str_cat("nbytes: ", describe(*this), " would take more bytes than a size_t can count"));
  return n;
}
DType Tensor::dtype() const { return checked(impl_).dtype; }
Device Tensor::device() const { return checked(impl_).storage->device(); }
const Storage& Tensor::storage() const { return checked(impl_).storage; }
uint64_t Tensor::version() const { return storage()->version(); }
void Tensor::bump_version() const { storage()->bump_version(); }

bool Tensor::is_contiguous() const {
  const auto& s = shape();
  const auto& st = strides();
  // No elements: nothing to lay out, so any strides will do (Tensor::empty({0, 5}) is contiguous).
  for (int64_t d : s)
    if (d == 0) return true;
  int64_t expected = 1;
  for (size_t i = s.size(); i-- > 0;) {
    if (s[i] == 1) continue;
    if (st[i] != expected) return false;
    expected *= s[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  const auto& impl = checked(impl_);
  // Note [meta execution]: inside a MetaScope the address is handed out (a kernel that takes
  // scratch computes its pointers) but never read; outside, there is nothing at it.
  if (impl.storage->is_meta() && !meta_active())
    throw DeviceError(str_cat("a meta tensor ", shape_str(impl.shape), " ", dtype_name(impl.dtype),
                              " (made inside a MetaScope) has no data to read or write"));
  return static_cast<char*>(impl.storage->data()) + impl.offset * static_cast<int64_t>(dtype_size(impl.dtype));
}

bool Tensor::is_meta() const { return defined() && impl_->storage && impl_->storage->is_meta(); }

void Tensor::check_dtype(DType expected, const char* what) const {
  HR_CHECK(dtype() == expected, DTypeError, what, ": tensor is ", dtype_name(dtype()), ", asked for ",
           dtype_name(expected));
}

namespace {
// The one element's bytes, read straight into host memory, allocating no tensor: reading a loss
// or a flag cannot run out of device memory (optim/grad_scaler.cpp reads its overflow flag after
// the optimizer stepped). Zeros for a meta tensor (Note [meta execution]: no data).
template <typename R>
R read_item(const Tensor& t) {
  HR_CHECK(t.numel() == 1, ShapeError, "item(): expected a tensor with one element, got shape ", shape_str(t.shape()));
  if (t.is_meta()) return R(0);
  alignas(8) unsigned char bytes[8] = {};
  const size_t n = dtype_size(t.dtype());
  if (t.device().is_cpu()) std::memcpy(bytes, t.raw_data(), n);
  else backend_for(t.device()).copy_to_host(bytes, t.raw_data(), n, t.device(), /*non_blocking=*/false);
  return dispatch_dtype(t.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T v;
    std::memcpy(&v, bytes, sizeof(T));
    if constexpr (std::is_integral_v<T>) return static_cast<R>(v);  // i64 stays exact
    else return static_cast<R>(static_cast<double>(v));
  });
}
}  // namespace

double Tensor::item_double() const { return read_item<double>(*this); }
int64_t Tensor::item_int64() const { return read_item<int64_t>(*this); }

// Note [views stay in their storage]: every view is checked here, once, so no kernel can be
// handed a tensor that reaches outside its bytes. A view is valid when its shape is
// (Note [shape arithmetic]), its offset is >= 0, every stride is >= 0 (the kernels do not walk
// backwards), and -- when it has elements -- its last element,
// offset + sum((size_i - 1) * stride_i), computed without overflow, lies inside the storage.
// A view without elements reaches nothing, so its offset may point past the end (a slice of
// an empty slice does).
namespace {
void check_view_in_storage(const Shape& shape, const Shape& strides, int64_t offset, DType dtype,
                           size_t storage_nbytes) {
  const int64_t storage_elems = static_cast<int64_t>(storage_nbytes / dtype_size(dtype));
  const std::string storage =
      str_cat("storage of ", storage_elems, " ", dtype_name(dtype), " elements (", storage_nbytes, " bytes)");
  auto fail = [&](const std::string& why) {
    throw ValueError(str_cat("as_strided: a view of size ", shape_str(shape), ", stride ", shape_str(strides),
                             ", offset ", offset, " ", why));
  };
  if (offset < 0) fail("starts before its " + storage + " (a negative offset)");
  for (int64_t st : strides)
    if (st < 0) fail("has a negative stride, which headroom does not support (its " + storage + ")");
  int64_t last = offset;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 0) return;  // no elements: nothing is reached
    int64_t step = 0;
    if (__builtin_mul_overflow(shape[i] - 1, strides[i], &step) || __builtin_add_overflow(last, step, &last))
      fail("reaches past any storage: the position of its last element overflows an int64 (its " + storage + ")");
  }
  if (last >= storage_elems) fail(str_cat("reaches element ", last, ", past the end of its ", storage));
}
}  // namespace

Tensor Tensor::as_strided(const Shape& shape, const Shape& strides, int64_t offset) const {
  HR_CHECK(shape.size() == strides.size(), ShapeError, "as_strided: shape ", shape_str(shape), " and strides ",
           shape_str(strides), " differ in length");
  check_shape(shape, "as_strided");
  check_view_in_storage(shape, strides, offset, dtype(), storage()->nbytes());
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = storage();
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = dtype();
  return Tensor(std::move(impl));
}

// ---- factories ----

namespace {
// Bytes for a shape in a dtype; throws ShapeError instead of wrapping around.
size_t checked_nbytes(const Shape& shape, DType dtype, const char* op) {
  size_t nbytes = 0;
  if (__builtin_mul_overflow(static_cast<size_t>(shape_numel(shape)), dtype_size(dtype), &nbytes) ||
      nbytes > (size_t{1} << 62))
    throw ShapeError(str_cat(op, ": ", dtype_name(dtype), " ", shape_str(shape), " needs more bytes than can exist"));
  return nbytes;
}
}  // namespace

Tensor Tensor::empty(const Shape& shape, TensorOptions opts) {
  check_shape(shape, "empty");
  auto impl = std::make_shared<TensorImpl>();
  const size_t nbytes = checked_nbytes(shape, opts.dtype_, "empty");
  impl->storage = std::make_shared<StorageImpl>(nbytes, opts.device_);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = opts.dtype_;
  Tensor t(std::move(impl));
  if (opts.requires_grad_) t.set_requires_grad(true);
  return t;
}

Tensor Tensor::empty_host(const Shape& shape, DType dtype) {
  check_shape(shape, "empty_host");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<StorageImpl>(checked_nbytes(shape, dtype, "empty_host"), HostMemoryTag{});
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::empty_pinned(const Shape& shape, DType dtype) {
  check_shape(shape, "empty_pinned");
  Allocator* pinned = pinned_allocator();  // Note [host pool]
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<StorageImpl>(checked_nbytes(shape, dtype, "empty_pinned"), *pinned);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

bool Tensor::is_pinned() const {
  const Allocator* a = storage()->allocator();
  if (a == nullptr) return false;
  if (a == host_pool_if_made()) return true;
  const auto* caching = dynamic_cast<const CachingAllocator*>(a);  // a meta scope's stand-in
  return caching != nullptr && caching->is_meta() && caching->is_host_pool();
}

void Tensor::record_stream(Stream stream) const {
  const Storage& s = storage();
  if (s->allocator() != nullptr) s->allocator()->record_stream(s->allocation(), stream);
}

Tensor Tensor::full(const Shape& shape, double value, TensorOptions opts) {
  Tensor t = empty(shape, opts.requires_grad(false));
  if (t.numel() > 0) backend_for(t.device()).fill(t, value);
  if (opts.requires_grad_) t.set_requires_grad(true);
  return t;
}
Tensor Tensor::zeros(const Shape& shape, TensorOptions opts) { return full(shape, 0.0, opts); }
Tensor Tensor::ones(const Shape& shape, TensorOptions opts) { return full(shape, 1.0, opts); }
Tensor Tensor::scalar(double value, TensorOptions opts) { return full({}, value, opts); }

Tensor Tensor::arange(double end, TensorOptions opts) { return arange(0, end, 1, opts); }
Tensor Tensor::arange(double start, double end, double step, TensorOptions opts) {
  HR_CHECK(std::isfinite(start) && std::isfinite(end) && std::isfinite(step), ValueError, "arange(start ", start,
           ", end ", end, ", step ", step, "): start, end and step must be finite numbers");
  HR_CHECK(step != 0, ValueError, "arange(start ", start, ", end ", end, ", step 0): step must not be zero");
  // The count is ceil((end - start) / step); it must fit an int64 before it is converted
  // (converting a larger double is undefined, and gave 0 elements for arange(0, 1e300)).
  const double count = std::ceil((end - start) / step);
  HR_CHECK(std::isfinite(count) && count < 0x1p63, ValueError, "arange(start ", start, ", end ", end, ", step ", step,
           "): ", count, " elements do not fit an int64 count");
  const int64_t n = count > 0 ? static_cast<int64_t>(count) : 0;
  Tensor t = empty({n}, opts.requires_grad(false));
  if (n > 0) backend_for(t.device()).arange(t, start, step);
  if (opts.requires_grad_) t.set_requires_grad(true);
  return t;
}

Tensor Tensor::rand(const Shape& shape, TensorOptions opts) {
  HR_CHECK(is_floating(opts.dtype_), DTypeError, "rand: expected a floating dtype, got ", dtype_name(opts.dtype_));
  Tensor t = empty(shape, opts.requires_grad(false));
  auto& gen = default_generator();
  uint64_t offset = gen.advance(static_cast<uint64_t>(t.numel()));
  if (t.numel() > 0) backend_for(t.device()).random_uniform(t, gen.seed(), offset);
  if (opts.requires_grad_) t.set_requires_grad(true);
  return t;
}

Tensor Tensor::randn(const Shape& shape, TensorOptions opts) {
  HR_CHECK(is_floating(opts.dtype_), DTypeError, "randn: expected a floating dtype, got ", dtype_name(opts.dtype_));
  Tensor t = empty(shape, opts.requires_grad(false));
  auto& gen = default_generator();
  uint64_t offset = gen.advance(2 * static_cast<uint64_t>(t.numel()));
  if (t.numel() > 0) backend_for(t.device()).random_normal(t, gen.seed(), offset);
  if (opts.requires_grad_) t.set_requires_grad(true);
  return t;
}

Tensor Tensor::from_vector(std::initializer_list<double> values, const Shape& shape, TensorOptions opts) {
  return from_vector(std::vector<double>(values), shape, opts);
}

namespace detail {

namespace {
// The range of an integer dtype, as [lo, hi].
std::pair<int64_t, int64_t> integer_range(DType dtype) {
  switch (dtype) {
    case DType::i32: return {INT32_MIN, INT32_MAX};
    case DType::u8: return {0, 255};
    default: return {INT64_MIN, INT64_MAX};
  }
}
// v round-trips through a float type F (its range checked before the cast back, which is UB
// out of range). 2^63 is exact in every floating type; the i64 range is [-2^63, 2^63).
template <typename F>
bool integer_round_trips(int64_t v, F f) {
  const double d = static_cast<double>(f);
  return d >= -9223372036854775808.0 && d < 9223372036854775808.0 && static_cast<int64_t>(d) == v;
}
}  // namespace

void check_exact_integer(int64_t v, DType dtype, size_t index) {
  bool exact = true;
  switch (dtype) {
    case DType::f64: exact = integer_round_trips(v, static_cast<double>(v)); break;
    case DType::f32: exact = integer_round_trips(v, static_cast<float>(v)); break;
    case DType::f16:
      exact = integer_round_trips(v, static_cast<float>(v)) &&
              integer_round_trips(v, static_cast<float>(Half(static_cast<float>(v))));
      break;
    case DType::bf16:
      exact = integer_round_trips(v, static_cast<float>(v)) &&
              integer_round_trips(v, static_cast<float>(BFloat16(static_cast<float>(v))));
      break;
    case DType::boolean: break;
    default: {
      auto [lo, hi] = integer_range(dtype);
      exact = v >= lo && v <= hi;
    }
  }
  HR_CHECK(exact, DTypeError, "from_vector: value ", v, " at index ", index, " is not exactly representable in ",
           dtype_name(dtype), is_floating(dtype) ? " (it would be rounded)" : " (out of range)");
}

void check_exact_floating(double v, DType dtype, size_t index) {
  if (is_floating(dtype) || dtype == DType::boolean) return;
  auto [lo, hi] = integer_range(dtype);
  // hi + 1 is a power of two (exact as a double); lo is -2^k or 0.
  const bool exact =
      std::isfinite(v) && std::trunc(v) == v && v >= static_cast<double>(lo) && v < static_cast<double>(hi) + 1.0;
  HR_CHECK(exact, DTypeError, "from_vector: value ", v, " at index ", index, " is not exactly representable in ",
           dtype_name(dtype), std::isfinite(v) && std::trunc(v) == v ? " (out of range)" : " (not an integer)");
}

}  // namespace detail

// ---- copies ----

void copy_tensor(const Tensor& dst, const Tensor& src, bool non_blocking) {
  HR_CHECK(dst.shape() == src.shape(), ShapeError, "copy: destination shape ", shape_str(dst.shape()),
           " differs from source shape ", shape_str(src.shape()));
  if (dst.numel() == 0) return;
  if (dst.device() == src.device()) {
    backend_for(dst.device()).copy(dst, src);
    return;
  }
  // Across devices: make the source contiguous in the destination's dtype on its own device,
  // move the bytes through the backend of the non-host side, then copy into dst's layout.
  Tensor packed = src;
  if (!src.is_contiguous() || src.dtype() != dst.dtype()) {
    packed = Tensor::empty(src.shape(), TensorOptions().dtype(dst.dtype()).device(src.device()));
    backend_for(src.device()).copy(packed, src);
  }
  Tensor landing = dst.is_contiguous() ? dst : Tensor::empty(dst.shape(), dst.options());
  if (landing.is_meta() || packed.is_meta()) {
    // Note [meta execution]: the same blocks, no bytes moved.
    if (!dst.device().is_cpu() && !src.device().is_cpu())
      (void)Tensor::empty(src.shape(), TensorOptions().dtype(dst.dtype()));
  } else if (dst.device().is_cpu()) {
    // Asynchronous only into the caller's own pinned tensor: a landing buffer copied on below
    // would have to wait anyway.
    const bool async = non_blocking && landing.is_same(dst) && dst.is_pinned();
    backend_for(src.device()).copy_to_host(landing.raw_data(), packed.raw_data(), packed.nbytes(), src.device(), async);
    if (async) dst.record_stream(current_stream(src.device()));
  } else if (src.device().is_cpu()) {
    const bool async = non_blocking && packed.is_same(src) && src.is_pinned();
    backend_for(dst.device())
        .copy_from_host(landing.raw_data(), packed.raw_data(), packed.nbytes(), dst.device(), async);
    if (async) src.record_stream(current_stream(dst.device()));
  } else if (dst.device().type != src.device().type ||
             !backend_for(dst.device())
                  .copy_between_devices(landing.raw_data(), dst.device(), packed.raw_data(), src.device(),
                                        packed.nbytes())) {
    // Two devices with no direct copy between them (Note [peer copies]): through the host.
    Tensor host = Tensor::empty(src.shape(), TensorOptions().dtype(dst.dtype()));
    backend_for(src.device()).copy_to_host(host.raw_data(), packed.raw_data(), packed.nbytes(), src.device(), false);
    backend_for(dst.device()).copy_from_host(landing.raw_data(), host.raw_data(), host.nbytes(), dst.device(), false);
  }
  if (!landing.is_same(dst)) backend_for(dst.device()).copy(dst, landing);
}

// ---- printing ----

std::string describe(const Tensor& t) {
  if (!t.defined()) return "undefined tensor";
  return str_cat(dtype_name(t.dtype()), " ", shape_str(t.shape()), " on ", t.device().str());
}

namespace {
void print_values(std::ostream& os, const std::vector<double>& v, const Shape& shape, size_t dim, int64_t base,
                  bool floating, int indent) {
  int64_t n = shape[dim];
  int64_t inner = 1;
  for (size_t d = dim + 1; d < shape.size(); ++d) inner *= shape[d];
  constexpr int64_t kEdge = 3;
  bool abbreviate = shape_numel(shape) > 1000 && n > 2 * kEdge;
  os << "[";
  for (int64_t i = 0; i < n; ++i) {
    if (abbreviate && i == kEdge) {
      os << (dim + 1 == shape.size() ? "..., " : "...,\n" + std::string(indent + 1, ' '));
      i = n - kEdge;
    }
    if (dim + 1 == shape.size()) {
      double x = v[static_cast<size_t>(base + i)];
      if (floating) os << std::setprecision(4) << x;
      else os << static_cast<int64_t>(x);
    } else {
      print_values(os, v, shape, dim + 1, base + i * inner, floating, indent + 1);
    }
    if (i + 1 < n) os << (dim + 1 == shape.size() ? ", " : ",\n" + std::string(indent + 1, ' '));
  }
  os << "]";
}
}  // namespace

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  std::ostringstream os;
  os << "Tensor(";
  if (numel() == 0) {
    os << "[]";
  } else {
    std::vector<double> v = to_vector<double>();
    if (dim() == 0) {
      if (is_floating(dtype())) os << std::setprecision(4) << v[0];
      else os << static_cast<int64_t>(v[0]);
    } else {
      print_values(os, v, shape(), 0, 0, is_floating(dtype()), 7);
    }
  }
  os << ", shape=" << shape_str(shape()) << ", dtype=" << dtype_name(dtype());
  if (!device().is_cpu()) os << ", device=" << device().str();
  if (requires_grad()) os << ", requires_grad";
  os << ")";
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

}  // namespace headroom
