// DataParallel in one process (Note [data parallel in one process] in nn/parallel/data_parallel.h).
#include "nn/parallel/data_parallel.h"

#include <exception>
#include <mutex>
#include <optional>
#include <thread>

#include "autograd/engine.h"
#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "autograd/hooks.h"
#include "engine/meta.h"
#include "engine/op_cost.h"
#include "engine/shape.h"

namespace headroom::nn {

DataParallel::DataParallel(std::shared_ptr<Module> module, std::vector<Device> devices, const Factory& make_replica)
    : module_(std::move(module)), devices_(std::move(devices)) {
  HR_CHECK(module_, ValueError, "DataParallel: the module is null");
  HR_CHECK(!devices_.empty(), ValueError, "DataParallel: no devices");
  register_module("module", module_);
  const auto master = module_->named_parameters();
  for (const auto& [name, p] : master)
    HR_CHECK(p.device() == devices_[0], DeviceError, "DataParallel: parameter ", name, " is on ", p.device().str(),
             " but the master must be on the first device, ", devices_[0].str());
  for (size_t k = 1; k < devices_.size(); ++k) {
    HR_CHECK(make_replica, ValueError, "DataParallel: several devices need a factory for the replicas");
    std::shared_ptr<Module> r = make_replica();
    HR_CHECK(r, ValueError, "DataParallel: the factory made no module");
    const auto theirs = r->named_parameters();
    HR_CHECK(theirs.size() == master.size(), ValueError, "DataParallel: the replica has ", theirs.size(),
             " parameters, the master ", master.size());
    for (size_t i = 0; i < master.size(); ++i)
      HR_CHECK(theirs[i].first == master[i].first && theirs[i].second.shape() == master[i].second.shape(), ValueError,
               "DataParallel: the replica's parameter ", theirs[i].first, " ", shape_str(theirs[i].second.shape()),
               " is not the master's ", master[i].first, " ", shape_str(master[i].second.shape()));
    r->to(devices_[k]);
    replicas_.push_back(r);
  }
}

std::string DataParallel::name() const { return str_cat("DataParallel(", devices_.size(), " devices)"); }

Tensor DataParallel::forward(const Tensor& x) {
  HR_CHECK(x.defined() && x.dim() >= 1 && x.size(0) > 0, ShapeError, "DataParallel: expected a batch, got ",
           x.defined() ? shape_str(x.shape()) : std::string("an undefined tensor"));
  const int64_t n = x.size(0);
  const int64_t parts = std::min<int64_t>(n, static_cast<int64_t>(devices_.size()));
  // The master's values into every replica that runs (no history: a copy per step).
  {
    NoGradGuard no_grad;
    for (int64_t k = 1; k < parts; ++k) {
      Module& r = *replicas_[static_cast<size_t>(k - 1)];
      const auto mine = module_->named_parameters();
      const auto theirs = r.named_parameters();
      for (size_t i = 0; i < mine.size(); ++i) {
        Tensor dst = theirs[i].second;
        dst.copy_(mine[i].second);
      }
      const auto mb = module_->buffers();
      const auto rb = r.buffers();
      for (size_t i = 0; i < mb.size() && i < rb.size(); ++i) {
        Tensor dst = rb[i];
        dst.copy_(mb[i]);
      }
    }
  }
  // Each device its rows, all at the same time.
  std::vector<Tensor> outs(static_cast<size_t>(parts));
  std::mutex mutex;
  std::exception_ptr failure;
  const bool grad = GradMode::is_enabled();
  MetaScope::State* meta = MetaScope::current();  // Note [meta in worker threads]
  OpRecorder* recorder = OpRecorder::current();
  auto run = [&](int64_t k) {
    try {
      MetaScope::Join join(meta);
      OpRecorder::Join record(recorder);
      const int64_t begin = k * n / parts, end = (k + 1) * n / parts;
      std::optional<NoGradGuard> no_grad;
      if (!grad) no_grad.emplace();
      Module& m = k == 0 ? *module_ : *replicas_[static_cast<size_t>(k - 1)];
      outs[static_cast<size_t>(k)] = m.forward(x.slice(0, begin, end).to(devices_[static_cast<size_t>(k)]));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex);
      if (!failure) failure = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  for (int64_t k = 1; k < parts; ++k) threads.emplace_back(run, k);
  run(0);
  for (auto& t : threads) t.join();
  if (failure) std::rethrow_exception(failure);
  // Gathered on the first device, differentiably: backward reaches every replica.
  for (int64_t k = 1; k < parts; ++k) outs[static_cast<size_t>(k)] = outs[static_cast<size_t>(k)].to(devices_[0]);
  Tensor y = parts == 1 ? outs[0] : cat(outs, 0);
  if (y.requires_grad() && parts > 1)
    register_hook(y, [this](const Tensor&) -> Tensor {
      queue_backward_callback([this] { reduce_gradients(); });  // once backward has reached every replica
      return Tensor();
    });
  return y;
}

void DataParallel::reduce_gradients() {
  NoGradGuard no_grad;
  const auto mine = module_->parameters();
  for (auto& r : replicas_) {
    const auto theirs = r->parameters();
    for (size_t i = 0; i < mine.size(); ++i) {
      Tensor g = theirs[i].grad();
      if (!g.defined()) continue;
      Tensor here = g.to(devices_[0]);
      if (Tensor mg = mine[i].grad(); mg.defined()) mg.add_(here);
      else mine[i].set_grad(here);
      theirs[i].zero_grad();
    }
  }
}

}  // namespace headroom::nn
