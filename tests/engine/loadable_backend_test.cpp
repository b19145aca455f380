// Note [loadable backends] (engine/backend.h): a CPU run maps no CUDA library and starts small,
// and one that is alone (not under mpirun) maps no MPI or NCCL library even when it trains
// through dist::init() and a DistributedDataParallel (Note [loadable transports]);
// using a cuda device loads the CUDA backend; a backend that cannot be loaded is an error that
// says why, and the CPU goes on. Each check runs in a fresh copy of this program (a "probe":
// the same binary, one test selected, HEADROOM_PROBE set), so that what other tests loaded
// into this process does not count.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "engine/allocator.h"
#include "dist/process_group.h"
#include "engine/backend.h"
#include "nn/nn.h"
#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

bool probing() { return std::getenv("HEADROOM_PROBE") != nullptr; }

// Runs this program again with only `test` selected and `env` set; its output.
std::string run_probe(const std::string& test, const std::string& env = "") {
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return "readlink failed";
  self[n] = '\0';
  const std::string cmd = str_cat("env HEADROOM_PROBE=1 ", env, " '", self, "' --gtest_filter=", test, " 2>&1");
  std::string out;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char buf[4096];
    while (size_t k = fread(buf, 1, sizeof buf, p)) out.append(buf, k);
    pclose(p);
  }
  return out;
}

std::string mapped_libraries() {
  std::ifstream maps("/proc/self/maps");
  std::string line, out;
  while (std::getline(maps, line))
    for (const char* lib : {"libcudart", "libcublas", "libcudnn", "libheadroom_cuda", "libcuda.so", "libmpi",
                            "libheadroom_mpi", "libnccl", "libheadroom_nccl"})
      if (line.find(lib) != std::string::npos) out += line.substr(line.rfind(' ') + 1) + "\n";
  return out;
}

int64_t resident_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoll(line.c_str() + 6, nullptr, 10);
  return -1;
}

// ---- probes: each prints one line the test below reads ----

TEST(LoadableBackendProbe, TrainOnTheCpu) {
  if (!probing()) GTEST_SKIP() << "a probe, run by LoadableBackend tests";
  std::printf("PROBE resident before work: %lld KiB\n", static_cast<long long>(resident_kib()));
  manual_seed(1);
  auto model = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(16, 32), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(32, 4)});
  nn::DistributedDataParallel net(model, dist::init());  // alone: a world of one, no MPI
  optim::SGD opt(net.parameters(), 0.1);
  for (int step = 0; step < 2; ++step) {
    Tensor loss = cross_entropy(net.forward(Tensor::randn({8, 16})), testing::tokens({8}, 4, 1));
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  const std::string libs = mapped_libraries();
  std::printf("PROBE cuda libraries mapped after a cpu training step: [%s]\n", libs.c_str());
}

TEST(LoadableBackendProbe, UseACudaDevice) {
  if (!probing()) GTEST_SKIP() << "a probe, run by LoadableBackend tests";
  std::string what = "none";
  try {
    Tensor t = Tensor::ones({2}).to(Device::cuda());
    what = "a cuda tensor was made";
  } catch (const DeviceError& e) {
    what = e.what();
  }
  std::printf("PROBE cuda: %s\n", what.c_str());
  // The CPU is unaffected, whatever happened.
  Tensor x = Tensor::ones({3}) * 2.0;
  std::printf("PROBE cpu still works: %g\n", sum(x).item<double>());
  std::printf("PROBE mapped: [%s]\n", mapped_libraries().c_str());
  std::printf("PROBE resident after: %lld KiB\n", static_cast<long long>(resident_kib()));
}

TEST(LoadableBackend, ACpuRunMapsNoCudaLibraryAndStartsSmall) {
  const std::string out = run_probe("LoadableBackendProbe.TrainOnTheCpu");
  ASSERT_NE(out.find("PROBE cuda libraries mapped after a cpu training step: []"), std::string::npos) << out;
  const size_t at = out.find("PROBE resident before work: ");
  ASSERT_NE(at, std::string::npos) << out;
  const long long kib = std::strtoll(out.c_str() + at + 28, nullptr, 10);
  EXPECT_GT(kib, 0) << out;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // The sanitizers' shadow memory and runtime are resident too: no bound to hold there.
#else
  EXPECT_LT(kib, 40 * 1024) << "resident memory before any work: " << kib << " KiB\n" << out;
#endif
  std::printf("resident before work: %lld KiB\n", kib);
}

#ifdef HEADROOM_WITH_CUDA
TEST(LoadableBackend, UsingACudaDeviceLoadsTheBackend) {
  const std::string out = run_probe("LoadableBackendProbe.UseACudaDevice");
  ASSERT_NE(out.find("PROBE cpu still works: 6"), std::string::npos) << out;
  // Loaded: the backend and the CUDA runtime are mapped, and the cuda device either works or
  // says what the runtime said (no GPU here); never "built without CUDA".
  EXPECT_NE(out.find("libheadroom_cuda.so"), std::string::npos) << out;
  EXPECT_NE(out.find("libcudart"), std::string::npos) << out;
  EXPECT_EQ(out.find("built without CUDA"), std::string::npos) << out;
}

TEST(LoadableBackend, ABackendThatCannotLoadIsAnErrorThatSaysWhyAndTheCpuGoesOn) {
  // As on a machine without the CUDA runtime: the library cannot be loaded.
  const std::string out =
      run_probe("LoadableBackendProbe.UseACudaDevice", "HEADROOM_CUDA_LIBRARY=/nonexistent/libheadroom_cuda.so");
  EXPECT_NE(out.find("PROBE cuda: cuda:0 is not available: this build's CUDA backend "
                     "(/nonexistent/libheadroom_cuda.so) could not be loaded: /nonexistent/libheadroom_cuda.so: "
                     "cannot open shared object file"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("PROBE cpu still works: 6"), std::string::npos) << out;
  EXPECT_NE(out.find("PROBE mapped: []"), std::string::npos) << out;
}
#endif

TEST(LoadableBackend, LoadingAMissingLibraryReturnsTheLoadersMessage) {
  const std::string why = detail::load_backend_library("/nonexistent/libheadroom_nothing.so");
  EXPECT_NE(why.find("/nonexistent/libheadroom_nothing.so"), std::string::npos) << why;
}

}  // namespace
}  // namespace headroom
