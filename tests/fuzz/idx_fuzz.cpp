// Fuzz target: the IDX reader (nn/data/idx.h), through read_idx_from_buffer -- the same gzip
// decoder and header parser as read_idx_gz, without a file per input. Rules in fuzz_target.h.
#include "nn/data/idx.h"

#include <vector>

#include "fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace headroom;
  return fuzz::run_reader_input([&] {
    Tensor t = data::read_idx_from_buffer(data, size, fuzz::kInputName);
    fuzz::fuzz_check(t.dim() >= 1 && t.dim() <= 255, "an IDX tensor has 1 to 255 dims");
    const DType d = t.dtype();
    fuzz::fuzz_check(d == DType::u8 || d == DType::i32 || d == DType::f32 || d == DType::f64,
                     "an IDX tensor is u8, i32, f32 or f64");
    fuzz::fuzz_check(t.is_contiguous() && t.storage()->nbytes() == t.nbytes(), "the tensor owns exactly its bytes");
    for (int64_t s : t.shape()) fuzz::fuzz_check(s >= 0 && s <= 0xffffffffLL, "IDX dims are u32");
    // Touch every element through a kernel (a cast), as a training run would.
    if (t.numel() > 0 && t.numel() <= (int64_t{1} << 16)) {
      const std::vector<double> v = t.to_vector<double>();
      fuzz::fuzz_check(static_cast<int64_t>(v.size()) == t.numel(), "to_vector gives numel values");
    }
  });
}
