// What every fuzz target in tests/fuzz/ shares.
//
// A target is one file, <name>_fuzz.cpp, defining LLVMFuzzerTestOneInput: it hands the bytes to
// one of headroom's file readers and checks what comes back. The outcomes it accepts are a
// result that passes its invariants, or the error the reader promises for bad bytes: an
// IOError whose message names the file (here kInputName), or an OutOfMemoryError when the
// bytes ask for more than the device may hold. Anything else is a finding: another
// headroom::Error (a ShapeError naming no file was the first one found), any other exception,
// a failed invariant (fuzz_check aborts), a crash, or a sanitizer report. The same file builds
// two ways (tests/fuzz/CMakeLists.txt): with clang's libFuzzer as fuzz_<name>
// (scripts/fuzz.sh), and with the normal toolchain beside replay_main.cpp as
// fuzz_replay_<name>, which ctest runs over the seed and regression corpora on every run.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "engine/error.h"

namespace headroom::fuzz {

// Aborts -- a finding -- when an invariant of a successful read does not hold.
inline void fuzz_check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz invariant failed: %s\n", what);
  std::abort();
}

// What the readers are told the input is called; their errors must name it.
inline constexpr const char* kInputName = "fuzz input";

// Runs one input through `read` (Note at the top of this file for what is accepted).
template <typename Read>
int run_reader_input(Read&& read) {
  try {
    read();
  } catch (const headroom::OutOfMemoryError&) {
  } catch (const headroom::IOError& e) {
    if (std::strstr(e.what(), kInputName) == nullptr) {
      std::fprintf(stderr, "fuzz finding: an IOError that does not name the file: %s\n", e.what());
      std::abort();
    }
  } catch (const headroom::Error& e) {
    std::fprintf(stderr, "fuzz finding: the reader threw a headroom::Error that is not an IOError: %s\n", e.what());
    std::abort();
  }
  return 0;
}

}  // namespace headroom::fuzz
