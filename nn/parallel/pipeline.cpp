// The pipeline runner (Notes in nn/parallel/pipeline.h).
#include "nn/parallel/pipeline.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "autograd/autocast.h"
#include "autograd/checkpoint.h"
#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "engine/meta.h"
#include "engine/op_cost.h"
#include "engine/shape.h"

namespace headroom::nn {

const char* pipeline_schedule_name(PipelineSchedule s) { return s == PipelineSchedule::gpipe ? "gpipe" : "1f1b"; }

PipelineSchedule parse_pipeline_schedule(const std::string& text, const std::string& what) {
  if (text == "gpipe") return PipelineSchedule::gpipe;
  if (text == "1f1b") return PipelineSchedule::one_f_one_b;
  throw ValueError(str_cat(what, ": '", text, "' is not a pipeline schedule (gpipe or 1f1b)"));
}

double PipelineStats::bubble_fraction() const {
  if (seconds <= 0 || busy_seconds.empty()) return 0;
  double busy = 0;
  for (double b : busy_seconds) busy += b;
  return std::max(0.0, 1.0 - busy / (static_cast<double>(busy_seconds.size()) * seconds));
}

std::vector<int64_t> Pipeline::stage_order(PipelineSchedule schedule, int64_t k, int64_t stages, int64_t m) {
  std::vector<int64_t> order;
  if (schedule == PipelineSchedule::gpipe) {
    for (int64_t i = 0; i < m; ++i) order.push_back(i + 1);
    for (int64_t i = 0; i < m; ++i) order.push_back(-(i + 1));
    return order;
  }
  // Note [pipeline schedules]: fill, then one forward and one backward in turn, then drain.
  const int64_t warm = std::min(stages - k - 1, m);
  for (int64_t i = 0; i < warm; ++i) order.push_back(i + 1);
  for (int64_t i = 0; i + warm < m; ++i) {
    order.push_back(warm + i + 1);
    order.push_back(-(i + 1));
  }
  for (int64_t i = m - warm; i < m; ++i) order.push_back(-(i + 1));
  return order;
}

Pipeline::Pipeline(std::vector<PipelineStage> stages, PipelineOptions options)
    : stages_(std::move(stages)), options_(std::move(options)) {
  HR_CHECK(!stages_.empty(), ValueError, "Pipeline: no stages");
  for (size_t k = 0; k < stages_.size(); ++k) {
    HR_CHECK(stages_[k].module, ValueError, "Pipeline: stage ", k, " has no module");
    for (const auto& [name, p] : stages_[k].module->named_parameters())
      HR_CHECK(p.device() == stages_[k].device, DeviceError, "Pipeline: stage ", k, " runs on ",
               stages_[k].device.str(), " but its parameter ", name, " is on ", p.device().str(),
               " (move the stage's module there first: module->to(device))");
  }
}

Pipeline::Pipeline(PipelineStage stage, dist::ProcessGroup& group, PipelineOptions options)
    : Pipeline(std::vector<PipelineStage>{std::move(stage)}, std::move(options)) {
  group_ = &group;
  HR_CHECK(stages_[0].device.type == group.device_type(), DeviceError, "Pipeline: stage ", group.rank(), " runs on ",
           stages_[0].device.str(), " but its process group (", group.backend_name(), ") moves ",
           device_type_name(group.device_type()), " tensors");
}

std::vector<Tensor> Pipeline::parameters() const {
  std::vector<Tensor> out;
  for (const auto& s : stages_)
    for (const Tensor& p : s.module->parameters()) out.push_back(p);
  return out;
}

namespace {

// Another stage failed: this one stops (Note [pipeline failure]).
struct Aborted {};

// Tensors from one stage to its neighbour, in order.
class Channel {
 public:
  void put(Tensor t) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(t));
    }
    cv_.notify_all();
  }
  // Blocks until a tensor is there; throws Aborted once the channel is closed.
  Tensor take() {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [this] { return !queue_.empty() || closed_; });
    if (closed_) throw Aborted{};
    Tensor t = std::move(queue_.front());
    queue_.pop_front();
    return t;
  }
  bool ready() {
    std::lock_guard<std::mutex> lock(mutex_);
    return !queue_.empty();
  }
  void close() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      closed_ = true;
      queue_.clear();
    }
    cv_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Tensor> queue_;
  bool closed_ = false;
};

// Note [pipeline across processes]: a forward message is a header -- dtype and shape, 10 int64s
// -- then the tensor, both with tag 0; a backward message is the gradient alone (its shape is the
// output's, which the receiver holds), tag 1.
constexpr int kForwardTag = 0, kBackwardTag = 1;
constexpr int64_t kHeaderLength = 10;

void send_activation(dist::ProcessGroup& g, const Tensor& y, int dst, std::vector<dist::WorkPtr>& sends) {
  HR_CHECK(y.dim() <= kHeaderLength - 2, ShapeError, "Pipeline: an activation of ", y.dim(),
           " dims cannot cross processes (at most ", kHeaderLength - 2, ")");
  std::vector<int64_t> header(static_cast<size_t>(kHeaderLength), 0);
  header[0] = static_cast<int64_t>(y.dtype());
  header[1] = y.dim();
  for (int64_t d = 0; d < y.dim(); ++d) header[static_cast<size_t>(d + 2)] = y.size(d);
  sends.push_back(g.send(Tensor::from_vector(header, {kHeaderLength}, DType::i64).to(y.device()), dst, kForwardTag));
  sends.push_back(g.send(y.contiguous(), dst, kForwardTag));
}

Tensor receive_activation(dist::ProcessGroup& g, int src, Device device) {
  Tensor header = Tensor::empty({kHeaderLength}, TensorOptions().dtype(DType::i64).device(device));
  g.recv(header, src, kForwardTag)->wait();
  const std::vector<int64_t> h = header.to(Device::cpu()).to_vector<int64_t>();
  HR_CHECK(h[1] >= 0 && h[1] <= kHeaderLength - 2, dist::CommunicationError,
           "Pipeline: a malformed activation header from rank ", src, " (", h[1], " dims)");
  Shape shape(h.begin() + 2, h.begin() + 2 + h[1]);
  Tensor x = Tensor::empty(shape, TensorOptions().dtype(static_cast<DType>(h[0])).device(device));
  g.recv(x, src, kForwardTag)->wait();
  return x;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

double Pipeline::run(const Tensor& inputs, const Tensor& targets, int64_t micro_batches, const LossFn& loss_fn) {
  HR_CHECK(inputs.defined() && targets.defined() && inputs.dim() >= 1 && targets.dim() >= 1 &&
               inputs.size(0) == targets.size(0) && inputs.size(0) > 0,
           ShapeError, "Pipeline::run: inputs ",
           inputs.defined() ? shape_str(inputs.shape()) : std::string("undefined"), " and targets ",
           targets.defined() ? shape_str(targets.shape()) : std::string("undefined"),
           " must have the same non-empty batch dim 0");
  HR_CHECK(micro_batches >= 1, ValueError, "Pipeline::run: micro_batches must be at least 1, got ", micro_batches);
  HR_CHECK(loss_fn, ValueError, "Pipeline::run: no loss function");
  const int64_t n = inputs.size(0);
  const int64_t size = (n + std::min(micro_batches, n) - 1) / std::min(micro_batches, n);
  const int64_t m = (n + size - 1) / size;  // micro-batches actually made (ceil(N / size))
  // Across processes this process runs stage `first` of `stages` (Note [pipeline across
  // processes]); in one, every stage.
  const int64_t stages = group_ ? group_->size() : static_cast<int64_t>(stages_.size());
  const int64_t first = group_ ? group_->rank() : 0;
  const int64_t last = group_ ? first : stages - 1;
  auto stage_of = [&](int64_t k) -> const PipelineStage& { return stages_[static_cast<size_t>(k - first)]; };
  std::vector<dist::WorkPtr> sends;  // across processes: waited for at the end of the step

  std::vector<Channel> forward(static_cast<size_t>(std::max<int64_t>(stages - 1, 0)));
  std::vector<Channel> backward(forward.size());
  std::mutex failure_mutex;
  std::exception_ptr failure;
  double loss_sum = 0;
  stats_ = PipelineStats{};
  stats_.busy_seconds.assign(stages_.size(), 0.0);  // the stages this process runs
  stats_.most_in_flight.assign(stages_.size(), 0);

  auto fail = [&](std::exception_ptr e) {
    {
      std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = e;
    }
    for (auto& c : forward) c.close();
    for (auto& c : backward) c.close();
  };

  // One stage's work, op by op (Note [pipeline schedules]). `next` runs one op and returns
  // false when the op's input has not arrived (the cooperative mode asks with `wait` false).
  struct StageRun {
    std::vector<int64_t> order;
    size_t at = 0;
    std::vector<Tensor> input, output;  // per micro-batch, held from its forward to its backward
    int64_t in_flight = 0;
  };
  std::vector<StageRun> runs(stages_.size());  // runs[k - first]
  for (int64_t k = first; k <= last; ++k) {
    StageRun& r = runs[static_cast<size_t>(k - first)];
    r.order = stage_order(options_.schedule, k, stages, m);
    r.input.resize(static_cast<size_t>(m));
    r.output.resize(static_cast<size_t>(m));
  }

  auto step_once = [&](int64_t k, bool wait) -> bool {
    const size_t at = static_cast<size_t>(k - first);
    StageRun& r = runs[at];
    const PipelineStage& st = stage_of(k);
    const int64_t op = r.order[r.at];
    const int64_t i = (op > 0 ? op : -op) - 1;
    const int64_t begin = i * size, end = std::min(n, begin + size);
    if (op > 0) {
      if (!wait && k > 0 && !forward[static_cast<size_t>(k - 1)].ready()) return false;
      Tensor x = k == 0   ? inputs.slice(0, begin, end).to(st.device)
                 : group_ ? receive_activation(*group_, static_cast<int>(k - 1), st.device)
                          : forward[static_cast<size_t>(k - 1)].take();
      const double t0 = now_seconds();
      Tensor in = x;
      if (k > 0) in.set_requires_grad(true);  // a received copy: the cut of this stage's graph
      Tensor y;
      {
        AutocastGuard amp(st.device, options_.autocast.value_or(DType::bf16), options_.autocast.has_value());
        Module& mod = *st.module;
        y = st.checkpoint ? checkpoint([&mod](const Tensor& v) { return mod.forward(v); }, in) : mod.forward(in);
      }
      if (k == stages - 1) {
        Tensor loss = loss_fn(y, targets.slice(0, begin, end).to(st.device));
        HR_CHECK(loss.defined() && loss.numel() == 1 && loss.requires_grad(), ValueError,
                 "Pipeline::run: the loss function must return the micro-batch's mean loss as a scalar with history");
        loss_sum += loss.item<double>() * static_cast<double>(end - begin);
        Tensor weighted = end - begin == n ? loss : loss * (static_cast<double>(end - begin) / static_cast<double>(n));
        if (options_.scale_loss) weighted = options_.scale_loss(weighted);
        r.output[static_cast<size_t>(i)] = weighted;
      } else {
        NoGradGuard no_grad;
        if (group_) send_activation(*group_, y.detach(), static_cast<int>(k + 1), sends);
        else forward[static_cast<size_t>(k)].put(y.detach().to(stage_of(k + 1).device));
        r.output[static_cast<size_t>(i)] = y;
      }
      if (k > 0) r.input[static_cast<size_t>(i)] = in;
      r.in_flight += 1;
      stats_.most_in_flight[at] = std::max(stats_.most_in_flight[at], r.in_flight);
      stats_.busy_seconds[at] += now_seconds() - t0;
    } else {
      if (!wait && k < stages - 1 && !backward[static_cast<size_t>(k)].ready()) return false;
      Tensor g;
      if (k < stages - 1 && group_) {
        const Tensor& y = r.output[static_cast<size_t>(i)];
        g = Tensor::empty(y.shape(), TensorOptions().dtype(y.dtype()).device(st.device));
        group_->recv(g, static_cast<int>(k + 1), kBackwardTag)->wait();
      } else if (k < stages - 1) {
        g = backward[static_cast<size_t>(k)].take();
      }
      const double t0 = now_seconds();
      Tensor out = std::move(r.output[static_cast<size_t>(i)]);
      r.output[static_cast<size_t>(i)] = Tensor();
      out.backward(g);
      out = Tensor();
      if (k > 0) {
        Tensor in = std::move(r.input[static_cast<size_t>(i)]);
        r.input[static_cast<size_t>(i)] = Tensor();
        Tensor dx = in.grad();
        HR_CHECK(dx.defined(), AutogradError, "Pipeline: stage ", k, "'s output does not depend on its input");
        NoGradGuard no_grad;
        if (group_) sends.push_back(group_->send(dx.contiguous(), static_cast<int>(k - 1), kBackwardTag));
        else backward[static_cast<size_t>(k - 1)].put(dx.to(stage_of(k - 1).device));
      }
      r.in_flight -= 1;
      stats_.busy_seconds[at] += now_seconds() - t0;
    }
    ++r.at;
    return true;
  };

  const double start = now_seconds();
  // Threads do not see this thread's MetaScope (Note [meta execution]): a prediction runs the
  // schedule cooperatively here instead.
  if (group_) {
    // One stage here, on this thread; a failure leaves the neighbours waiting until the group's
    // timeout names this rank (Note [pipeline across processes]).
    StageRun& r = runs[0];
    try {
      while (r.at < r.order.size()) step_once(first, true);
      for (auto& w : sends) w->wait();
    } catch (...) {
      r.input.clear();
      r.output.clear();
      throw;
    }
    sends.clear();
    // The batch's loss, known to the last stage, for every rank.
    Tensor l = Tensor::full({1}, first == stages - 1 ? loss_sum : 0.0,
                            TensorOptions().dtype(DType::f64).device(stages_[0].device));
    group_->broadcast(l, static_cast<int>(stages - 1))->wait();
    loss_sum = l.to(Device::cpu()).item<double>();
  } else if (options_.concurrent && stages > 1 && !meta_active()) {
    std::vector<std::thread> threads;
    OpRecorder* recorder = OpRecorder::current();  // the stages' ops are the step's (Note [op costs])
    for (int64_t k = 0; k < stages; ++k)
      threads.emplace_back([&, k] {
        OpRecorder::Join record(recorder);
        try {
          while (runs[static_cast<size_t>(k)].at < runs[static_cast<size_t>(k)].order.size()) step_once(k, true);
        } catch (const Aborted&) {
        } catch (...) {
          fail(std::current_exception());
        }
        // What a failed stage held goes now, on its own thread.
        runs[static_cast<size_t>(k)].input.clear();
        runs[static_cast<size_t>(k)].output.clear();
      });
    for (auto& t : threads) t.join();
  } else {
    // Cooperative: each stage runs its next op when its input is there; the schedules never
    // leave every stage waiting.
    try {
      bool left = true;
      while (left) {
        left = false;
        bool moved = false;
        for (int64_t k = 0; k < stages; ++k) {
          StageRun& r = runs[static_cast<size_t>(k)];
          while (r.at < r.order.size() && step_once(k, false)) moved = true;
          left = left || r.at < r.order.size();
        }
        HR_CHECK(!left || moved, Error, "Pipeline: the schedule stalled (a bug: every stage waits for another)");
      }
    } catch (...) {
      fail(std::current_exception());
    }
    for (auto& r : runs) {
      r.input.clear();
      r.output.clear();
    }
  }
  stats_.seconds = now_seconds() - start;
  if (failure) std::rethrow_exception(failure);
  return loss_sum / static_cast<double>(n);
}

}  // namespace headroom::nn
