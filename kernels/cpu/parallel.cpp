// The CPU backend's thread pool, the one set of worker threads of the CPU backend: elementwise
// loops, im2col, and (since OpenBLAS runs single-threaded, Note [one set of threads] in gemm.h)
// the blocks of every large gemm.
//
// Why not OpenMP: after each parallel loop, libgomp's workers spin for milliseconds waiting for
// the next one, and under any other load (two ctest jobs, a compiler) steps got 3-5x slower.
// OMP_WAIT_POLICY=passive fixes it but is read before our code runs. This pool's workers poll for
// at most 50 microseconds after a job (Note [pool wake-up]) and then sleep on a condition variable.
#include <unistd.h>

#include "kernels/cpu/cpu_backend.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "kernels/cpu/denormal.h"
#include "kernels/cpu/strided.h"

// OpenBLAS internals (weak: absent from other BLAS builds); see Note [denormals].
extern "C" int blas_thread_shutdown_(void) __attribute__((weak));
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace headroom::cpu {

namespace {

thread_local bool t_in_pool = false;

int env_threads(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return 0;
  int n = std::atoi(v);
  return n > 0 ? n : 0;
}

// Note [pool wake-up]: a worker that finishes a job polls for the next one for a short while
// (kSpinNanos) before it sleeps on the condition variable, and the caller polls for the workers'
// chunks before it sleeps on its own. A training step is a chain of loops a few tens of
// microseconds apart; sleeping between each cost a futex wake and a context switch on both sides
// (about 11% of ResNet-18's step at 2 threads went to the condition variables' wake and wait).
// The poll is bounded, so an idle pool sleeps and a loaded machine gets its cores back.
class ThreadPool {
 public:
  explicit ThreadPool(int threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { work(i); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_.store(true);
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
  }
  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs job(c) for c in [0, chunks), chunks <= size(); chunk 0 on the calling thread. Returns
  // false (running nothing) when the pool is busy with another caller's job. An exception from
  // any chunk is rethrown here after all chunks have finished.
  bool run(int chunks, const std::function<void(int)>& job) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &job;
      chunks_ = chunks;
      remaining_.store(chunks - 1, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();  // no system call when every worker is still polling
    t_in_pool = true;
    std::exception_ptr mine;
    try {
      job(0);
    } catch (...) {
      mine = std::current_exception();
    }
    t_in_pool = false;
    if (!spin_until([this] { return remaining_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lock(mu_);
      done_.wait(lock, [this] { return remaining_.load(std::memory_order_acquire) == 0; });
    }
    std::lock_guard<std::mutex> lock(mu_);
    job_ = nullptr;
    std::exception_ptr error = mine ? mine : error_;
    error_ = nullptr;
    if (error) std::rethrow_exception(error);
    return true;
  }

 private:
  static constexpr int64_t kSpinNanos = 50'000;

  // Polls pred for up to kSpinNanos; true when it held.
  template <typename Pred>
  static bool spin_until(Pred pred) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(kSpinNanos);
    for (int i = 0;; ++i) {
      if (pred()) return true;
      cpu_relax();
      if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) return pred();
    }
  }
  static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }

  void work(int index) {
    t_in_pool = true;
    uint64_t seen = 0;
    for (;;) {
      auto ready = [&] {
        return stop_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen;
      };
      if (!spin_until(ready)) {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, ready);
      }
      if (stop_.load(std::memory_order_acquire)) return;
      const std::function<void(int)>* job = nullptr;
      {
        std::lock_guard<std::mutex> lock(mu_);  // job_ and chunks_ as of this generation
        seen = generation_.load(std::memory_order_relaxed);
        if (index >= chunks_) continue;
        job = job_;
      }
      std::exception_ptr error;
      try {
        DenormalGuard flush;  // Note [denormals]
        (*job)(index);
      } catch (...) {
        error = std::current_exception();
      }
      if (error) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!error_) error_ = error;
      }
      if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mu_);  // the caller may be between its check and its wait
        done_.notify_one();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex run_mu_;  // one job at a time
  std::mutex mu_;
  std::condition_variable wake_, done_;
  const std::function<void(int)>* job_ = nullptr;
  int chunks_ = 0;
  std::atomic<int> remaining_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  std::exception_ptr error_;
};

ThreadPool& pool() {
  // Leaked on purpose: workers must outlive static destructors that may still free tensors.
  static ThreadPool* p = new ThreadPool(num_threads());
  return *p;
}

std::atomic<bool> g_flush_denormal{true};

// Keeps OpenBLAS on the calling thread and stops its workers: gemm.h splits large gemms over
// this pool instead (Note [one set of threads]). Set to one thread, OpenBLAS never hands work to
// a worker, but the workers it started when it loaded still woke and polled (sched_yield), about
// 8% of a core through a whole single-threaded MLP run; shut down, none is left to inherit a
// floating-point mode either (Note [denormals]). Where the BLAS is not OpenBLAS (the weak
// symbols are absent), nothing changes.
[[maybe_unused]] const bool g_blas_threads_stopped = [] {
  if (openblas_set_num_threads) openblas_set_num_threads(1);
  if (blas_thread_shutdown_) blas_thread_shutdown_();
  return true;
}();

}  // namespace

int num_threads() {
  static const int n = [] {
    if (int v = env_threads("HEADROOM_NUM_THREADS")) return v;
    if (int v = env_threads("OMP_NUM_THREADS")) return v;
    unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
  }();
  return n;
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& f) {
  if (n <= 0) return;
  DenormalGuard flush;  // Note [denormals]
  const int threads = num_threads();
  if (threads <= 1 || n <= grain || t_in_pool) {
    f(0, n);
    return;
  }
  const int chunks = static_cast<int>(std::min<int64_t>(threads, (n + grain - 1) / grain));
  std::function<void(int)> job = [&](int c) { f(n * c / chunks, n * (c + 1) / chunks); };
  if (!pool().run(chunks, job)) f(0, n);  // another thread holds the pool: run here, serially
}

}  // namespace headroom::cpu

namespace headroom {

bool set_flush_denormal(bool on) { return cpu::g_flush_denormal.exchange(on); }
bool flush_denormal() { return cpu::g_flush_denormal.load(std::memory_order_relaxed); }

}  // namespace headroom

namespace headroom::cpu {

DeviceProperties CpuBackend::properties(Device device) {
  DeviceProperties p;
  p.name = device.str();
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  p.total_memory = pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : 0;
  const unsigned hw = std::thread::hardware_concurrency();
  p.compute_units = hw == 0 ? 1 : static_cast<int>(hw);
  p.threads_per_op = num_threads();
  return p;
}

}  // namespace headroom::cpu
