// Copies and casts, transfers between host and device, fill, arange and the Philox draws.
//
// Why it is shaped so:
//  - copy: two contiguous tensors of one dtype are one cudaMemcpyAsync. Otherwise a grid-stride
//    kernel over the shared Indexer: a same-dtype copy moves raw bits (one kernel per element
//    size, not per dtype); a cast is one kernel per (dst, src) dtype pair and converts exactly
//    as the CPU does (through f32 for f16/bf16, round to nearest even; != 0 for bool).
//  - fill converts the value once, on the host, the CPU's way, and then only writes its bits:
//    cudaMemsetAsync when the output is dense and the value one repeated byte (zero above all),
//    else a kernel per element size.
//  - arange and the random draws compute element i from i alone (Philox is counter-based), so
//    threads are independent; they give the CPU's numbers bit for bit, Note [same numbers as
//    the cpu] below.
// Every output is written (=), nothing accumulated. All work goes to the device's current
// stream; only a blocking host transfer waits for it.
#include <cmath>
#include <cstring>
#include <mutex>
#include <set>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/elementwise_ops.cuh"

namespace headroom::cuda {

// Note [same numbers as the cpu]
// arange and the random draws must equal the CPU backend's bit for bit (engine/rng.h: a seed
// gives the same tensor on every device, and a recomputed segment its same dropout mask).
//  - Element i depends only on i: arange is start + i * step in double; a uniform is word
//    i % 4 of Philox4x32-10(counter offset + i / 4, key seed), (word >> 8) * 2^-24; normals
//    2k and 2k+1 share counter offset + k, Box-Muller on its words 0 and 1, cos for the even
//    element and sin for the odd one.
//  - nvcc contracts a * b + c into one fused multiply-add, rounded once, where the CPU (x86-64
//    without FMA) rounds twice; so the products and sums here are __dmul_rn / __dadd_rn /
//    __fmul_rn, which are never contracted. -use_fast_math and the __logf/__sinf intrinsics
//    must never reach this file: they change the low bits.
//  - The transcendental functions of two libraries (glibc, CUDA) do not agree to the last bit
//    in float: glibc 2.36's logf, cosf and sinf each miss the correctly rounded result on about
//    1% of the 2^24 inputs Box-Muller can see. Both sides are only guaranteed to agree on the
//    correctly rounded float, so log, sin and cos are taken in double and rounded to float.
//    Checked exhaustively over all 2^24 inputs of each: every exact result lies at least
//    2^-25.8 float ulp from a rounding midpoint, while CUDA's double log/sin/cos are within
//    2 double ulp (2^-28 float ulp) -- so the rounded result is the correctly rounded one on
//    every input; glibc's double functions give the same on all of them. The CPU side must
//    compute the same way (engine/rng.cpp philox_normal: log/cos/sin in double).
//  - Every remaining step is exact or one correctly rounded IEEE operation (sqrt included),
//    identical on both sides; f16/bf16/f64 outputs are converted from the f32 value, round to
//    nearest even, as on the CPU.

namespace {

constexpr int64_t kPhiloxWords = 4;

struct PhiloxBlock {
  uint32_t word[4];
};

// Philox4x32-10 as engine/rng.cpp computes it: the counter in words 0 and 1, the seed the key.
__device__ __forceinline__ PhiloxBlock philox4x32_10(uint64_t counter, uint64_t seed) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(kM0, c0), lo0 = kM0 * c0;
    const uint32_t hi1 = __umulhi(kM1, c2), lo1 = kM1 * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return {{c0, c1, c2, c3}};
}

// The top 24 bits of a word as a float in [0, 1): exact (an integer below 2^24 times 2^-24).
__device__ __forceinline__ float uniform_from_word(uint32_t w) {
  return __fmul_rn(static_cast<float>(w >> 8), 1.0f / 16777216.0f);
}

// ---- copy ----

// Same dtype, any strides: the element's bits.
template <typename B>
void copy_bits_launch(const KernelScope& scope, const Tensor& dst, const Tensor& src) {
  B* d = device_data<B>(dst);
  const B* s = device_data<const B>(src);
  launch_strided<2>(scope, make_indexer<2>({&dst, &src}), dst.numel(),
                    [=] __device__(const int64_t* off) { d[off[0]] = s[off[1]]; });
}

template <typename D, typename S>
void cast_launch(const KernelScope& scope, const Tensor& dst, const Tensor& src) {
  D* d = device_data<D>(dst);
  const S* s = device_data<const S>(src);
  launch_strided<2>(scope, make_indexer<2>({&dst, &src}), dst.numel(),
                    [=] __device__(const int64_t* off) { d[off[0]] = convert<D>(s[off[1]]); });
}

template <typename D>
void cast_to(const KernelScope& scope, const Tensor& dst, const Tensor& src) {
  dispatch_cuda(src.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    // Same dtypes never get here (copy moves bits); not instantiating them saves 8 kernels.
    if constexpr (!std::is_same_v<D, S>) cast_launch<D, S>(scope, dst, src);
  });
}

// ---- fill ----

template <typename B>
void fill_bits_launch(const KernelScope& scope, const Tensor& out, B bits) {
  B* p = device_data<B>(out);
  launch_strided<1>(scope, make_indexer<1>({&out}), out.numel(),
                    [=] __device__(const int64_t* off) { p[off[0]] = bits; });
}

// ---- arange ----

template <typename T>
__global__ void arange_kernel(T* out, int64_t n, double start, double step) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // Two roundings, like the CPU: no fused multiply-add (Note [same numbers as the cpu]).
    out[i] = convert<T>(__dadd_rn(start, __dmul_rn(static_cast<double>(i), step)));
  }
}

template <typename T>
void arange_launch(const KernelScope& scope, const Tensor& out, double start, double step) {
  const int64_t n = out.numel();
  arange_kernel<T><<<grid_for(n), kBlock, 0, scope.stream()>>>(device_data<T>(out), n, start, step);
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- random ----

// One thread per Philox block: elements 4g .. 4g+3 are its four words.
template <typename T>
__global__ void random_uniform_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset) {
  const int64_t blocks = (n + kPhiloxWords - 1) / kPhiloxWords;
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < blocks;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PhiloxBlock r = philox4x32_10(offset + static_cast<uint64_t>(g), seed);
    const int64_t first = g * kPhiloxWords;
#pragma unroll
    for (int j = 0; j < kPhiloxWords; ++j) {
      if (first + j < n) out[first + j] = convert<T>(uniform_from_word(r.word[j]));
    }
  }
}

// One thread per Box-Muller pair: elements 2k (cos) and 2k+1 (sin) from counter offset + k.
template <typename T>
__global__ void random_normal_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset) {
  const int64_t pairs = (n + 1) / 2;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < pairs;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const PhiloxBlock r = philox4x32_10(offset + static_cast<uint64_t>(k), seed);
    // u1 in (0, 1] so that log(u1) is finite; both exact.
    const float u1 = __fmul_rn(__fadd_rn(static_cast<float>(r.word[0] >> 8), 1.0f), 1.0f / 16777216.0f);
    const float u2 = uniform_from_word(r.word[1]);
    // log, sin and cos in double, rounded once to float: the correctly rounded float on every
    // input (Note [same numbers as the cpu]). Never __logf / __sinf / fast math here.
    const float log_u1 = static_cast<float>(log(static_cast<double>(u1)));
    const float radius = __fsqrt_rn(__fmul_rn(-2.0f, log_u1));
    const float theta = __fmul_rn(6.2831853071795864f, u2);
    double sin_theta, cos_theta;
    sincos(static_cast<double>(theta), &sin_theta, &cos_theta);
    const int64_t first = 2 * k;
    out[first] = convert<T>(__fmul_rn(radius, static_cast<float>(cos_theta)));
    if (first + 1 < n) out[first + 1] = convert<T>(__fmul_rn(radius, static_cast<float>(sin_theta)));
  }
}

template <typename T>
void random_launch(const KernelScope& scope, const Tensor& out, uint64_t seed, uint64_t offset, bool normal) {
  const int64_t n = out.numel();
  T* p = device_data<T>(out);
  if (normal) {
    random_normal_kernel<T><<<grid_for((n + 1) / 2), kBlock, 0, scope.stream()>>>(p, n, seed, offset);
  } else {
    random_uniform_kernel<T>
        <<<grid_for((n + kPhiloxWords - 1) / kPhiloxWords), kBlock, 0, scope.stream()>>>(p, n, seed, offset);
  }
  HR_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void CudaBackend::impl_copy(const Tensor& dst, const Tensor& src) {
  if (dst.numel() == 0) return;
  KernelScope scope(dst, dst.dtype() == src.dtype() ? "copy" : "cast");
  if (dst.dtype() == src.dtype()) {
    if (dst.is_contiguous() && src.is_contiguous()) {
      // The same bytes: nothing to do (and cudaMemcpy's ranges must not overlap).
      if (dst.raw_data() != src.raw_data())
        HR_CUDA_CHECK(
            cudaMemcpyAsync(dst.raw_data(), src.raw_data(), dst.nbytes(), cudaMemcpyDeviceToDevice, scope.stream()));
      return;
    }
    dispatch_bits(dtype_size(dst.dtype()),
                  [&](auto tag) { copy_bits_launch<typename decltype(tag)::type>(scope, dst, src); });
    return;
  }
  dispatch_cuda(dst.dtype(), [&](auto tag) { cast_to<typename decltype(tag)::type>(scope, dst, src); });
}

void CudaBackend::copy_to_host(void* host_dst, const void* src, size_t nbytes, Device device, bool non_blocking) {
  if (nbytes == 0) return;
  KernelScope scope(device);
  // Ordered after the kernels that produce src: they are on the same stream.
  HR_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, nbytes, cudaMemcpyDeviceToHost, scope.stream()));
  // Blocking: the contract is that the bytes have landed when this returns. Into pinned memory
  // the copy is only queued, so wait for the stream (the host's thread, not the GPU, waits).
  // non_blocking: the caller waits for the stream or an event on it before reading.
  if (!non_blocking) HR_CUDA_CHECK(cudaStreamSynchronize(scope.stream()));
}

// Note [peer copies]: between two GPUs the bytes go GPU to GPU (cudaMemcpyPeerAsync) -- over
// NVLink or PCIe directly where the pair has peer access (enabled once per pair, from the
// destination's side), staged by the driver where it has not -- never through a host tensor.
// The source's stream is drained first (the kernels that produce src are on it), the copy is
// queued on the destination's stream (ordered before the work that reads dst), and the host
// waits for it, so src may be freed on return, as copy_tensor's other paths allow.
bool CudaBackend::copy_between_devices(void* dst, Device dst_device, const void* src, Device src_device,
                                       size_t nbytes) {
  if (nbytes == 0) return true;
  static std::mutex mutex;
  static std::set<std::pair<int, int>> tried;  // (dst, src) pairs whose peer access was looked at
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (tried.insert({dst_device.index, src_device.index}).second) {
      int can = 0;
      HR_CUDA_CHECK(cudaDeviceCanAccessPeer(&can, dst_device.index, src_device.index));
      if (can) {
        CudaDeviceGuard guard(dst_device.index);
        const cudaError_t e = cudaDeviceEnablePeerAccess(src_device.index, 0);
        if (e == cudaErrorPeerAccessAlreadyEnabled) (void)cudaGetLastError();  // clears it
        else HR_CUDA_CHECK(e);
      }
    }
  }
  {
    KernelScope from(src_device);
    HR_CUDA_CHECK(cudaStreamSynchronize(from.stream()));
  }
  KernelScope to(dst_device);
  HR_CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_device.index, src, src_device.index, nbytes, to.stream()));
  HR_CUDA_CHECK(cudaStreamSynchronize(to.stream()));
  return true;
}

void CudaBackend::copy_from_host(void* dst, const void* host_src, size_t nbytes, Device device, bool non_blocking) {
  if (nbytes == 0) return;
  KernelScope scope(device);
  HR_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, nbytes, cudaMemcpyHostToDevice, scope.stream()));
  // Blocking: the caller may free or reuse the host buffer (a temporary in copy_tensor) as soon
  // as this returns, and from pinned memory the copy is only queued: wait until it has read
  // the bytes. non_blocking: the caller keeps the pinned source alive (record_stream).
  if (!non_blocking) HR_CUDA_CHECK(cudaStreamSynchronize(scope.stream()));
}

void CudaBackend::impl_fill(const Tensor& out, double value) {
  if (out.numel() == 0) return;
  KernelScope scope(out);
  // The value in out's dtype, converted on the host exactly as the CPU converts it.
  const size_t size = dtype_size(out.dtype());
  uint64_t bits = 0;
  dispatch_cuda(out.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T v = convert<T>(value);
    std::memcpy(&bits, &v, sizeof(T));
  });
  if (out.is_contiguous()) {
    unsigned char bytes[sizeof(bits)];
    std::memcpy(bytes, &bits, sizeof(bits));
    bool one_byte = true;
    for (size_t i = 1; i < size; ++i) one_byte = one_byte && bytes[i] == bytes[0];
    if (one_byte) {
      HR_CUDA_CHECK(cudaMemsetAsync(out.raw_data(), bytes[0], out.nbytes(), scope.stream()));
      return;
    }
  }
  dispatch_bits(size, [&](auto tag) {
    using B = typename decltype(tag)::type;
    B element;
    std::memcpy(&element, &bits, sizeof(B));  // the low bytes: the value's own
    fill_bits_launch<B>(scope, out, element);
  });
}

void CudaBackend::impl_arange(const Tensor& out, double start, double step) {
  if (out.numel() == 0) return;
  KernelScope scope(out);
  dispatch_cuda(out.dtype(), [&](auto tag) { arange_launch<typename decltype(tag)::type>(scope, out, start, step); });
}

void CudaBackend::impl_random_uniform(const Tensor& out, uint64_t seed, uint64_t offset) {
  if (out.numel() == 0) return;
  KernelScope scope(out);
  dispatch_cuda_float(out.dtype(), "rand", [&](auto tag) {
    random_launch<typename decltype(tag)::type>(scope, out, seed, offset, /*normal=*/false);
  });
}

void CudaBackend::impl_random_normal(const Tensor& out, uint64_t seed, uint64_t offset) {
  if (out.numel() == 0) return;
  KernelScope scope(out);
  dispatch_cuda_float(out.dtype(), "randn", [&](auto tag) {
    random_launch<typename decltype(tag)::type>(scope, out, seed, offset, /*normal=*/true);
  });
}

}  // namespace headroom::cuda
