// attention-bench: causal attention, forward and backward, in each of its forms on one device --
// the textbook composite (T x T scores), the fused kernel on CUDA cores and the fused kernel on
// tensor cores (kernels/cuda/attention_tc.h; cuda, f16/bf16, head dim 64 or 128) -- with the
// time, the rate in TFLOP/s and the peak memory each adds beyond its inputs.
//
//   attention-bench --device cuda --dtype bf16                  # GPT-2 small's shape, B=8 H=12 T=1024 D=64
//   attention-bench --device cpu --batch 1 --heads 2 --seq 256  # seconds on a CPU
//
// FLOPs are the matrix products' (2 per multiply-add): forward 4 B H T^2 D, backward 2.5 times
// that (five products to two), both halved under the causal mask, which skips half the tiles --
// the usual FlashAttention accounting, so the rates compare with published ones. Times are the
// mean of --iters runs after --warmup, between events on the device's stream (host time on the
// CPU). The peak is the allocator's over one forward and backward, less the inputs and the
// output gradient allocated before it.
#include <iomanip>
#include <iostream>

#include "autograd/functions/attention.h"
#include "engine/caching_allocator.h"
#include "engine/event.h"
#include "examples/common.h"
#ifdef HEADROOM_WITH_CUDA
#include "kernels/cuda/attention_tc.h"
#endif

namespace headroom {
namespace {

struct Row {
  std::string form;
  std::string status = "ok";
  double fwd_ms = 0, step_ms = 0, tflops = 0;
  int64_t peak_bytes = 0;
};

struct AttnShape {
  int64_t b, h, t, d;
  bool causal;
  double forward_flops() const {
    return 4.0 * static_cast<double>(b * h * d) * static_cast<double>(t) * static_cast<double>(t) *
           (causal ? 0.5 : 1.0);
  }
};

// Times form `impl` (with tensor cores on or off, where that applies).
Row measure(const std::string& form, AttentionImpl impl, const AttnShape& s, DType dtype, Device device, int64_t iters,
            int64_t warmup) {
  Row row;
  row.form = form;
  CachingAllocator& alloc = caching_allocator(device);
  try {
    const TensorOptions opts = TensorOptions().dtype(dtype).device(device);
    manual_seed(1);
    Tensor q = Tensor::randn({s.b, s.h, s.t, s.d}, opts).set_requires_grad(true);
    Tensor k = Tensor::randn({s.b, s.h, s.t, s.d}, opts).set_requires_grad(true);
    Tensor v = Tensor::randn({s.b, s.h, s.t, s.d}, opts).set_requires_grad(true);
    const Tensor dout = Tensor::randn({s.b, s.h, s.t, s.d}, opts);
    auto step = [&](bool backward) {
      Tensor out = scaled_dot_product_attention(q, k, v, s.causal, impl);
      if (backward) {
        out.backward(dout);
        q.zero_grad();
        k.zero_grad();
        v.zero_grad();
      }
    };
    for (int64_t i = 0; i < warmup; ++i) step(true);
    synchronize(device);

    const int64_t base = alloc.stats().allocated_bytes.current;
    alloc.reset_peak_stats();
    step(true);
    synchronize(device);
    row.peak_bytes = alloc.stats().allocated_bytes.peak - base;

    for (bool backward : {false, true}) {
      Event start(true), stop(true);
      start.record(device);
      for (int64_t i = 0; i < iters; ++i) step(backward);
      stop.record(device);
      stop.synchronize();
      (backward ? row.step_ms : row.fwd_ms) = start.elapsed_ms(stop) / static_cast<double>(iters);
    }
    row.tflops = 3.5 * s.forward_flops() / (row.step_ms * 1e-3) / 1e12;
  } catch (const OutOfMemoryError& e) {
    row.status = "out of memory";
  } catch (const std::exception& e) {
    row.status = std::string("error: ") + std::string(e.what()).substr(0, std::string(e.what()).find('\n'));
  }
  alloc.empty_cache();
  return row;
}

}  // namespace
}  // namespace headroom

int main(int argc, char** argv) {
  using namespace headroom;
  int64_t batch = 8, heads = 12, seq = 1024, head_dim = 64, iters = 10, warmup = 2;
  std::string device_arg = "cuda", dtype_arg = "bf16";
  bool full = false, skip_naive = false;
  examples::Flags flags("attention-bench",
                        "Causal attention forward + backward: textbook, fused on CUDA cores, fused on tensor cores;\n"
                        "time, TFLOP/s and the peak memory each adds. Defaults: GPT-2 small's attention.");
  flags.add("device", &device_arg, "cpu or cuda[:N]", examples::device_name());
  flags.add("dtype", &dtype_arg, "f32, f16, bf16 or f64");
  flags.add("batch", &batch, "B", examples::at_least<int64_t>(1));
  flags.add("heads", &heads, "H", examples::at_least<int64_t>(1));
  flags.add("seq", &seq, "T", examples::at_least<int64_t>(1));
  flags.add("head-dim", &head_dim, "D", examples::at_least<int64_t>(1));
  flags.add("iters", &iters, "timed runs of each form", examples::at_least<int64_t>(1));
  flags.add("warmup", &warmup, "untimed runs first", examples::at_least<int64_t>(0));
  flags.add("full", &full, "no causal mask");
  flags.add("skip-naive", &skip_naive, "leave out the textbook form (its T x T scores may not fit)");
  if (auto code = flags.parse(argc, argv)) return *code;

  return examples::run_reporting_errors([&] {
    const Device device = Device::parse(device_arg);
    const DType dtype = dtype_from_name(dtype_arg);
    const AttnShape shape{batch, heads, seq, head_dim, !full};
    std::vector<Row> rows;
    if (!skip_naive) rows.push_back(measure("textbook", AttentionImpl::naive, shape, dtype, device, iters, warmup));
#ifdef HEADROOM_WITH_CUDA
    if (device.is_cuda()) {
      const bool tc = cuda::attention_uses_tensor_cores(device, dtype, head_dim);
      const bool previous = cuda::set_attention_tensor_cores(false);
      rows.push_back(measure("fused, CUDA cores", AttentionImpl::fused, shape, dtype, device, iters, warmup));
      cuda::set_attention_tensor_cores(true);
      if (tc) rows.push_back(measure("fused, tensor cores", AttentionImpl::fused, shape, dtype, device, iters, warmup));
      else
        std::cout << "(the tensor-core kernels do not take " << dtype_name(dtype) << " with D = " << head_dim << " on "
                  << device.str() << ")\n";
      cuda::set_attention_tensor_cores(previous);
    } else
#endif
      rows.push_back(measure("fused", AttentionImpl::fused, shape, dtype, device, iters, warmup));

    std::cout << "attention B=" << batch << " H=" << heads << " T=" << seq << " D=" << head_dim << " "
              << dtype_name(dtype) << (full ? " full" : " causal") << " on " << device.str() << ", mean of " << iters
              << " runs\n\n| form | status | forward | forward + backward | TFLOP/s | peak added |\n"
              << "|---|---|---|---|---|---|\n";
    std::cout << std::fixed << std::setprecision(3);
    for (const Row& r : rows)
      std::cout << "| " << r.form << " | " << r.status << " | " << r.fwd_ms << " ms | " << r.step_ms << " ms | "
                << r.tflops << " | " << format_bytes(r.peak_bytes) << " |\n";
    return 0;
  });
}
