// Half's inline conversions (engine/dtype.h) against the out-of-line ones they replaced, kept
// here verbatim as the reference: every half bit pattern, a strided sweep over all floats, every
// float at and beside each rounding midpoint between two halves, and the boundary cases by their
// known IEEE bits. The kernels call the conversions in loops, so a loop over arrays is checked
// too (the compiler may vectorise it differently from a lone call).
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "test_util.h"

namespace headroom {
namespace {

// The conversions as engine/dtype.cpp had them before they moved inline.
uint16_t ref_from_float(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) {  // inf or NaN
    return static_cast<uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
  }
  if (absx >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (absx < 0x38800000u) {
    float af;
    std::memcpy(&af, &absx, 4);
    float scaled = af * 16777216.0f;  // 2^24
    auto m = static_cast<uint32_t>(std::nearbyint(scaled));
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t mant = absx & 0x7fffffu;
  int32_t exp = static_cast<int32_t>(absx >> 23) - 127 + 15;
  uint32_t h = (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

float ref_to_float(uint16_t h) {
  uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t out;
  if (exp == 0) {
    if (mant == 0) {
      out = sign;
    } else {
      float f = static_cast<float>(mant) * (1.0f / 16777216.0f);
      std::memcpy(&out, &f, 4);
      out |= sign;
    }
  } else if (exp == 31) {
    out = sign | 0x7f800000u | (mant << 13);
  } else {
    out = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &out, 4);
  return f;
}

uint32_t bits_of(float f) { return std::bit_cast<uint32_t>(f); }
float float_of(uint32_t u) { return std::bit_cast<float>(u); }
std::string hex(uint32_t u) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%x", u);
  return buf;
}

// to_float's result for half h matches the reference bit for bit. F16C's vcvtph2ps sets the quiet
// bit of a signalling NaN; there only NaN-ness, sign and the rest of the payload must agree.
::testing::AssertionResult to_float_matches(uint16_t h, float got) {
  uint32_t want = bits_of(ref_to_float(h)), have = bits_of(got);
#ifdef HEADROOM_HALF_F16C
  if (std::isnan(ref_to_float(h))) {
    want |= 0x400000u;
    have |= 0x400000u;
  }
#endif
  if (want == have) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "half " << hex(h) << ": to_float gave " << hex(have) << ", the reference "
                                       << hex(want);
}

::testing::AssertionResult from_float_matches(uint32_t fbits, uint16_t got) {
  uint16_t want = ref_from_float(float_of(fbits));
  if (want == got) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "float " << hex(fbits) << " (" << float_of(fbits) << "): from_float gave "
                                       << hex(got) << ", the reference " << hex(want);
}

TEST(DType, HalfToFloatMatchesReferenceForEveryBitPattern) {
  int bad = 0;
  for (uint32_t h = 0; h <= 0xffffu && bad < 10; ++h) {
    auto hb = static_cast<uint16_t>(h);
    if (!to_float_matches(hb, Half::to_float(hb))) {
      ADD_FAILURE() << to_float_matches(hb, Half::to_float(hb)).message();
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0);
}

TEST(DType, HalfRoundTripsEveryBitPattern) {
  // Every non-NaN half comes back unchanged through f32; every NaN comes back as the quiet NaN
  // with its sign.
  int bad = 0;
  for (uint32_t h = 0; h <= 0xffffu && bad < 10; ++h) {
    auto hb = static_cast<uint16_t>(h);
    bool nan = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
    uint16_t want = nan ? static_cast<uint16_t>((h & 0x8000u) | 0x7e00u) : hb;
    uint16_t got = Half::from_float(Half::to_float(hb));
    if (got != want) {
      ADD_FAILURE() << "half " << hex(h) << " -> f32 -> half gave " << hex(got) << ", expected " << hex(want);
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0);
}

TEST(DType, HalfFromFloatMatchesReferenceOnStridedSweepOfAllFloats) {
  // About 1M floats spread over every exponent, both signs, NaNs and infinities included;
  // the prime stride lands on every residue of the low 13 mantissa bits that decide rounding.
  int bad = 0;
  for (uint64_t u = 0; u <= 0xffffffffull && bad < 10; u += 4093) {
    auto fb = static_cast<uint32_t>(u);
    if (!from_float_matches(fb, Half::from_float(float_of(fb)))) {
      ADD_FAILURE() << from_float_matches(fb, Half::from_float(float_of(fb))).message();
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0);
}

TEST(DType, HalfFromFloatMatchesReferenceAtEveryRoundingMidpoint) {
  // For each pair of neighbouring non-negative halves (the last pair: 65504 and inf), the float
  // exactly halfway between them (a tie) and its neighbours 1 and 2 f32 ulps either side; both signs.
  int bad = 0;
  for (uint32_t h = 0; h < 0x7c00u && bad < 10; ++h) {
    double lo = ref_to_float(static_cast<uint16_t>(h));
    double hi = h + 1 < 0x7c00u ? ref_to_float(static_cast<uint16_t>(h + 1)) : 65536.0;  // inf's place
    auto mid = static_cast<float>((lo + hi) / 2);  // exact: a half midpoint needs 12 significant bits
    ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2) << h;
    for (int d = -2; d <= 2; ++d) {
      for (uint32_t sign : {0u, 0x80000000u}) {
        uint32_t fb = (bits_of(mid) + static_cast<uint32_t>(d)) | sign;
        if (!from_float_matches(fb, Half::from_float(float_of(fb)))) {
          ADD_FAILURE() << from_float_matches(fb, Half::from_float(float_of(fb))).message();
          ++bad;
        }
      }
    }
  }
  EXPECT_EQ(bad, 0);
}

TEST(DType, HalfFromFloatBoundaryCases) {
  struct Case {
    float f;
    uint16_t want;
  };
  const float tiny = std::ldexp(1.0f, -24);  // the smallest subnormal half
  const Case cases[] = {
      {0.0f, 0x0000},
      {-0.0f, 0x8000},
      {1.0f, 0x3c00},
      {-2.0f, 0xc000},
      {65504.0f, 0x7bff},         // the largest half
      {65519.99609375f, 0x7bff},  // just below the midpoint to inf
      {65520.0f, 0x7c00},         // the midpoint: ties to even, which is inf
      {-65520.0f, 0xfc00},
      {1e6f, 0x7c00},
      {3.4028235e38f, 0x7c00},
      {INFINITY, 0x7c00},
      {-INFINITY, 0xfc00},
      {NAN, 0x7e00},
      {-NAN, 0xfe00},
      {float_of(0x7f800001u), 0x7e00},  // a signalling NaN stays a NaN
      {float_of(0xffc12345u), 0xfe00},
      {tiny, 0x0001},
      {-tiny, 0x8001},
      {tiny / 2, 0x0000},  // a tie between 0 and the smallest subnormal: even
      {-tiny / 2, 0x8000},
      {tiny * 0.75f, 0x0001},
      {tiny * 1.5f, 0x0002},                       // a tie between 1 and 2 units: even
      {tiny * 2.5f, 0x0002},                       // a tie between 2 and 3 units: even
      {std::ldexp(1.0f, -14), 0x0400},             // the smallest normal half
      {std::ldexp(1.0f, -14) - tiny / 2, 0x0400},  // halfway from the largest subnormal: even
      {std::ldexp(1023.0f, -24), 0x03ff},          // the largest subnormal
      {float_of(0x00000001u), 0x0000},             // f32 subnormals vanish
      {float_of(0x807fffffu), 0x8000},
      {1.0f + std::ldexp(1.0f, -11), 0x3c00},      // a tie above 1: even (down)
      {1.0f + 3 * std::ldexp(1.0f, -11), 0x3c02},  // a tie above 1 + 2^-10: even (up)
      {2047.0f, 0x67ff},
      {2049.0f, 0x6800},  // ulp 2 there: a tie, even (down to 2048)
      {2051.0f, 0x6802},  // a tie, even (up to 2052)
  };
  for (const Case& c : cases) {
    EXPECT_EQ(Half::from_float(c.f), c.want) << "float " << hex(bits_of(c.f)) << " (" << c.f << ")";
    EXPECT_EQ(ref_from_float(c.f), c.want) << "the reference disagrees with IEEE for " << c.f;
  }
  // And back: the exact values these bits stand for.
  EXPECT_EQ(Half::to_float(0x7bff), 65504.0f);
  EXPECT_EQ(Half::to_float(0x0001), tiny);
  EXPECT_EQ(bits_of(Half::to_float(0x8000)), 0x80000000u);
  EXPECT_EQ(Half::to_float(0x7c00), INFINITY);
  EXPECT_EQ(Half::to_float(0xfc00), -INFINITY);
  EXPECT_TRUE(std::isnan(Half::to_float(0x7e00)));
  EXPECT_TRUE(std::isnan(Half::to_float(0x7c01)));
  EXPECT_TRUE(std::signbit(Half::to_float(0xfe00)));
}

TEST(DType, HalfConversionsInLoopsMatchReference) {
  // Kernel-shaped loops over arrays, which the compiler may vectorise.
  std::vector<float> src;
  for (uint64_t u = 0; u <= 0xffffffffull; u += 65537) src.push_back(float_of(static_cast<uint32_t>(u)));
  for (uint32_t h = 0; h <= 0xffffu; h += 7) src.push_back(ref_to_float(static_cast<uint16_t>(h)));
  std::vector<Half> halves(src.size());
  for (size_t i = 0; i < src.size(); ++i) halves[i] = Half(src[i]);
  std::vector<float> back(src.size());
  for (size_t i = 0; i < src.size(); ++i) back[i] = static_cast<float>(halves[i]);
  int bad = 0;
  for (size_t i = 0; i < src.size() && bad < 10; ++i) {
    if (!from_float_matches(bits_of(src[i]), halves[i].bits)) {
      ADD_FAILURE() << from_float_matches(bits_of(src[i]), halves[i].bits).message();
      ++bad;
    }
    if (!to_float_matches(halves[i].bits, back[i])) {
      ADD_FAILURE() << to_float_matches(halves[i].bits, back[i]).message();
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0);
}

}  // namespace
}  // namespace headroom
