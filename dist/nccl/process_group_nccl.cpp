// The NCCL transport for cuda tensors: libheadroom_nccl.so, loaded by dist::group_for(cuda)
// (Note [loadable transports]) and bootstrapped over the world group: rank 0's ncclUniqueId is
// broadcast over MPI (a 128-byte u8 tensor), then every rank joins the communicator on its GPU
// (cuda:local_rank, from OMPI_COMM_WORLD_LOCAL_RANK, wrapped around the visible GPUs).
//
// Note [nccl stream]: the collectives run on a stream of their own (Stream id kNcclStreamId of
// the rank's GPU, Note [cuda streams]), ordered after the work already queued on the caller's
// current stream by an event, so that computing and communicating overlap on the GPU as they
// do on the CPU's communication thread. A Work is done when the event recorded after its NCCL
// call has completed; a watcher thread polls those events, finishes the Works (releasing their
// tensors only then, so the caching allocator cannot hand their memory to the compute stream
// while NCCL still reads it), and turns a deadline into a CommunicationError after aborting
// the communicator (ncclCommAbort), since a missing peer would leave NCCL spinning for ever.
// NCCL cannot say which peer is missing; the message says to look at the world group's ranks.
//
// This file has not run on a GPU yet (docs/distributed.md); it compiles and links in CI.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "dist/process_group.h"
#include "engine/backend.h"
#include "engine/memory.h"
#include "kernels/cuda/cuda_memory.h"

namespace headroom::dist {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int64_t kNcclStreamId = 0x4e43;  // "NC": the communication stream of each GPU

std::string nccl_error(ncclResult_t r) { return ncclGetErrorString(r); }

#define HR_NCCL_CHECK(call)                                                                                          \
  do {                                                                                                               \
    const ncclResult_t hr_nccl_result_ = (call);                                                                     \
    if (hr_nccl_result_ != ncclSuccess)                                                                              \
      throw CommunicationError(                                                                                      \
          ::headroom::str_cat(#call, " failed: ", nccl_error(hr_nccl_result_), " (", __FILE__, ":", __LINE__, ")")); \
  } while (0)

ncclDataType_t nccl_type(DType d) {
  switch (d) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::f16: return ncclFloat16;
    case DType::bf16: return ncclBfloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
    case DType::u8: return ncclUint8;
    case DType::boolean: break;
  }
  throw DTypeError(str_cat("NCCL: no datatype for ", dtype_name(d)));
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::average: return ncclAvg;
    case ReduceOp::max: return ncclMax;
    case ReduceOp::min: return ncclMin;
  }
  return ncclSum;
}

int local_rank() {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "LOCAL_RANK"})
    if (const char* v = std::getenv(var); v && *v) return std::atoi(v);
  return 0;
}

class NcclGroup final : public ProcessGroup {
 public:
  NcclGroup(ProcessGroup& bootstrap, int device_index)
      : ProcessGroup(bootstrap.rank(), bootstrap.size()), device_(Device::cuda(device_index)) {
    CudaDeviceGuard guard(device_index);
    ncclUniqueId id{};
    if (rank() == 0) HR_NCCL_CHECK(ncclGetUniqueId(&id));
    Tensor bytes = Tensor::zeros({static_cast<int64_t>(sizeof(id))}, DType::u8);
    std::memcpy(bytes.raw_data(), &id, sizeof(id));
    bootstrap.broadcast(bytes, 0)->wait();
    std::memcpy(&id, bytes.raw_data(), sizeof(id));
    HR_NCCL_CHECK(ncclCommInitRank(&comm_, size(), id, rank()));
    stream_ = cuda_stream(Stream{device_, kNcclStreamId});
    watcher_ = std::thread([this] { watch(); });
  }

  ~NcclGroup() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_all();
    watcher_.join();
    if (broken_reason().empty()) (void)ncclCommDestroy(comm_);
  }

  std::string backend_name() const override { return "nccl"; }
  DeviceType device_type() const override { return DeviceType::cuda; }

 protected:
  void start(const Op& op, const WorkPtr& work) override {
    HR_CHECK(op.a.device() == device_ && (!op.b.defined() || op.b.device() == device_), DeviceError,
             work->description(), ": this rank's NCCL communicator is on ", device_.str(), ", the tensor on ",
             op.a.device().str());
    CudaDeviceGuard guard(device_.index);
    // Note [nccl stream]: after what the caller's stream has queued.
    cudaEvent_t ready = nullptr, done = nullptr;
    HR_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    HR_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    HR_CUDA_CHECK(cudaEventRecord(ready, cuda_stream(current_stream(device_))));
    HR_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready, 0));
    const size_t n = static_cast<size_t>(op.a.numel());
    switch (op.kind) {
      case OpKind::all_reduce:
        HR_NCCL_CHECK(ncclAllReduce(op.a.raw_data(), op.a.raw_data(), n, nccl_type(op.a.dtype()), nccl_op(op.reduce),
                                    comm_, stream_));
        break;
      case OpKind::reduce_scatter:
        HR_NCCL_CHECK(ncclReduceScatter(op.b.raw_data(), op.a.raw_data(), n, nccl_type(op.a.dtype()),
                                        nccl_op(op.reduce), comm_, stream_));
        break;
      case OpKind::all_gather:  // in place when b is a's own chunk: NCCL detects it by address
        HR_NCCL_CHECK(ncclAllGather(op.b.raw_data(), op.a.raw_data(), static_cast<size_t>(op.b.numel()),
                                    nccl_type(op.a.dtype()), comm_, stream_));
        break;
      case OpKind::broadcast:
        HR_NCCL_CHECK(
            ncclBroadcast(op.a.raw_data(), op.a.raw_data(), n, nccl_type(op.a.dtype()), op.peer, comm_, stream_));
        break;
      case OpKind::barrier: {
        if (!barrier_.defined()) {
          CategoryScope communication(MemoryCategory::communication);
          barrier_ = Tensor::zeros({1}, TensorOptions().device(device_));
        }
        HR_NCCL_CHECK(ncclAllReduce(barrier_.raw_data(), barrier_.raw_data(), 1, ncclFloat32, ncclSum, comm_, stream_));
        break;
      }
      case OpKind::send:
        HR_NCCL_CHECK(ncclSend(op.a.raw_data(), n, nccl_type(op.a.dtype()), op.peer, comm_, stream_));
        break;
      case OpKind::recv:
        HR_NCCL_CHECK(ncclRecv(op.a.raw_data(), n, nccl_type(op.a.dtype()), op.peer, comm_, stream_));
        break;
    }
    HR_CUDA_CHECK(cudaEventRecord(done, stream_));
    (void)cudaEventDestroy(ready);  // destroyed once recorded work completes; safe to release now
    {
      std::lock_guard<std::mutex> lock(mutex_);
      pending_.push_back(Pending{work, done, Clock::now(), Clock::now() + timeout()});
    }
    cv_.notify_all();
  }

 private:
  struct Pending {
    WorkPtr work;
    cudaEvent_t done;
    Clock::time_point begin, deadline;
  };

  void watch() {
    for (;;) {
      std::deque<Pending> check;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait_for(lock, std::chrono::microseconds(200), [this] { return stopping_ || !pending_.empty(); });
        if (stopping_ && pending_.empty()) return;
        check.swap(pending_);
      }
      std::deque<Pending> still;
      for (Pending& p : check) {
        const cudaError_t q = cudaEventQuery(p.done);
        if (q == cudaSuccess) {
          (void)cudaEventDestroy(p.done);
          p.work->finish("", std::chrono::duration<double>(Clock::now() - p.begin).count());
        } else if (q != cudaErrorNotReady) {
          const std::string why = str_cat(p.work->description(), " on rank ", rank(), " of ", size(),
                                          ": CUDA error while NCCL ran it: ", cudaGetErrorString(q));
          set_broken(why);
          p.work->finish(why);
        } else if (Clock::now() > p.deadline) {
          const std::string why = str_cat(p.work->description(), " on rank ", rank(), " of ", size(), " (NCCL, ",
                                          device_.str(), "): timed out after ", timeout().count() / 1000.0,
                                          " s (ProcessGroup::set_timeout, HEADROOM_DIST_TIMEOUT); NCCL cannot say "
                                          "which peer is missing -- the other ranks' own errors name where they are");
          set_broken(why);
          (void)ncclCommAbort(comm_);  // NCCL would otherwise spin on the missing peer
          p.work->finish(why);
        } else {
          still.push_back(std::move(p));
        }
      }
      std::lock_guard<std::mutex> lock(mutex_);
      for (Pending& p : still) pending_.push_front(std::move(p));
    }
  }

  Device device_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  Tensor barrier_;
  std::thread watcher_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Pending> pending_;
  bool stopping_ = false;
};

std::unique_ptr<ProcessGroup> make_nccl_group(ProcessGroup& bootstrap) {
  const int gpus = cuda_device_count();
  HR_CHECK(gpus > 0, CommunicationError, "dist::group_for(cuda): NCCL needs a GPU, and the CUDA runtime sees none");
  return std::make_unique<NcclGroup>(bootstrap, local_rank() % gpus);
}

// Runs when dist::group_for(cuda) loads this library (Note [loadable transports]).
const bool registered = [] {
  detail::register_device_group(DeviceType::cuda, &make_nccl_group);
  return true;
}();

}  // namespace
}  // namespace headroom::dist
