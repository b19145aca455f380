// Shape ops, views, copies between devices and dtypes, and joining/splitting.
#include <numeric>
#include <optional>

#include "autograd/functions/internal.h"

namespace headroom {

using namespace detail;

namespace {

// Strides that let a tensor of (shape, strides) be seen as new_shape without copying, or
// an empty vector when it cannot (the dims being merged are not contiguous with each other).
std::optional<Shape> view_strides(const Shape& shape, const Shape& strides, const Shape& new_shape) {
  Shape out(new_shape.size());
  if (shape_numel(shape) == 0) return contiguous_strides(new_shape);
  int64_t view_d = static_cast<int64_t>(new_shape.size()) - 1;
  int64_t chunk_base_stride = strides.empty() ? 1 : strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    tensor_numel *= shape[static_cast<size_t>(d)];
    if (d == 0 || (shape[static_cast<size_t>(d - 1)] != 1 &&
                   strides[static_cast<size_t>(d - 1)] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || new_shape[static_cast<size_t>(view_d)] == 1)) {
        out[static_cast<size_t>(view_d)] = view_numel * chunk_base_stride;
        view_numel *= new_shape[static_cast<size_t>(view_d)];
        --view_d;
      }
      if (view_numel != tensor_numel) return std::nullopt;
      if (d > 0) {
        chunk_base_stride = strides[static_cast<size_t>(d - 1)];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) return std::nullopt;
  return out;
}

// Records a view op whose gradient is g reshaped back (reshape, squeeze, unsqueeze, flatten).
Tensor record_reshape(const char* name, const Tensor& x, const Tensor& out) {
  if (needs_grad({x})) {
    Shape shape = x.shape();
    record(name, out, {x}, [shape](const Tensor& g) -> std::vector<Tensor> { return {reshape(g, shape)}; });
  }
  return out;
}

}  // namespace

Tensor reshape(const Tensor& x, const Shape& shape_in) {
  Shape shape = infer_shape(shape_in, x.numel(), "reshape");
  HR_CHECK(shape_numel(shape) == x.numel(), ShapeError, "reshape: cannot reshape ", shape_str(x.shape()), " (",
           x.numel(), " elements) to ", shape_str(shape_in));
  if (shape == x.shape() && !needs_grad({x})) return x;
  auto strides = view_strides(x.shape(), x.strides(), shape);
  Tensor out = strides ? x.as_strided(shape, *strides, x.offset())
                       : contiguous_raw(x).as_strided(shape, contiguous_strides(shape), 0);
  return record_reshape("reshape", x, out);
}

Tensor Tensor::reshape(const Shape& shape) const { return headroom::reshape(*this, shape); }

Tensor Tensor::view(const Shape& shape_in) const {
  Shape shape = infer_shape(shape_in, numel(), "view");
  HR_CHECK(shape_numel(shape) == numel(), ShapeError, "view: cannot view ", shape_str(this->shape()), " as ",
           shape_str(shape_in));
  HR_CHECK(view_strides(this->shape(), strides(), shape).has_value(), ShapeError, "view: a tensor of shape ",
           shape_str(this->shape()), " and strides ", shape_str(strides()), " cannot be viewed as ",
           shape_str(shape_in), " without a copy; use reshape()");
  return headroom::reshape(*this, shape);
}

Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim) const {
  if (dim() == 0) return headroom::reshape(*this, {1});
  int64_t s = wrap_dim(start_dim, dim(), "flatten"), e = wrap_dim(end_dim, dim(), "flatten");
  HR_CHECK(s <= e, ValueError, "flatten: start_dim ", start_dim, " comes after end_dim ", end_dim);
  Shape out;
  for (int64_t d = 0; d < s; ++d) out.push_back(size(d));
  int64_t n = 1;
  for (int64_t d = s; d <= e; ++d) n *= size(d);
  out.push_back(n);
  for (int64_t d = e + 1; d < dim(); ++d) out.push_back(size(d));
  return headroom::reshape(*this, out);
}

Tensor Tensor::squeeze(int64_t d) const {
  int64_t dd = wrap_dim(d, dim(), "squeeze");
  if (size(dd) != 1) return *this;
  Shape s = shape();
  s.erase(s.begin() + dd);
  return headroom::reshape(*this, s);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  int64_t dd = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape s = shape();
  s.insert(s.begin() + dd, 1);
  return headroom::reshape(*this, s);
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& dims_in) {
  HR_CHECK(static_cast<int64_t>(dims_in.size()) == x.dim(), ShapeError, "permute: ", dims_in.size(),
           " dims given for a tensor of shape ", shape_str(x.shape()));
  std::vector<int64_t> dims(dims_in.size()), inverse(dims_in.size(), -1);
  Shape shape(dims.size()), strides(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) {
    dims[i] = wrap_dim(dims_in[i], x.dim(), "permute");
    HR_CHECK(inverse[static_cast<size_t>(dims[i])] < 0, ValueError, "permute: dim ", dims[i], " repeated");
    inverse[static_cast<size_t>(dims[i])] = static_cast<int64_t>(i);
    shape[i] = x.shape()[static_cast<size_t>(dims[i])];
    strides[i] = x.strides()[static_cast<size_t>(dims[i])];
  }
  Tensor out = x.as_strided(shape, strides, x.offset());
  if (needs_grad({x}))
    record("permute", out, {x}, [inverse](const Tensor& g) -> std::vector<Tensor> { return {permute(g, inverse)}; });
  return out;
}

Tensor transpose(const Tensor& x, int64_t dim0, int64_t dim1) {
  std::vector<int64_t> dims(static_cast<size_t>(x.dim()));
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[static_cast<size_t>(wrap_dim(dim0, x.dim(), "transpose"))],
            dims[static_cast<size_t>(wrap_dim(dim1, x.dim(), "transpose"))]);
  return permute(x, dims);
}

Tensor Tensor::transpose(int64_t dim0, int64_t dim1) const { return headroom::transpose(*this, dim0, dim1); }
Tensor Tensor::t() const {
  HR_CHECK(dim() == 2, ShapeError, "t(): expected a 2-d tensor, got shape ", shape_str(shape()));
  return headroom::transpose(*this, 0, 1);
}
Tensor Tensor::permute(const std::vector<int64_t>& dims) const { return headroom::permute(*this, dims); }

Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step) {
  int64_t d = wrap_dim(dim, x.dim(), "slice");
  HR_CHECK(step > 0, ValueError, "slice: step must be positive, got ", step);
  int64_t n = x.size(d);
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape shape = x.shape(), strides = x.strides();
  shape[static_cast<size_t>(d)] = (end - start + step - 1) / step;
  strides[static_cast<size_t>(d)] *= step;
  Tensor out = x.as_strided(shape, strides, x.offset() + start * x.stride(d));
  if (needs_grad({x})) {
    Shape in_shape = x.shape();
    record("slice", out, {x}, [in_shape, d, start, end, step](const Tensor& g) -> std::vector<Tensor> {
      Tensor gx = Tensor::zeros(in_shape, g.options());
      backend_for(g.device()).copy(slice(gx, d, start, end, step), g);
      return {gx};
    });
  }
  return out;
}

Tensor Tensor::slice(int64_t dim, int64_t start, int64_t end, int64_t step) const {
  return headroom::slice(*this, dim, start, end, step);
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  int64_t dd = wrap_dim(d, dim(), "select");
  int64_t n = size(dd);
  HR_CHECK(index >= -n && index < n, ValueError, "select: index ", index, " is out of range for dim ", dd, " of size ",
           n);
  if (index < 0) index += n;
  return headroom::slice(*this, dd, index, index + 1).squeeze(dd);
}

Tensor expand(const Tensor& x, const Shape& shape_in) {
  HR_CHECK(shape_in.size() >= x.shape().size(), ShapeError, "expand: cannot expand ", shape_str(x.shape()),
           " to fewer dims ", shape_str(shape_in));
  Shape shape = shape_in;
  Shape strides(shape.size(), 0);
  const size_t lead = shape.size() - x.shape().size();
  for (size_t d = 0; d < shape.size(); ++d) {
    if (d < lead) {
      HR_CHECK(shape[d] >= 0, ShapeError, "expand: -1 not allowed in new leading dims of ", shape_str(shape_in));
      continue;
    }
    int64_t have = x.shape()[d - lead];
    if (shape[d] == -1) shape[d] = have;
    HR_CHECK(shape[d] >= 0, ShapeError, "expand: negative size ", shape[d], " in ", shape_str(shape_in));
    HR_CHECK(have == shape[d] || have == 1, ShapeError, "expand: cannot expand ", shape_str(x.shape()), " to ",
             shape_str(shape_in), " (dim ", d, ": ", have, " vs ", shape[d], ")");
    strides[d] = have == 1 && shape[d] != 1 ? 0 : x.strides()[d - lead];
  }
  Tensor out = x.as_strided(shape, strides, x.offset());
  if (needs_grad({x})) {
    Shape in_shape = x.shape();
    record("expand", out, {x}, [in_shape](const Tensor& g) -> std::vector<Tensor> { return {sum_to(g, in_shape)}; });
  }
  return out;
}

Tensor Tensor::expand(const Shape& shape) const { return headroom::expand(*this, shape); }

Tensor contiguous(const Tensor& x) {
  if (x.is_contiguous()) return x;
  Tensor out = contiguous_raw(x);
  if (needs_grad({x})) record("contiguous", out, {x}, [](const Tensor& g) -> std::vector<Tensor> { return {g}; });
  return out;
}

Tensor Tensor::contiguous() const { return headroom::contiguous(*this); }

Tensor Tensor::clone() const {
  Tensor out = empty_like(*this);
  if (numel() > 0) backend_for(device()).copy(out, *this);
  if (needs_grad({*this})) record("clone", out, {*this}, [](const Tensor& g) -> std::vector<Tensor> { return {g}; });
  return out;
}

Tensor Tensor::to(Device device) const { return to(device, false); }

Tensor Tensor::to(Device device, bool non_blocking) const {
  if (device == this->device()) return *this;
  // A non-blocking copy to the host lands in pinned memory, which is what lets it not block.
  Tensor out = non_blocking && device.is_cpu() ? Tensor::empty_pinned(shape(), dtype())
                                               : Tensor::empty(shape(), options().device(device));
  copy_tensor(out, *this, non_blocking);
  if (needs_grad({*this})) {
    Device from = this->device();
    record("to_device", out, {*this}, [from](const Tensor& g) -> std::vector<Tensor> { return {g.to(from)}; });
  }
  return out;
}

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim) {
  HR_CHECK(!tensors.empty(), ValueError, "cat: expected at least one tensor");
  const Tensor& first = tensors[0];
  int64_t d = wrap_dim(dim, first.dim(), "cat");
  Shape shape = first.shape();
  int64_t total = 0;
  DType dtype = first.dtype();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    HR_CHECK(t.dim() == first.dim(), ShapeError, "cat: tensor ", i, " has shape ", shape_str(t.shape()),
             ", tensor 0 has ", shape_str(first.shape()));
    for (int64_t k = 0; k < t.dim(); ++k)
      HR_CHECK(k == d || t.size(k) == first.size(k), ShapeError, "cat: tensor ", i, " has shape ", shape_str(t.shape()),
               ", tensor 0 has ", shape_str(first.shape()), " (they may differ only in dim ", d, ")");
    HR_CHECK(t.device() == first.device(), DeviceError, "cat: tensor ", i, " is on ", t.device().str(),
             ", tensor 0 on ", first.device().str());
    dtype = promote_types(dtype, t.dtype());
    total += t.size(d);
  }
  shape[static_cast<size_t>(d)] = total;
  Tensor out = Tensor::empty(shape, first.options().dtype(dtype));
  std::vector<int64_t> sizes;
  int64_t at = 0;
  for (const auto& t : tensors) {
    if (t.size(d) > 0)
      backend_for(out.device()).copy(out.as_strided(t.shape(), out.strides(), out.offset() + at * out.stride(d)), t);
    sizes.push_back(t.size(d));
    at += t.size(d);
  }
  if (needs_grad(tensors)) {
    record("cat", out, tensors, [sizes, d](const Tensor& g) -> std::vector<Tensor> {
      std::vector<Tensor> grads;
      int64_t pos = 0;
      for (int64_t s : sizes) {
        grads.push_back(contiguous_raw(slice(g, d, pos, pos + s)));
        pos += s;
      }
      return grads;
    });
  }
  return out;
}

Tensor stack(const std::vector<Tensor>& tensors, int64_t dim) {
  HR_CHECK(!tensors.empty(), ValueError, "stack: expected at least one tensor");
  int64_t d = wrap_dim(dim, tensors[0].dim() + 1, "stack");
  std::vector<Tensor> parts;
  for (size_t i = 0; i < tensors.size(); ++i) {
    HR_CHECK(tensors[i].shape() == tensors[0].shape(), ShapeError, "stack: tensor ", i, " has shape ",
             shape_str(tensors[i].shape()), ", tensor 0 has ", shape_str(tensors[0].shape()));
    parts.push_back(tensors[i].unsqueeze(d));
  }
  return cat(parts, d);
}

std::vector<Tensor> split(const Tensor& x, int64_t size, int64_t dim) {
  HR_CHECK(size > 0, ValueError, "split: size must be positive, got ", size);
  int64_t d = wrap_dim(dim, x.dim(), "split");
  std::vector<Tensor> out;
  for (int64_t s = 0; s < x.size(d); s += size) out.push_back(slice(x, d, s, std::min(s + size, x.size(d))));
  return out;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  int64_t d = wrap_dim(dim, x.dim(), "split");
  int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  HR_CHECK(total == x.size(d), ShapeError, "split: sizes add up to ", total, " but dim ", d, " of ",
           shape_str(x.shape()), " has ", x.size(d));
  std::vector<Tensor> out;
  int64_t s = 0;
  for (int64_t n : sizes) {
    out.push_back(slice(x, d, s, s + n));
    s += n;
  }
  return out;
}

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  int64_t d = wrap_dim(dim, x.dim(), "index_select");
  HR_CHECK(index.dim() == 1, ShapeError, "index_select: index must be 1-d, got shape ", shape_str(index.shape()));
  HR_CHECK(!is_floating(index.dtype()) && index.dtype() != DType::boolean, DTypeError,
           "index_select: index must be an integer tensor, got ", describe(index));
  check_same_device("index_select", {x, index});
  Tensor idx = cast_raw(contiguous_raw(index), DType::i64);
  Shape shape = x.shape();
  shape[static_cast<size_t>(d)] = idx.numel();
  Tensor out = Tensor::empty(shape, x.options());
  if (out.numel() > 0) backend_for(x.device()).index_select(x, d, idx, out);
  if (needs_grad({x})) {
    Shape in_shape = x.shape();
    // The index may be the caller's own buffer (a token batch reused next step): saved with a
    // version check like any input, so overwriting it before backward is an error, not a
    // silently misplaced gradient.
    SavedTensor saved_idx(idx, "index_select");
    record("index_select", out, {x}, [in_shape, d, saved_idx](const Tensor& g) -> std::vector<Tensor> {
      Tensor gx = Tensor::zeros(in_shape, g.options());
      if (g.numel() > 0) backend_for(g.device()).index_add(gx, d, saved_idx.unpack(), contiguous_raw(g));
      return {gx};
    });
  }
  return out;
}

}  // namespace headroom
