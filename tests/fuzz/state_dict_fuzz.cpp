// Fuzz target: the state-dict reader (nn/serialize.h), through load_tensors_from_buffer -- the
// same parser as load_tensors, without a file per input. Rules in fuzz_target.h.
//
// Every entry is parsed before the checksum is compared, so mutated inputs (which fail the
// checksum) still reach every structural check; make_corpus.py writes seeds with valid
// checksums so that the success path is covered too.
#include <vector>

#include "fuzz_target.h"
#include "nn/serialize.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace headroom;
  return fuzz::run_reader_input([&] {
    const auto tensors = nn::load_tensors_from_buffer(data, size, fuzz::kInputName);
    for (const auto& [name, t] : tensors) {
      fuzz::fuzz_check(!name.empty() && name.size() <= nn::kMaxNameBytes, "entry names have 1 to 4096 bytes");
      fuzz::fuzz_check(t.dim() <= static_cast<int64_t>(nn::kMaxDims), "at most kMaxDims dims");
      fuzz::fuzz_check(t.is_contiguous() && t.nbytes() <= size, "a tensor's bytes came from the input");
      if (t.dtype() == DType::boolean) {  // any other byte is not a bool (undefined behaviour to read)
        const auto* b = static_cast<const uint8_t*>(t.raw_data());
        for (int64_t i = 0; i < t.numel(); ++i) fuzz::fuzz_check(b[i] <= 1, "bool bytes are 0 or 1");
      }
      if (t.numel() > 0 && t.numel() <= (int64_t{1} << 16)) {
        const std::vector<double> v = t.to_vector<double>();  // every element through a cast kernel
        fuzz::fuzz_check(static_cast<int64_t>(v.size()) == t.numel(), "to_vector gives numel values");
      }
    }
  });
}
