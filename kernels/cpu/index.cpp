// index_select and index_add on the CPU.
//
// Both see their tensors as [outer, size-along-dim, inner] without copying: the outer and inner
// dims keep whatever strides the tensors have, the inner ones merged by StridedLayout so a
// contiguous inner block becomes one memcpy (index_select) or one unit-stride loop.
//
// index_select moves bytes, so it dispatches on the element size, not the dtype; its rows
// (outer x index) are independent and run in parallel.
//
// index_add accumulates, and repeated indices write the same destination row, so it must not
// be split over the index: threads take disjoint parts of the non-indexed dims (an outer slice
// and a block of inner columns) and each walks the whole index. The index is sorted once into
// groups of equal values; each group is summed in acc_t (f32 for f16/bf16) before it is added
// to its destination once, so repeated indices lose no precision to 16-bit rounding and the
// result does not depend on the thread count.
//
// Every index is checked before any thread starts (so that nothing is half written when it throws): out of range throws ValueError naming the index, its position and the dim's size.
#include <algorithm>
#include <cstring>
#include <numeric>

#include "kernels/contract_checks.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/strided.h"

namespace headroom::cpu {

namespace {

// The index values (i64, 1-d, any stride), each checked against the dim's size.
std::vector<int64_t> checked_index(const char* op, const Tensor& index, int64_t size, int64_t dim,
                                   const Tensor& indexed) {
  HR_CHECK(index.dim() == 1 && index.dtype() == DType::i64, DTypeError, op, ": index must be a 1-d i64 tensor, got ",
           describe(index));
  const int64_t* p = static_cast<const int64_t*>(index.raw_data());
  std::vector<int64_t> v(static_cast<size_t>(index.numel()));
  for (int64_t i = 0; i < index.numel(); ++i) {
    const int64_t at = p[i * index.stride(0)];
    HR_CHECK(at >= 0 && at < size, ValueError, op, ": index ", at, " at position ", i, " is out of range for dim ", dim,
             " of size ", size, " (tensor ", describe(indexed), ")");
    v[static_cast<size_t>(i)] = at;
  }
  return v;
}

// a and b laid out around `dim`: the outer dims (before it) with each tensor's strides, and the
// inner dims (after it) as views that a StridedLayout can merge.
struct AroundDim {
  Shape outer_shape, outer_strides_a, outer_strides_b;
  int64_t outer = 1, inner = 1;
  Tensor inner_a, inner_b;

  AroundDim(const Tensor& a, const Tensor& b, int64_t dim) {
    Shape inner_shape, inner_strides_a, inner_strides_b;
    for (int64_t d = 0; d < a.dim(); ++d) {
      const auto du = static_cast<size_t>(d);
      if (d < dim) {
        outer_shape.push_back(a.shape()[du]);
        outer_strides_a.push_back(a.strides()[du]);
        outer_strides_b.push_back(b.strides()[du]);
        outer *= a.shape()[du];
      } else if (d > dim) {
        inner_shape.push_back(a.shape()[du]);
        inner_strides_a.push_back(a.strides()[du]);
        inner_strides_b.push_back(b.strides()[du]);
        inner *= a.shape()[du];
      }
    }
    inner_a = a.as_strided(inner_shape, inner_strides_a, 0);
    inner_b = b.as_strided(inner_shape, inner_strides_b, 0);
  }

  // Element offsets of outer slice o in a and in b.
  std::pair<int64_t, int64_t> outer_offsets(int64_t o) const {
    int64_t oa = 0, ob = 0;
    for (size_t d = outer_shape.size(); d-- > 0;) {
      const int64_t i = o % outer_shape[d];
      o /= outer_shape[d];
      oa += i * outer_strides_a[d];
      ob += i * outer_strides_b[d];
    }
    return {oa, ob};
  }
};

template <typename U>
void gather(const Tensor& x, int64_t dim, const std::vector<int64_t>& idx, const Tensor& out) {
  const AroundDim around(out, x, dim);
  const StridedLayout<2> inner({&around.inner_a, &around.inner_b});
  const auto k = static_cast<int64_t>(idx.size());
  const int64_t out_step = out.stride(dim), x_step = x.stride(dim);
  U* pout = static_cast<U*>(out.raw_data());
  const U* px = static_cast<const U*>(x.raw_data());
  parallel_for(around.outer * k, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(around.inner, 1)),
               [&](int64_t b, int64_t e) {
                 for (int64_t r = b; r < e; ++r) {
                   const int64_t o = r / k, i = r % k;
                   const auto [oo, ox] = around.outer_offsets(o);
                   U* dst = pout + oo + i * out_step;
                   const U* src = px + ox + idx[static_cast<size_t>(i)] * x_step;
                   inner.for_range(
                       0, around.inner,
                       [&](const std::array<int64_t, 2>& off, const std::array<int64_t, 2>& st, int64_t len) {
                         U* d = dst + off[0];
                         const U* s = src + off[1];
                         if (st[0] == 1 && st[1] == 1) {
                           std::memcpy(d, s, static_cast<size_t>(len) * sizeof(U));
                         } else {
                           for (int64_t l = 0; l < len; ++l) d[l * st[0]] = s[l * st[1]];
                         }
                       });
                 }
               });
}

// Positions of the index sorted by value (stable), cut into groups of equal values.
struct IndexGroups {
  std::vector<int64_t> order;   // positions, grouped
  std::vector<int64_t> starts;  // group g is order[starts[g] .. starts[g + 1])

  explicit IndexGroups(const std::vector<int64_t>& idx) : order(idx.size()) {
    std::iota(order.begin(), order.end(), int64_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return idx[static_cast<size_t>(a)] < idx[static_cast<size_t>(b)]; });
    for (size_t i = 0; i < order.size(); ++i)
      if (i == 0 || idx[static_cast<size_t>(order[i])] != idx[static_cast<size_t>(order[i - 1])])
        starts.push_back(static_cast<int64_t>(i));
    starts.push_back(static_cast<int64_t>(order.size()));
  }
  size_t count() const { return starts.size() - 1; }
};

template <typename T>
void scatter_add(const Tensor& out, int64_t dim, const std::vector<int64_t>& idx, const Tensor& src) {
  // Sums of a group: acc_t for floats (f32 for f16/bf16), int64 for integers.
  using A = std::conditional_t<std::is_floating_point_v<acc_t<T>>, acc_t<T>, int64_t>;
  const AroundDim around(out, src, dim);
  const StridedLayout<2> inner({&around.inner_a, &around.inner_b});
  const IndexGroups groups(idx);
  const int64_t out_step = out.stride(dim), src_step = src.stride(dim);
  T* pout = static_cast<T*>(out.raw_data());
  const T* psrc = static_cast<const T*>(src.raw_data());
  // Units of work: an outer slice and a block of inner columns; about two per thread, and
  // blocks no narrower than kMinBlock so that each source row is read in long runs. (The
  // blocking does not change any element's summation order, so results do not depend on it.)
  constexpr int64_t kMinBlock = 64;
  const int64_t want_blocks = (2 * num_threads() + around.outer - 1) / around.outer;
  const int64_t inner_blocks =
      std::clamp<int64_t>(want_blocks, 1, std::max<int64_t>(1, (around.inner + kMinBlock - 1) / kMinBlock));
  const int64_t block = (around.inner + inner_blocks - 1) / inner_blocks;
  const int64_t blocks = (around.inner + block - 1) / block;
  const int64_t work_per_unit = std::max<int64_t>(1, block * static_cast<int64_t>(idx.size()));
  parallel_for(around.outer * blocks, std::max<int64_t>(1, kParallelGrain / work_per_unit), [&](int64_t b, int64_t e) {
    std::vector<A> acc(static_cast<size_t>(block));
    for (int64_t u = b; u < e; ++u) {
      const int64_t o = u / blocks, j0 = (u % blocks) * block, j1 = std::min(around.inner, j0 + block);
      const auto [oo, os] = around.outer_offsets(o);
      for (size_t gi = 0; gi < groups.count(); ++gi) {
        std::fill(acc.begin(), acc.end(), A(0));
        for (int64_t q = groups.starts[gi]; q < groups.starts[gi + 1]; ++q) {
          const T* s_base = psrc + os + groups.order[static_cast<size_t>(q)] * src_step;
          A* a = acc.data();
          inner.for_range(j0, j1,
                          [&](const std::array<int64_t, 2>& off, const std::array<int64_t, 2>& st, int64_t len) {
                            const T* s = s_base + off[1];
                            for (int64_t l = 0; l < len; ++l)
                              a[l] += static_cast<A>(static_cast<acc_t<T>>(s[l * st[1]]));
                            a += len;
                          });
        }
        const int64_t target = idx[static_cast<size_t>(groups.order[static_cast<size_t>(groups.starts[gi])])];
        T* d_base = pout + oo + target * out_step;
        const A* a = acc.data();
        inner.for_range(j0, j1, [&](const std::array<int64_t, 2>& off, const std::array<int64_t, 2>& st, int64_t len) {
          T* d = d_base + off[0];
          for (int64_t l = 0; l < len; ++l) {
            const A sum = static_cast<A>(static_cast<acc_t<T>>(d[l * st[0]])) + a[l];
            d[l * st[0]] = static_cast<T>(static_cast<acc_t<T>>(sum));
          }
          a += len;
        });
      }
    }
  });
}

}  // namespace

void CpuBackend::impl_index_select(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) {
  const char* op = "index_select";
  const int64_t d = wrap_dim(dim, x.dim(), op);  // checked by Backend::index_select
  const std::vector<int64_t> idx = checked_index(op, index, x.size(d), d, x);
  if (out.numel() == 0) return;
  switch (dtype_size(x.dtype())) {
    case 1: gather<uint8_t>(x, d, idx, out); break;
    case 2: gather<uint16_t>(x, d, idx, out); break;
    case 4: gather<uint32_t>(x, d, idx, out); break;
    case 8: gather<uint64_t>(x, d, idx, out); break;
    default: throw DTypeError(str_cat(op, ": unsupported element size for ", describe(x)));
  }
}

void CpuBackend::impl_index_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  const char* op = "index_add";
  const int64_t d = wrap_dim(dim, out.dim(), op);  // checked by Backend::index_add
  const std::vector<int64_t> idx = checked_index(op, index, out.size(d), d, out);
  if (src.numel() == 0) return;
  dispatch_dtype(out.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, bool>) scatter_add<T>(out, d, idx, src);
  });
}

}  // namespace headroom::cpu
