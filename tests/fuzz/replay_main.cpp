// Replays a fuzz target over every file of the given folders, with the normal toolchain: the
// seed corpus and the regression corpus of each target run on every ctest run
// (tests/fuzz/CMakeLists.txt), so no clang is needed for a fuzz finding to stay fixed.
//
//   fuzz_replay_idx tests/fuzz/corpus/idx tests/fuzz/regressions/idx
//
// It calls the same LLVMFuzzerTestOneInput as the libFuzzer binary. An escaping exception is
// reported with the input's name and fails the run; a crash fails it anyway. Files whose names
// start with a dot are skipped.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s DIR_OR_FILE...\n", argv[0]);
    return 2;
  }
  int findings = 0, total = 0;
  for (int a = 1; a < argc; ++a) {
    std::vector<fs::path> inputs;
    std::error_code ec;
    if (fs::is_regular_file(argv[a], ec)) {
      inputs.emplace_back(argv[a]);
    } else if (fs::is_directory(argv[a], ec)) {
      for (const auto& e : fs::directory_iterator(argv[a]))
        if (e.is_regular_file() && e.path().filename().string()[0] != '.') inputs.push_back(e.path());
    } else {
      std::fprintf(stderr, "%s: no such file or folder\n", argv[a]);
      return 2;
    }
    std::sort(inputs.begin(), inputs.end());
    for (const fs::path& p : inputs) {
      std::ifstream in(p, std::ios::binary);
      const std::vector<char> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
      ++total;
      std::fprintf(stderr, "  %s (%zu bytes)\n", p.c_str(),
                   bytes.size());  // the last one printed is the culprit of a crash
      try {
        LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      } catch (const std::exception& e) {
        ++findings;
        std::fprintf(stderr, "FINDING %s: an exception that is not a headroom::Error escaped: %s\n", p.c_str(),
                     e.what());
      } catch (...) {
        ++findings;
        std::fprintf(stderr, "FINDING %s: a non-std exception escaped\n", p.c_str());
      }
    }
    std::printf("%s: %zu inputs\n", argv[a], inputs.size());
  }
  std::printf("replayed %d inputs, %d findings\n", total, findings);
  return findings == 0 ? 0 : 1;
}
