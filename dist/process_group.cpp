// The transport-independent half of a process group: argument checks (once, before anything
// moves), numbering (Note [collective order]), the Work handle, statistics, the meta group and
// the world's loading (Note [loadable transports]).
#include "dist/process_group.h"

#include <cstdlib>
#include <map>

#include "engine/backend.h"
#include "engine/caching_allocator.h"

namespace headroom::dist {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::average: return "average";
    case ReduceOp::max: return "max";
    case ReduceOp::min: return "min";
  }
  return "?";
}

const char* op_kind_name(OpKind kind) {
  switch (kind) {
    case OpKind::all_reduce: return "all_reduce";
    case OpKind::reduce_scatter: return "reduce_scatter";
    case OpKind::all_gather: return "all_gather";
    case OpKind::broadcast: return "broadcast";
    case OpKind::barrier: return "barrier";
    case OpKind::send: return "send";
    case OpKind::recv: return "recv";
  }
  return "?";
}

// ---- Work ----

Work::Work(OpKind kind, int64_t number, std::string description)
    : kind_(kind), number_(number), description_(std::move(description)) {}

bool Work::is_done() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return done_;
}

bool Work::failed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return done_ && !error_.empty();
}

void Work::wait() {
  std::unique_lock<std::mutex> lock(mutex_);
  done_cv_.wait(lock, [this] { return done_; });
  if (!error_.empty()) throw CommunicationError(error_);
}

double Work::seconds() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return seconds_;
}

void Work::finish(const std::string& error, double seconds) {
  {
    // The tensors go first, outside the lock (a free takes the allocator's): whoever waits for
    // this Work sees their memory already back, so its figures do not depend on when this
    // thread gets to run.
    std::vector<Tensor> release;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (done_) return;
      release.swap(keep_alive);
    }
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    done_ = true;
    error_ = error;
    seconds_ = seconds;
  }
  done_cv_.notify_all();
}

// ---- ProcessGroup ----

ProcessGroup::ProcessGroup(int rank, int size) : rank_(rank), size_(size), timeout_(detail::default_timeout()) {
  HR_CHECK(size >= 1 && rank >= 0 && rank < size, ValueError, "ProcessGroup: rank ", rank, " of ", size,
           " is not a rank of a group of that size");
}

void ProcessGroup::set_timeout(std::chrono::milliseconds timeout) {
  HR_CHECK(timeout.count() > 0, ValueError, "ProcessGroup::set_timeout: the timeout must be positive, got ",
           timeout.count(), " ms");
  std::lock_guard<std::mutex> lock(mutex_);
  timeout_ = timeout;
}

void ProcessGroup::mend(int64_t next_number) {
  std::lock_guard<std::mutex> lock(mutex_);
  broken_.clear();
  next_number_ = next_number;
}

int64_t ProcessGroup::next_number() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return next_number_;
}

std::function<bool(bool prepared)> step_agreement(ProcessGroup& group, Device device) {
  Tensor flag;
  {
    CategoryScope communication(MemoryCategory::communication);
    flag = Tensor::zeros({1}, TensorOptions().dtype(DType::f64).device(device));
  }
  return [&group, flag](bool prepared) {
    Tensor f = flag;
    f.fill_(prepared ? 1.0 : 0.0);
    group.all_reduce(f, ReduceOp::min)->wait();
    // Note [meta execution]: a prediction's flag holds no value (it reads as 0); what is
    // predicted is the step every rank prepared.
    if (f.is_meta()) return prepared;
    return f.item<double>() != 0.0;
  };
}

std::string ProcessGroup::broken_reason() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return broken_;
}

void ProcessGroup::set_broken(const std::string& why) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (broken_.empty()) broken_ = why;
}

CommunicationStats ProcessGroup::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void ProcessGroup::reset_stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_ = CommunicationStats{};
}

void ProcessGroup::synchronize() {
  std::vector<WorkPtr> pending;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& w : in_flight_)
      if (auto p = w.lock()) pending.push_back(p);
    in_flight_.clear();
  }
  for (auto& w : pending) w->wait();
}

namespace {

bool dtype_supported(DType d) { return d != DType::boolean; }

std::string describe_tensor(const Tensor& t) {
  return str_cat(dtype_name(t.dtype()), ", ", t.numel(), t.numel() == 1 ? " element" : " elements");
}

}  // namespace

void ProcessGroup::check_peer(int peer, const char* what) const {
  HR_CHECK(peer >= 0 && peer < size_, ValueError, what, ": rank ", peer, " is not in this group of ", size_,
           " ranks (0..", size_ - 1, ")");
}

WorkPtr ProcessGroup::launch(const Op& op, int64_t payload_bytes) {
  const char* name = op_kind_name(op.kind);
  // One check for every tensor: defined, contiguous, on this group's device type, a dtype the
  // transports have.
  for (const Tensor* t : {&op.a, &op.b}) {
    if (op.kind == OpKind::barrier) break;
    if (t == &op.b && op.kind != OpKind::reduce_scatter && op.kind != OpKind::all_gather) break;
    const char* which = t == &op.a ? (op.b.defined() ? "output" : "tensor") : "input";
    HR_CHECK(t->defined(), ValueError, name, ": the ", which, " is an undefined tensor");
    HR_CHECK(t->device().type == device_type(), DeviceError, name, ": the ", which, " is on ", t->device().str(),
             " but this ", backend_name(), " group moves ", device_type_name(device_type()), " tensors",
             device_type() == DeviceType::cpu ? " (dist::group_for(DeviceType::cuda) for cuda tensors)" : "");
    HR_CHECK(t->is_contiguous(), ValueError, name, ": the ", which, " (", shape_str(t->shape()),
             ") is not contiguous; communicate .contiguous() and copy back");
    HR_CHECK(dtype_supported(t->dtype()), DTypeError, name, ": ", dtype_name(t->dtype()), " tensors cannot be ",
             "communicated (use u8)");
  }
  if (op.kind == OpKind::all_reduce || op.kind == OpKind::reduce_scatter)
    HR_CHECK(op.reduce != ReduceOp::average || is_floating(op.a.dtype()), DTypeError, name, ": average of ",
             dtype_name(op.a.dtype()), " tensors (sum, then divide in a floating dtype)");
  if (op.kind == OpKind::reduce_scatter || op.kind == OpKind::all_gather) {
    HR_CHECK(op.a.dtype() == op.b.dtype(), DTypeError, name, ": output is ", dtype_name(op.a.dtype()), " but input is ",
             dtype_name(op.b.dtype()));
    HR_CHECK(op.a.device() == op.b.device(), DeviceError, name, ": output is on ", op.a.device().str(),
             " but input is on ", op.b.device().str());
    const int64_t big = op.kind == OpKind::reduce_scatter ? op.b.numel() : op.a.numel();
    const int64_t small = op.kind == OpKind::reduce_scatter ? op.a.numel() : op.b.numel();
    HR_CHECK(big == small * size_, ShapeError, name, ": the ", op.kind == OpKind::reduce_scatter ? "input" : "output",
             " must hold ", size_, " chunks of the ", op.kind == OpKind::reduce_scatter ? "output" : "input", "'s ",
             small, " elements (", small * size_, "), got ", big, " (output ", shape_str(op.a.shape()), ", input ",
             shape_str(op.b.shape()), ", ", size_, " ranks)");
  }
  Op checked = op;
  if ((op.kind == OpKind::reduce_scatter || op.kind == OpKind::all_gather) &&
      op.a.storage().get() == op.b.storage().get()) {
    // The one overlap allowed: all_gather whose input is this rank's chunk of the output.
    checked.in_place = op.kind == OpKind::all_gather && op.b.offset() == op.a.offset() + rank_ * op.b.numel();
    HR_CHECK(checked.in_place, ValueError, name, ": output and input share their storage",
             op.kind == OpKind::all_gather ? " but the input is not this rank's chunk of the output" : "",
             "; give the output a buffer of its own");
  }
  if (op.kind == OpKind::broadcast) check_peer(op.peer, "broadcast root");
  if (op.kind == OpKind::send || op.kind == OpKind::recv) {
    check_peer(op.peer, op.kind == OpKind::send ? "send: destination" : "recv: source");
    HR_CHECK(op.peer != rank_, ValueError, name, ": rank ", rank_, " cannot ", name,
             op.kind == OpKind::send ? " to" : " from", " itself");
    HR_CHECK(op.tag >= 0, ValueError, name, ": the tag must be >= 0, got ", op.tag);
  }

  WorkPtr work;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!broken_.empty())
      throw CommunicationError(
          str_cat(name, " on rank ", rank_, ": this ", backend_name(), " group is broken: ", broken_));
    const int64_t number = next_number_++;
    std::string what = str_cat(name, " #", number);
    if (op.kind != OpKind::barrier) what += str_cat(" (", describe_tensor(op.b.defined() ? op.b : op.a), ")");
    if (op.kind == OpKind::send) what += str_cat(" to rank ", op.peer);
    if (op.kind == OpKind::recv) what += str_cat(" from rank ", op.peer);
    if (op.kind == OpKind::broadcast) what += str_cat(" from root ", op.peer);
    work = std::make_shared<Work>(op.kind, number, what);
    ++stats_.operations;
    switch (op.kind) {
      case OpKind::all_reduce: ++stats_.all_reduces; break;
      case OpKind::reduce_scatter: ++stats_.reduce_scatters; break;
      case OpKind::all_gather: ++stats_.all_gathers; break;
      case OpKind::broadcast: ++stats_.broadcasts; break;
      default: break;
    }
    stats_.bytes += payload_bytes;
    std::erase_if(in_flight_, [](const std::weak_ptr<Work>& w) { return w.expired(); });
    in_flight_.push_back(work);
  }
  if (op.a.defined()) work->keep_alive.push_back(op.a);
  if (op.b.defined()) work->keep_alive.push_back(op.b);
  // Note [meta groups]: a meta tensor has no bytes to move; every rank skips it alike.
  if ((op.a.defined() && op.a.is_meta()) || (op.b.defined() && op.b.is_meta())) {
    work->finish();
    return work;
  }
  start(checked, work);
  return work;
}

WorkPtr ProcessGroup::all_reduce(const Tensor& t, ReduceOp op) {
  return launch(Op{OpKind::all_reduce, t, {}, op}, t.defined() ? static_cast<int64_t>(t.nbytes()) : 0);
}

WorkPtr ProcessGroup::reduce_scatter(const Tensor& output, const Tensor& input, ReduceOp op) {
  return launch(Op{OpKind::reduce_scatter, output, input, op},
                input.defined() ? static_cast<int64_t>(input.nbytes()) : 0);
}

WorkPtr ProcessGroup::all_gather(const Tensor& output, const Tensor& input) {
  return launch(Op{OpKind::all_gather, output, input}, output.defined() ? static_cast<int64_t>(output.nbytes()) : 0);
}

WorkPtr ProcessGroup::broadcast(const Tensor& t, int root) {
  Op op{OpKind::broadcast, t, {}};
  op.peer = root;
  return launch(op, t.defined() ? static_cast<int64_t>(t.nbytes()) : 0);
}

WorkPtr ProcessGroup::barrier() { return launch(Op{OpKind::barrier, {}, {}}, 0); }

WorkPtr ProcessGroup::send(const Tensor& t, int dst, int tag) {
  Op op{OpKind::send, t, {}};
  op.peer = dst;
  op.tag = tag;
  return launch(op, t.defined() ? static_cast<int64_t>(t.nbytes()) : 0);
}

WorkPtr ProcessGroup::recv(const Tensor& t, int src, int tag) {
  Op op{OpKind::recv, t, {}};
  op.peer = src;
  op.tag = tag;
  return launch(op, t.defined() ? static_cast<int64_t>(t.nbytes()) : 0);
}

// ---- MetaGroup (Note [meta groups]) ----

MetaGroup::MetaGroup(int rank, int size, DeviceType type) : ProcessGroup(rank, size), type_(type) {}

void MetaGroup::start(const Op& op, const WorkPtr& work) {
  // One rank alone: a reduction over one rank is the tensor itself (average included), a
  // scatter or gather moves this rank's chunk. With peers that do not exist (size > 1) no data
  // moves: the group is for prediction, whose tensors are meta (handled before start).
  if (size() == 1) {
    if ((op.kind == OpKind::reduce_scatter || op.kind == OpKind::all_gather) && !op.in_place) {
      Tensor out = op.a;
      out.copy_(op.b.reshape(op.a.shape()));
    }
    work->finish();
    return;
  }
  HR_CHECK(op.kind != OpKind::send && op.kind != OpKind::recv, CommunicationError, work->description(),
           ": a meta group of ", size(), " ranks has no peer to ", op_kind_name(op.kind),
           op.kind == OpKind::send ? " to" : " from");
  work->finish();
}

// ---- the world (Note [loadable transports]) ----

namespace {

struct World {
  std::mutex mutex;
  std::unique_ptr<ProcessGroup> world;
  std::map<int, std::unique_ptr<ProcessGroup>> device_groups;
  detail::WorldFactory mpi_factory;
  std::map<int, detail::DeviceGroupFactory> device_factories;
  bool finalized = false;
};

World& the_world() {
  static World* w = new World;  // never destroyed: finalize() runs at exit, before statics go
  return *w;
}

bool under_launcher() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (const char* v = std::getenv(var); v && *v) return true;
  return false;
}

// Loads a transport library (beside libheadroom.so, or env_var's path); "" once loaded, else
// the path and the loader's reason.
std::string load_library(const char* env_var, const char* file) {
  const char* env = std::getenv(env_var);
  const std::string path = env && *env ? std::string(env) : ::headroom::detail::library_directory() + file;
  const std::string why = ::headroom::detail::load_backend_library(path);
  return why.empty() ? why : str_cat(path, ": ", why);
}

void finalize_at_exit() { finalize(); }

}  // namespace

namespace detail {

void register_mpi_world(WorldFactory factory) { the_world().mpi_factory = std::move(factory); }

void register_device_group(DeviceType type, DeviceGroupFactory factory) {
  the_world().device_factories[static_cast<int>(type)] = std::move(factory);
}

std::chrono::milliseconds default_timeout() {
  const char* v = std::getenv("HEADROOM_DIST_TIMEOUT");
  if (!v || !*v) return std::chrono::seconds(300);
  char* end = nullptr;
  const double s = std::strtod(v, &end);
  HR_CHECK(end && *end == '\0' && s > 0 && s < 1e7, ValueError, "HEADROOM_DIST_TIMEOUT='", v,
           "' is not a positive number of seconds");
  return std::chrono::milliseconds(static_cast<int64_t>(s * 1000 + 0.5));
}

}  // namespace detail

ProcessGroup& init() {
  World& w = the_world();
  std::lock_guard<std::mutex> lock(w.mutex);
  if (w.world) return *w.world;
  HR_CHECK(!w.finalized, CommunicationError, "dist::init: the world was finalized already (MPI cannot start twice)");
  const char* mode = std::getenv("HEADROOM_DIST");
  const bool force_local = mode && std::string(mode) == "local";
  HR_CHECK(!mode || !*mode || force_local || std::string(mode) == "mpi", ValueError, "HEADROOM_DIST='", mode,
           "' is neither local nor mpi");
  const bool use_mpi = !force_local && (under_launcher() || (mode && std::string(mode) == "mpi"));
  if (use_mpi) {
#ifdef HEADROOM_MPI_TRANSPORT
    if (!w.mpi_factory) {
      const std::string why = load_library("HEADROOM_MPI_LIBRARY", HEADROOM_MPI_TRANSPORT);
      HR_CHECK(why.empty(), CommunicationError, "dist::init: running under an MPI launcher, but the MPI transport ",
               "could not be loaded: ", why);
    }
#endif
    HR_CHECK(w.mpi_factory, CommunicationError, "dist::init: running under an MPI launcher, but this build has no ",
             "MPI transport (configure with MPI found: apt-get install libopenmpi-dev openmpi-bin)");
    w.world = w.mpi_factory();
  } else {
    w.world = std::make_unique<MetaGroup>(0, 1);
  }
  std::atexit(finalize_at_exit);
  return *w.world;
}

bool is_initialized() {
  World& w = the_world();
  std::lock_guard<std::mutex> lock(w.mutex);
  return w.world != nullptr;
}

ProcessGroup& world() {
  {
    World& w = the_world();
    std::lock_guard<std::mutex> lock(w.mutex);
    if (w.world) return *w.world;
  }
  return init();
}

ProcessGroup& group_for(DeviceType type) {
  ProcessGroup& base = world();
  if (type == DeviceType::cpu) return base;
  World& w = the_world();
  std::lock_guard<std::mutex> lock(w.mutex);
  auto it = w.device_groups.find(static_cast<int>(type));
  if (it != w.device_groups.end()) return *it->second;
  if (!w.device_factories.count(static_cast<int>(type))) {
    load_device_backend(type);  // the CUDA backend first: the NCCL library needs it
#ifdef HEADROOM_NCCL_TRANSPORT
    const std::string why = load_library("HEADROOM_NCCL_LIBRARY", HEADROOM_NCCL_TRANSPORT);
    HR_CHECK(why.empty(), CommunicationError, "dist::group_for(", device_type_name(type),
             "): the NCCL transport could not be loaded: ", why);
#endif
  }
  auto f = w.device_factories.find(static_cast<int>(type));
  HR_CHECK(f != w.device_factories.end(), CommunicationError, "dist::group_for(", device_type_name(type),
           "): this build has no transport for ", device_type_name(type), " tensors (NCCL needs the CUDA side)");
  auto group = f->second(base);
  ProcessGroup& g = *group;
  w.device_groups[static_cast<int>(type)] = std::move(group);
  return g;
}

void finalize() {
  World& w = the_world();
  std::unique_ptr<ProcessGroup> world;
  std::map<int, std::unique_ptr<ProcessGroup>> device_groups;
  {
    std::lock_guard<std::mutex> lock(w.mutex);
    if (!w.world) return;
    world = std::move(w.world);
    device_groups = std::move(w.device_groups);
    w.finalized = world->backend_name() == "mpi";
  }
  device_groups.clear();  // before the world they were bootstrapped over
  world.reset();          // the MPI group's destructor finalises MPI (or not, when broken)
}

}  // namespace headroom::dist
