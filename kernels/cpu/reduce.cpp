// Reductions over any set of dims.
//
// Fast path: when x is contiguous and the reduced dims form one block, x is viewed as
// [A, K, B] and out as [A, B]; for B == 1 each output reduces a contiguous run, otherwise the
// K rows are accumulated into B running values so that memory is read in order. Anything else
// takes the general path, which walks the reduced elements of each output by index.
// Sums accumulate in double for floats (f32 sums over millions of elements keep their digits)
// and in int64 for integers.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/strided.h"

namespace headroom::cpu {

namespace {

template <typename T>
using sum_t = std::conditional_t<std::is_floating_point_v<acc_t<T>>, double, int64_t>;

template <typename T>
inline T to_storage(double v) {
  if constexpr (std::is_same_v<T, bool>) return v != 0;
  else if constexpr (std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>) return T(static_cast<float>(v));
  else return static_cast<T>(v);
}

// Accumulates one reduction; value() gives the result as double (or the index for arg ops).
template <typename T>
struct Accum {
  using C = acc_t<T>;
  ReduceOp op;
  sum_t<T> sum = 0;
  C best{};
  int64_t best_idx = -1;
  int64_t count = 0;

  inline void add(C v, int64_t idx) {
    switch (op) {
      case ReduceOp::sum:
      case ReduceOp::mean: sum += static_cast<sum_t<T>>(v); break;
      case ReduceOp::max:
      case ReduceOp::argmax:
        if (best_idx < 0 || v > best || (is_nan(v) && !is_nan(best))) {
          best = v;
          best_idx = idx;
        }
        break;
      case ReduceOp::min:
      case ReduceOp::argmin:
        if (best_idx < 0 || v < best || (is_nan(v) && !is_nan(best))) {
          best = v;
          best_idx = idx;
        }
        break;
      case ReduceOp::kCount: break;
    }
    ++count;
  }
  static bool is_nan(C v) {
    if constexpr (std::is_floating_point_v<C>) return std::isnan(v);
    else return false;
  }
  void write(const Tensor& out, int64_t out_off) const {
    if (op == ReduceOp::argmax || op == ReduceOp::argmin) {
      static_cast<int64_t*>(out.raw_data())[out_off] = best_idx;
      return;
    }
    T* o = static_cast<T*>(out.raw_data()) + out_off;
    if (op == ReduceOp::sum) *o = to_storage<T>(static_cast<double>(sum));
    else if (op == ReduceOp::mean) *o = to_storage<T>(static_cast<double>(sum) / static_cast<double>(count));
    else *o = to_storage<T>(static_cast<double>(best));
  }
};

// Note [plain sums]: a float sum or mean over one block of dims, the case every bias gradient
// and loss takes, runs without Accum's per-element switch: for B > 1 each of B running sums
// (double) takes a whole row of K at a time, a loop GCC vectorises; for B == 1 one running sum
// walks the run. The order of the additions is Accum's, so the results are the same bits. A
// Linear's bias gradient ([B*T, C] -> [C]) through Accum was 6% of gpt-4l-cpu-f32-fused's step.
template <typename T>
void sum_rows(const T* px, int64_t A, int64_t K, int64_t B, bool mean, T* out) {
  const double count = static_cast<double>(K);
  auto finish = [&](double v) { return to_storage<T>(mean ? v / count : v); };
  if (B == 1) {
    parallel_for(A, std::max<int64_t>(1, kParallelGrain / K), [&](int64_t b, int64_t e) {
      for (int64_t a = b; a < e; ++a) {
        const T* row = px + a * K;
        double sum = 0;
        for (int64_t k = 0; k < K; ++k) sum += static_cast<double>(static_cast<acc_t<T>>(row[k]));
        out[a] = finish(sum);
      }
    });
    return;
  }
  parallel_for(B, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(K * A, 1)), [&](int64_t b0, int64_t b1) {
    std::vector<double> sums(static_cast<size_t>(b1 - b0));
    for (int64_t a = 0; a < A; ++a) {
      std::fill(sums.begin(), sums.end(), 0.0);
      double* __restrict s = sums.data();
      for (int64_t k = 0; k < K; ++k) {
        const T* __restrict row = px + (a * K + k) * B + b0;
        for (int64_t j = 0; j < b1 - b0; ++j) s[j] += static_cast<double>(static_cast<acc_t<T>>(row[j]));
      }
      for (int64_t j = b0; j < b1; ++j) out[a * B + j] = finish(sums[static_cast<size_t>(j - b0)]);
    }
  });
}

}  // namespace

void CpuBackend::impl_reduce(ReduceOp op, const Tensor& x, const Tensor& out) {
  const Shape& xs = x.shape();
  const Shape& os = out.shape();
  HR_CHECK(xs.size() == os.size(), ShapeError, "reduce ", reduce_op_name(op), ": input ", shape_str(xs), " and output ",
           shape_str(os), " differ in rank");
  const bool arg = op == ReduceOp::argmax || op == ReduceOp::argmin;
  HR_CHECK(arg ? out.dtype() == DType::i64 : out.dtype() == x.dtype(), DTypeError, "reduce ", reduce_op_name(op),
           ": output dtype ", dtype_name(out.dtype()), " does not fit input ", dtype_name(x.dtype()));
  HR_CHECK(x.numel() > 0 || op == ReduceOp::sum || op == ReduceOp::mean, ValueError, "reduce ", reduce_op_name(op),
           ": cannot reduce an empty tensor ", shape_str(xs));
  std::vector<bool> reduced(xs.size());
  int first = -1, last = -1;
  for (size_t d = 0; d < xs.size(); ++d) {
    reduced[d] = os[d] == 1 && xs[d] != 1;
    HR_CHECK(reduced[d] || os[d] == xs[d], ShapeError, "reduce ", reduce_op_name(op), ": output ", shape_str(os),
             " does not fit input ", shape_str(xs));
    if (reduced[d]) {
      if (first < 0) first = static_cast<int>(d);
      last = static_cast<int>(d);
    }
  }
  bool block = true;
  for (int d = first; d >= 0 && d <= last; ++d) block = block && reduced[d];

  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = acc_t<T>;
    const T* px = static_cast<const T*>(x.raw_data());
    if (x.is_contiguous() && out.is_contiguous() && block) {
      int64_t A = 1, K = 1, B = 1;
      for (int d = 0; d < static_cast<int>(xs.size()); ++d) {
        if (first >= 0 && d < first) A *= xs[d];
        else if (first >= 0 && d <= last) K *= xs[d];
        else if (first >= 0) B *= xs[d];
        else A *= xs[d];
      }
      if constexpr (std::is_floating_point_v<C>) {
        if ((op == ReduceOp::sum || op == ReduceOp::mean) && K > 0) {  // Note [plain sums]
          sum_rows<T>(px, A, K, B, op == ReduceOp::mean, static_cast<T*>(out.raw_data()));
          return;
        }
      }
      if (B == 1) {
        parallel_for(A, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(K, 1)), [&](int64_t b, int64_t e) {
          for (int64_t a = b; a < e; ++a) {
            Accum<T> acc{op};
            const T* row = px + a * K;
            for (int64_t k = 0; k < K; ++k) acc.add(static_cast<C>(row[k]), k);
            acc.write(out, a);
          }
        });
      } else {
        parallel_for(B, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(K * A, 1)),
                     [&](int64_t b0, int64_t b1) {
                       std::vector<Accum<T>> accs(static_cast<size_t>(b1 - b0), Accum<T>{op});
                       for (int64_t a = 0; a < A; ++a) {
                         for (auto& acc : accs) acc = Accum<T>{op};
                         for (int64_t k = 0; k < K; ++k) {
                           const T* row = px + (a * K + k) * B;
                           for (int64_t j = b0; j < b1; ++j)
                             accs[static_cast<size_t>(j - b0)].add(static_cast<C>(row[j]), k);
                         }
                         for (int64_t j = b0; j < b1; ++j) accs[static_cast<size_t>(j - b0)].write(out, a * B + j);
                       }
                     });
      }
      return;
    }
    // General path: outputs by flat index; reduced elements by multi-index.
    Shape red_shape, red_strides, keep_shape, keep_strides, out_strides;
    for (size_t d = 0; d < xs.size(); ++d) {
      if (reduced[d]) {
        red_shape.push_back(xs[d]);
        red_strides.push_back(x.strides()[d]);
      } else {
        keep_shape.push_back(xs[d]);
        keep_strides.push_back(x.strides()[d]);
        out_strides.push_back(out.strides()[d]);
      }
    }
    const int64_t M = shape_numel(keep_shape), K = shape_numel(red_shape);
    parallel_for(M, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(K, 1)), [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; ++m) {
        int64_t xoff = 0, ooff = 0, rem = m;
        for (size_t d = keep_shape.size(); d-- > 0;) {
          int64_t i = rem % keep_shape[d];
          rem /= keep_shape[d];
          xoff += i * keep_strides[d];
          ooff += i * out_strides[d];
        }
        Accum<T> acc{op};
        for (int64_t k = 0; k < K; ++k) {
          int64_t off = 0, r = k;
          for (size_t d = red_shape.size(); d-- > 0;) {
            off += (r % red_shape[d]) * red_strides[d];
            r /= red_shape[d];
          }
          acc.add(static_cast<C>(px[xoff + off]), k);
        }
        acc.write(out, ooff);
      }
    });
  });
}

}  // namespace headroom::cpu
