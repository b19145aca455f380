// Counter-based random numbers (Philox-4x32-10, Salmon et al., SC'11).
//
// Element i of a draw depends only on (seed, offset + i / 4): no state is carried from element
// to element, so the CPU and the GPU produce the same numbers, any thread can compute any
// element, and a recomputed segment (checkpointing) reproduces its dropout masks by replaying
// the same (seed, offset). The global generator hands out offsets: each draw of n numbers
// advances it by ceil(n / 4) counters.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>

namespace headroom {

// Four 32-bit random words for counter `counter` under key `seed`.
std::array<uint32_t, 4> philox4x32(uint64_t counter, uint64_t seed);

// Element i of a uniform [0, 1) draw that started at `offset`.
inline float philox_uniform(uint64_t seed, uint64_t offset, uint64_t i) {
  auto r = philox4x32(offset + i / 4, seed);
  return static_cast<float>(r[i % 4] >> 8) * (1.0f / 16777216.0f);
}
// Element i of a standard normal draw that started at `offset` (Box-Muller on counter
// offset + i / 2: elements 2k and 2k+1 share one pair). A draw of n normals reserves 2n slots.
float philox_normal(uint64_t seed, uint64_t offset, uint64_t i);

class Generator {
 public:
  explicit Generator(uint64_t seed = 0x5eed) : seed_(seed) {}
  void manual_seed(uint64_t seed);
  uint64_t seed() const;
  // Reserves counters for n numbers; returns the first offset.
  uint64_t advance(uint64_t n);
  uint64_t offset() const;
  void set_offset(uint64_t offset);

 private:
  mutable std::mutex mu_;
  uint64_t seed_;
  uint64_t offset_ = 0;
};

Generator& default_generator();
inline void manual_seed(uint64_t seed) { default_generator().manual_seed(seed); }

}  // namespace headroom
