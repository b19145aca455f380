#include "engine/rng.h"

#include <cmath>

namespace headroom {

std::array<uint32_t, 4> philox4x32(uint64_t counter, uint64_t seed) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = static_cast<uint64_t>(kM0) * c0;
    uint64_t p1 = static_cast<uint64_t>(kM1) * c2;
    uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += kW0;
    k1 += kW1;
  }
  return {c0, c1, c2, c3};
}

float philox_normal(uint64_t seed, uint64_t offset, uint64_t i) {
  auto r = philox4x32(offset + i / 2, seed);
  // u1 in (0, 1] so that log(u1) is finite.
  float u1 = (static_cast<float>(r[0] >> 8) + 1.0f) * (1.0f / 16777216.0f);
  float u2 = static_cast<float>(r[1] >> 8) * (1.0f / 16777216.0f);
  // log, cos and sin in double, rounded to float: the correctly rounded float on every one of
  // the 2^24 inputs, which CUDA computes too (glibc's logf/cosf/sinf miss it on ~1% of them);
  // Note [same numbers as the cpu] in kernels/cuda/copy.cu.
  float radius = std::sqrt(-2.0f * static_cast<float>(std::log(static_cast<double>(u1))));
  float theta = 6.2831853071795864f * u2;
  const double t = theta;
  return (i % 2 == 0) ? radius * static_cast<float>(std::cos(t)) : radius * static_cast<float>(std::sin(t));
}

void Generator::manual_seed(uint64_t seed) {
  std::lock_guard<std::mutex> lock(mu_);
  seed_ = seed;
  offset_ = 0;
}
uint64_t Generator::seed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return seed_;
}
uint64_t Generator::advance(uint64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t start = offset_;
  offset_ += (n + 3) / 4;
  return start;
}
uint64_t Generator::offset() const {
  std::lock_guard<std::mutex> lock(mu_);
  return offset_;
}
void Generator::set_offset(uint64_t offset) {
  std::lock_guard<std::mutex> lock(mu_);
  offset_ = offset;
}

Generator& default_generator() {
  static Generator g;
  return g;
}

}  // namespace headroom
