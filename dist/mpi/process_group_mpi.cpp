// The MPI transport for cpu tensors: libheadroom_mpi.so, loaded by dist::init() under mpirun
// (Note [loadable transports]).
//
// Note [communication thread]: MPI is initialised with MPI_THREAD_SERIALIZED, and after
// MPI_Init_thread only one thread of the process calls it: the group's communication thread.
// Operations reach it through a queue, in the order they were called (Note [collective
// order]); it posts each as a nonblocking MPI call (MPI_Iallreduce, MPI_Ireduce_scatter_block,
// MPI_Iallgather, MPI_Ibcast, MPI_Ibarrier, MPI_Isend, MPI_Irecv) and tests it until it
// completes, so the caller's thread goes on computing meanwhile -- on the CPU, MPI moves data
// only while someone calls into it, and this thread is that someone. It spins briefly, then
// sleeps between tests (20 to 200 us), so that on a machine with fewer cores than ranks it
// leaves the cores to compute. While it waits, and while it is idle, it answers the peers'
// questions on a duplicated communicator of its own (Note [communication timeout]).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <deque>
#include <map>
#include <thread>

#include "dist/process_group.h"
#include "engine/dtype.h"

namespace headroom::dist {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kProbeTag = 1;  // on the control communicator: "where are you?"
constexpr int kReplyTag = 2;  // its answer

// What a rank answers when asked where it is.
struct Whereabouts {
  int64_t newest_started = 0;  // the number of the last operation it has started (0: none)
  int64_t completed = 0;       // how many operations it has finished
  char text[176] = {};         // "is waiting in all_reduce #5 (f32, 1024 elements) for 2.1 s"
};

std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return str_cat("MPI error ", code);
  return std::string(buf, static_cast<size_t>(len));
}

// ---- 16-bit floats: a 2-byte datatype each, and their reductions in f32 ----

MPI_Datatype g_f16 = MPI_DATATYPE_NULL, g_bf16 = MPI_DATATYPE_NULL;
MPI_Op g_f16_ops[3], g_bf16_ops[3];  // sum, max, min

template <typename T, int Which>
void reduce16(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const T*>(in);
  auto* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) {
    const float x = static_cast<float>(a[i]), y = static_cast<float>(b[i]);
    b[i] = T(Which == 0 ? x + y : Which == 1 ? std::max(x, y) : std::min(x, y));
  }
}

void make_16bit_types() {
  MPI_Type_contiguous(2, MPI_BYTE, &g_f16);
  MPI_Type_commit(&g_f16);
  MPI_Type_contiguous(2, MPI_BYTE, &g_bf16);
  MPI_Type_commit(&g_bf16);
  MPI_Op_create(&reduce16<Half, 0>, 1, &g_f16_ops[0]);
  MPI_Op_create(&reduce16<Half, 1>, 1, &g_f16_ops[1]);
  MPI_Op_create(&reduce16<Half, 2>, 1, &g_f16_ops[2]);
  MPI_Op_create(&reduce16<BFloat16, 0>, 1, &g_bf16_ops[0]);
  MPI_Op_create(&reduce16<BFloat16, 1>, 1, &g_bf16_ops[1]);
  MPI_Op_create(&reduce16<BFloat16, 2>, 1, &g_bf16_ops[2]);
}

MPI_Datatype mpi_type(DType d) {
  switch (d) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::f16: return g_f16;
    case DType::bf16: return g_bf16;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    case DType::u8: return MPI_UINT8_T;
    case DType::boolean: break;
  }
  throw DTypeError(str_cat("MPI: no datatype for ", dtype_name(d)));
}

MPI_Op mpi_op(ReduceOp op, DType d) {
  const int which = op == ReduceOp::max ? 1 : op == ReduceOp::min ? 2 : 0;  // average: a sum, divided after
  if (d == DType::f16) return g_f16_ops[which];
  if (d == DType::bf16) return g_bf16_ops[which];
  return which == 0 ? MPI_SUM : which == 1 ? MPI_MAX : MPI_MIN;
}

template <typename T>
void divide(void* data, int64_t n, double by) {
  auto* p = static_cast<T*>(data);
  for (int64_t i = 0; i < n; ++i) p[i] = T(static_cast<float>(static_cast<double>(static_cast<float>(p[i])) / by));
}

// The average: the transport summed; each element is divided by the number of ranks.
void divide_by(const Tensor& t, int ranks) {
  void* p = t.raw_data();
  const int64_t n = t.numel();
  switch (t.dtype()) {
    case DType::f32: {
      auto* f = static_cast<float*>(p);
      const float r = static_cast<float>(ranks);
      for (int64_t i = 0; i < n; ++i) f[i] /= r;
      return;
    }
    case DType::f64: {
      auto* f = static_cast<double*>(p);
      for (int64_t i = 0; i < n; ++i) f[i] /= ranks;
      return;
    }
    case DType::f16: divide<Half>(p, n, ranks); return;
    case DType::bf16: divide<BFloat16>(p, n, ranks); return;
    default: throw DTypeError(str_cat("average of ", dtype_name(t.dtype())));
  }
}

int checked_count(const Tensor& t, const std::string& what) {
  HR_CHECK(t.numel() <= INT_MAX, ValueError, what, ": ", t.numel(), " elements are more than MPI's int count (",
           INT_MAX, ") allows in one call; split the tensor");
  return static_cast<int>(t.numel());
}

// ---- the group ----

class MpiGroup final : public ProcessGroup {
 public:
  MpiGroup(int rank, int size, MPI_Comm comm, MPI_Comm control)
      : ProcessGroup(rank, size), comm_(comm), control_(control) {
    thread_ = std::thread([this] { loop(); });
  }

  ~MpiGroup() override {
    {
      std::lock_guard<std::mutex> lock(queue_mutex_);
      stopping_ = true;
    }
    queue_cv_.notify_all();
    thread_.join();
    // Finalising waits for the peers; after a failure one of them may be gone for good
    // (Note [loadable transports]).
    if (broken_reason().empty()) {
      MPI_Comm_free(&control_);
      MPI_Comm_free(&comm_);
      MPI_Finalize();
    }
  }

  std::string backend_name() const override { return "mpi"; }

 protected:
  void start(const Op& op, const WorkPtr& work) override {
    {
      std::lock_guard<std::mutex> lock(queue_mutex_);
      queue_.push_back(Item{op, work, timeout()});
    }
    queue_cv_.notify_all();
  }

 private:
  struct Item {
    Op op;
    WorkPtr work;
    std::chrono::milliseconds timeout;
  };

  // One operation the thread has posted and tests until it completes.
  struct Posted {
    Item item;
    MPI_Request request = MPI_REQUEST_NULL;
    Clock::time_point begin, deadline;
  };

  void loop() {
    std::vector<Posted> posted;
    for (int spins = 0;; ++spins) {
      std::deque<Item> fresh;
      {
        std::unique_lock<std::mutex> lock(queue_mutex_);
        if (queue_.empty() && posted.empty()) {
          if (stopping_) return;
          // Idle: wake every 5 ms to answer a peer's question (Note [communication timeout]).
          lock.unlock();
          serve_questions();
          lock.lock();
          queue_cv_.wait_for(lock, std::chrono::milliseconds(5), [this] { return !queue_.empty() || stopping_; });
          spins = 0;
          continue;
        }
        fresh.swap(queue_);
      }
      // Posted in the order they were called (Note [collective order]); several may be in
      // flight at once (a recv posted before the send its peer waits for, buckets of DDP).
      for (Item& item : fresh) post_item(std::move(item), posted);
      bool progressed = !fresh.empty();
      for (size_t i = 0; i < posted.size();) {
        if (test(posted[i])) {
          posted.erase(posted.begin() + static_cast<std::ptrdiff_t>(i));
          progressed = true;
        } else {
          ++i;
        }
      }
      serve_questions();
      if (progressed) spins = 0;
      if (spins < 64) std::this_thread::yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(spins < 1000 ? 20 : 200));
    }
  }

  void post_item(Item item, std::vector<Posted>& posted) {
    const std::string broken = broken_reason();
    if (!broken.empty()) {
      finish(item, str_cat(item.work->description(), " on rank ", rank(), ": this mpi group is broken: ", broken));
      return;
    }
    Posted p;
    p.begin = Clock::now();
    p.deadline = p.begin + item.timeout;
    std::string error;
    try {
      const int code = post(item.op, &p.request);
      if (code != MPI_SUCCESS) error = str_cat("MPI could not start it: ", mpi_error_string(code));
    } catch (const std::exception& e) {
      error = e.what();
    }
    if (!error.empty()) {
      finish(item, str_cat(item.work->description(), " on rank ", rank(), " of ", size(), ": ", error));
      return;
    }
    {
      std::lock_guard<std::mutex> lock(state_mutex_);
      in_flight_.emplace(item.work->number(), std::make_pair(item.work->description(), p.begin));
      newest_started_ = std::max(newest_started_, item.work->number());
    }
    p.item = std::move(item);
    posted.push_back(std::move(p));
  }

  // Drops this thread's references to the operation's tensors, then finishes its Work: a waiter
  // woken by it finds their memory already released (Work::finish).
  static void finish(Item& item, const std::string& error, double seconds = 0) {
    item.op.a = Tensor();
    item.op.b = Tensor();
    item.work->finish(error, seconds);
  }

  // Tests one posted operation: true once it has finished, successfully or not.
  bool test(Posted& p) {
    Item& item = p.item;
    std::string error;
    int done = 0;
    MPI_Status status;
    const int code = MPI_Test(&p.request, &done, &status);
    if (code != MPI_SUCCESS) {
      error = mpi_error_string(code);
      set_broken(str_cat(item.work->description(), " failed: ", error));
    } else if (done) {
      if (item.op.kind == OpKind::recv) {
        int count = 0;
        MPI_Get_count(&status, mpi_type(item.op.a.dtype()), &count);
        if (count != item.op.a.numel())
          error = str_cat("received ", count, " elements from rank ", item.op.peer, " but expected ", item.op.a.numel(),
                          " (the sender's tensor has another size)");
      }
      if (error.empty() && item.op.reduce == ReduceOp::average &&
          (item.op.kind == OpKind::all_reduce || item.op.kind == OpKind::reduce_scatter))
        divide_by(item.op.a, size());
    } else if (Clock::now() > p.deadline) {
      error = timeout_report(item);
      set_broken(error);
    } else {
      return false;
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - p.begin).count();
    {
      std::lock_guard<std::mutex> lock(state_mutex_);
      in_flight_.erase(item.work->number());
      last_ = item.work->description();
      ++completed_;
    }
    finish(item,
           error.empty() ? "" : str_cat(item.work->description(), " on rank ", rank(), " of ", size(), ": ", error),
           seconds);
    return true;
  }

  int post(const Op& op, MPI_Request* request) {
    const std::string what = op_kind_name(op.kind);
    switch (op.kind) {
      case OpKind::all_reduce:
        return MPI_Iallreduce(MPI_IN_PLACE, op.a.raw_data(), checked_count(op.a, what), mpi_type(op.a.dtype()),
                              mpi_op(op.reduce, op.a.dtype()), comm_, request);
      case OpKind::reduce_scatter:
        return MPI_Ireduce_scatter_block(op.b.raw_data(), op.a.raw_data(), checked_count(op.a, what),
                                         mpi_type(op.a.dtype()), mpi_op(op.reduce, op.a.dtype()), comm_, request);
      case OpKind::all_gather: {
        checked_count(op.a, what);
        const int n = checked_count(op.b, what);
        const MPI_Datatype t = mpi_type(op.a.dtype());
        if (op.in_place)
          return MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, op.a.raw_data(), n, t, comm_, request);
        return MPI_Iallgather(op.b.raw_data(), n, t, op.a.raw_data(), n, t, comm_, request);
      }
      case OpKind::broadcast:
        return MPI_Ibcast(op.a.raw_data(), checked_count(op.a, what), mpi_type(op.a.dtype()), op.peer, comm_, request);
      case OpKind::barrier: return MPI_Ibarrier(comm_, request);
      case OpKind::send:
        return MPI_Isend(op.a.raw_data(), checked_count(op.a, what), mpi_type(op.a.dtype()), op.peer, op.tag, comm_,
                         request);
      case OpKind::recv:
        return MPI_Irecv(op.a.raw_data(), checked_count(op.a, what), mpi_type(op.a.dtype()), op.peer, op.tag, comm_,
                         request);
    }
    return MPI_ERR_OTHER;
  }

  // ---- Note [communication timeout] ----

  Whereabouts whereabouts() {
    Whereabouts w;
    std::string text;
    {
      std::lock_guard<std::mutex> lock(state_mutex_);
      w.newest_started = newest_started_;
      w.completed = completed_;
      if (!in_flight_.empty()) {
        const auto& [number, what] = *in_flight_.begin();
        const double s = std::chrono::duration<double>(Clock::now() - what.second).count();
        text = str_cat("is waiting in ", what.first, " for ", static_cast<int64_t>(s * 10) / 10.0, " s");
        if (in_flight_.size() > 1) text += str_cat(" (and ", in_flight_.size() - 1, " later operations)");
      } else {
        text = completed_ == 0 ? std::string("has not started any operation of this group")
                               : str_cat("has started nothing since ", last_,
                                         " (it is still computing, or has not "
                                         "called the next operation)");
      }
    }
    std::strncpy(w.text, text.c_str(), sizeof(w.text) - 1);
    return w;
  }

  // Answers every peer that asked where this rank is.
  void serve_questions() {
    for (;;) {
      int flag = 0;
      MPI_Status status;
      if (MPI_Iprobe(MPI_ANY_SOURCE, kProbeTag, control_, &flag, &status) != MPI_SUCCESS || !flag) break;
      int64_t asked_about = 0;
      MPI_Recv(&asked_about, 1, MPI_INT64_T, status.MPI_SOURCE, kProbeTag, control_, MPI_STATUS_IGNORE);
      auto reply = std::make_unique<Whereabouts>(whereabouts());
      MPI_Request r;
      MPI_Isend(reply.get(), sizeof(Whereabouts), MPI_BYTE, status.MPI_SOURCE, kReplyTag, control_, &r);
      replies_.push_back({r, std::move(reply)});
    }
    // Replies whose send completed can go.
    std::erase_if(replies_, [](auto& p) {
      int done = 0;
      MPI_Test(&p.first, &done, MPI_STATUS_IGNORE);
      return done != 0;
    });
  }

  // After a deadline passed: ask every peer where it is, wait a little for the answers, and
  // say who is missing from the operation.
  std::string timeout_report(const Item& item) {
    const int64_t me = item.work->number();
    const int n = size();
    std::vector<MPI_Request> sends(n, MPI_REQUEST_NULL), recvs(n, MPI_REQUEST_NULL);
    std::vector<Whereabouts> answers(n);
    std::vector<int> answered(n, 0);
    std::vector<int> peers;
    if (item.op.kind == OpKind::send || item.op.kind == OpKind::recv) peers.push_back(item.op.peer);
    else
      for (int p = 0; p < n; ++p)
        if (p != rank()) peers.push_back(p);
    for (int p : peers) {
      MPI_Irecv(&answers[p], sizeof(Whereabouts), MPI_BYTE, p, kReplyTag, control_, &recvs[p]);
      MPI_Isend(&me, 1, MPI_INT64_T, p, kProbeTag, control_, &sends[p]);
    }
    const auto wait = std::min<std::chrono::milliseconds>(
        std::chrono::milliseconds(2000),
        std::max<std::chrono::milliseconds>(std::chrono::milliseconds(200), item.timeout / 2));
    const Clock::time_point until = Clock::now() + wait;
    size_t got = 0;
    while (got < peers.size() && Clock::now() < until) {
      for (int p : peers) {
        if (answered[p]) continue;
        int done = 0;
        MPI_Test(&recvs[p], &done, MPI_STATUS_IGNORE);
        if (done) {
          answered[p] = 1;
          ++got;
        }
      }
      serve_questions();
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    const double secs = static_cast<double>(item.timeout.count()) / 1000.0;
    std::string missing, present;
    for (int p : peers) {
      if (!answered[p]) {
        missing += str_cat("; rank ", p, " did not answer (it has exited, or hangs outside headroom's communication)");
      } else if (answers[p].newest_started >= me) {
        present += str_cat("; rank ", p, " has started it too");
      } else {
        answers[p].text[sizeof(answers[p].text) - 1] = '\0';
        missing += str_cat("; rank ", p, " ", answers[p].text);
      }
    }
    // Requests to a peer that never answers stay posted: the group is broken from here on.
    return str_cat("timed out after ", secs, " s (ProcessGroup::set_timeout, HEADROOM_DIST_TIMEOUT)", missing, present);
  }

  MPI_Comm comm_, control_;
  std::thread thread_;
  std::mutex queue_mutex_;
  std::condition_variable queue_cv_;
  std::deque<Item> queue_;
  bool stopping_ = false;

  std::mutex state_mutex_;                                                  // what whereabouts() reports
  std::map<int64_t, std::pair<std::string, Clock::time_point>> in_flight_;  // number -> (description, posted at)
  std::string last_;
  int64_t newest_started_ = 0, completed_ = 0;
  std::vector<std::pair<MPI_Request, std::unique_ptr<Whereabouts>>> replies_;
};

std::unique_ptr<ProcessGroup> make_world() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  HR_CHECK(!initialized, CommunicationError, "dist::init: MPI was initialised by someone else; headroom's MPI ",
           "transport initialises it itself");
  int provided = 0;
  int code = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
  HR_CHECK(code == MPI_SUCCESS, CommunicationError, "MPI_Init_thread failed: ", mpi_error_string(code));
  if (provided < MPI_THREAD_SERIALIZED) {
    MPI_Finalize();
    throw CommunicationError(str_cat("MPI provides thread level ", provided, ", below MPI_THREAD_SERIALIZED, which ",
                                     "headroom's communication thread needs (Note [communication thread])"));
  }
  MPI_Comm comm, control;
  MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  MPI_Comm_dup(MPI_COMM_WORLD, &control);
  // Errors come back as codes, so that they become exceptions naming the operation.
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(control, MPI_ERRORS_RETURN);
  make_16bit_types();
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  return std::make_unique<MpiGroup>(rank, size, comm, control);
}

// Runs when dist::init() loads this library (Note [loadable transports]).
const bool registered = [] {
  detail::register_mpi_world(&make_world);
  return true;
}();

}  // namespace
}  // namespace headroom::dist
