// DistributedDataParallel: buckets, hooks, the overlapped all-reduce and its end of backward
// (Notes in nn/parallel/ddp.h).
#include "nn/parallel/ddp.h"

#include <chrono>
#include <map>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "engine/memory.h"
#include "engine/shape.h"

namespace headroom::nn {

namespace {
double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

DistributedDataParallel::DistributedDataParallel(std::shared_ptr<Module> module, dist::ProcessGroup& group,
                                                 DDPOptions options)
    : module_(std::move(module)), group_(group), options_(options) {
  HR_CHECK(module_, ValueError, "DistributedDataParallel: the module is null");
  HR_CHECK(options_.bucket_cap_bytes > 0 && options_.first_bucket_cap_bytes > 0, ValueError,
           "DistributedDataParallel: bucket caps must be positive, got ", options_.bucket_cap_bytes, " and ",
           options_.first_bucket_cap_bytes, " bytes");
  HR_CHECK(options_.zero_stage >= 0 && options_.zero_stage <= 2, ValueError,
           "DistributedDataParallel: zero_stage must be 0, 1 or 2, got ", options_.zero_stage);
  register_module("module", module_);
  params_ = module_->parameters();
  HR_CHECK(!params_.empty(), ValueError, "DistributedDataParallel: the module has no parameters");
  for (const auto& [name, p] : module_->named_parameters()) {
    HR_CHECK(p.device().type == group_.device_type(), DeviceError, "DistributedDataParallel: parameter ", name,
             " is on ", p.device().str(), " but the ", group_.backend_name(), " group moves ",
             device_type_name(group_.device_type()), " tensors (move the module first, or use dist::group_for)");
    HR_CHECK(p.is_contiguous(), ValueError, "DistributedDataParallel: parameter ", name, " ", shape_str(p.shape()),
             " is not contiguous");
  }
  // Rank 0's state everywhere, so that every replica starts the same.
  {
    NoGradGuard no_grad;
    std::vector<dist::WorkPtr> works;
    for (const Tensor& p : params_) works.push_back(group_.broadcast(p.detach(), 0));
    for (const Tensor& b : module_->buffers())
      if (b.is_contiguous()) works.push_back(group_.broadcast(b, 0));
    for (auto& w : works) w->wait();
  }
  layout_buckets();
  CategoryScope communication(MemoryCategory::communication);
  scalar_ = Tensor::zeros({1}, TensorOptions().dtype(DType::f64).device(params_.front().device()));
}

DistributedDataParallel::~DistributedDataParallel() {
  abandon_sync();
  for (auto& h : hooks_) h.remove();
  for (const Tensor& p : params_) set_grad_slot(p, nullptr);
}

std::string DistributedDataParallel::name() const {
  return str_cat("DistributedDataParallel(", group_.backend_name(), ", rank ", group_.rank(), " of ", group_.size(),
                 ", ", buckets_.size(), buckets_.size() == 1 ? " bucket)" : " buckets)");
}

void DistributedDataParallel::layout_buckets() {
  // Note [gradient buckets]: reverse registration order, one dtype and device a bucket.
  std::vector<std::vector<size_t>> groups;
  std::vector<size_t> bytes;
  std::map<std::pair<int, std::string>, size_t> open;  // (dtype, device) -> the group being filled
  for (size_t k = params_.size(); k-- > 0;) {
    const Tensor& p = params_[k];
    const auto key = std::make_pair(static_cast<int>(p.dtype()), p.device().str());
    const size_t nbytes = p.nbytes();
    auto it = open.find(key);
    if (it != open.end()) {
      const size_t g = it->second;
      const size_t cap = g == 0 ? options_.first_bucket_cap_bytes : options_.bucket_cap_bytes;
      if (bytes[g] + nbytes > cap) {  // full: a new one (a parameter over the cap gets its own)
        open.erase(it);
        it = open.end();
      }
    }
    if (it == open.end()) {
      groups.emplace_back();
      bytes.push_back(0);
      it = open.insert_or_assign(key, groups.size() - 1).first;
    }
    groups[it->second].push_back(k);
    bytes[it->second] += nbytes;
  }
  where_.assign(params_.size(), {0, 0});
  CategoryScope category(MemoryCategory::gradient);  // the buckets are the gradients' memory
  NoGradGuard no_grad;
  const int64_t ranks = group_.size(), me = group_.rank();
  for (size_t b = 0; b < groups.size(); ++b) {
    Bucket bucket;
    int64_t offset = 0;
    for (size_t k : groups[b]) {
      where_[k] = {b, bucket.params.size()};
      bucket.params.push_back(k);
      bucket.offsets.push_back(offset);
      offset += params_[k].numel();
    }
    bucket.numel = offset;
    bucket.padded = sharded() ? (offset + ranks - 1) / ranks * ranks : offset;
    const TensorOptions options = params_[groups[b].front()].options();
    if (options_.zero_stage < 2) bucket.flat = Tensor::zeros({bucket.padded}, options);
    if (sharded()) {
      // Note [ZeRO stages]: the parameters' values move into one flat buffer, and this rank's
      // chunk of it gets a gradient of its own.
      const int64_t chunk = bucket.padded / ranks;
      {
        CategoryScope params(MemoryCategory::parameter);
        bucket.params_flat = Tensor::zeros({bucket.padded}, options);
      }
      for (size_t i = 0; i < bucket.params.size(); ++i) {
        const Tensor& p = params_[bucket.params[i]];
        bucket.params_flat.slice(0, bucket.offsets[i], bucket.offsets[i] + p.numel())
            .copy_(p.detach().reshape({p.numel()}));
      }
      bucket.shard_grad = Tensor::zeros({chunk}, options);
      bucket.shard_param = bucket.params_flat.slice(0, me * chunk, (me + 1) * chunk);
      bucket.shard_param.set_requires_grad(true);
      bucket.shard_param.set_grad(bucket.shard_grad);
    }
    buckets_.push_back(std::move(bucket));
  }
  if (sharded()) {
    // The module's parameters become views into the flat buffers (tied ones stay tied).
    std::map<const TensorImpl*, size_t> index;
    for (size_t k = 0; k < params_.size(); ++k) index[params_[k].impl()] = k;
    module_->rebind_parameters([&](const std::string&, const Tensor& p) {
      const size_t k = index.at(p.impl());
      const auto [b, i] = where_[k];
      const int64_t begin = buckets_[b].offsets[i];
      return buckets_[b].params_flat.slice(0, begin, begin + p.numel()).view(p.shape());
    });
    params_ = module_->parameters();
  }
  // Each gradient lives in its bucket (Note [gradient slots]); a gradient already there (the
  // module trained before it was wrapped) is moved in.
  for (size_t k = 0; k < params_.size(); ++k) {
    if (!sharded() && params_[k].grad().defined()) {
      Tensor view = bucket_view(k);
      view.copy_(params_[k].grad());
      params_[k].set_grad(view);
    }
    set_grad_slot(params_[k], [this, k](const Tensor&) { return bucket_view(k); });
    hooks_.push_back(
        register_post_accumulate_grad_hook(params_[k], [this, k](const Tensor&) { on_gradient_final(k); }));
  }
  final_.assign(params_.size(), 0);
}

int64_t DistributedDataParallel::held_bucket_bytes() const {
  int64_t n = 0;
  for (const Bucket& b : buckets_)
    if (b.flat.defined()) n += static_cast<int64_t>(b.flat.nbytes());
  return n;
}

void DistributedDataParallel::ensure_bucket(size_t b) {
  Bucket& bucket = buckets_[b];
  if (bucket.flat.defined()) return;
  struct Peak {
    DistributedDataParallel& d;
    ~Peak() { d.last_.bucket_bytes_peak = std::max(d.last_.bucket_bytes_peak, d.held_bucket_bytes()); }
  } peak{*this};
  CategoryScope category(MemoryCategory::gradient);
  NoGradGuard no_grad;
  bucket.flat = Tensor::empty({bucket.padded}, params_[bucket.params.front()].options());
  // What no gradient writes -- the padding -- must be zero for the reduce-scatter.
  if (bucket.padded > bucket.numel) bucket.flat.slice(0, bucket.numel, bucket.padded).zero_();
}

Tensor DistributedDataParallel::bucket_view(size_t param) {
  const auto [b, i] = where_[param];
  ensure_bucket(b);
  const Bucket& bucket = buckets_[b];
  const int64_t begin = bucket.offsets[i];
  return bucket.flat.slice(0, begin, begin + params_[param].numel()).view(params_[param].shape());
}

Tensor DistributedDataParallel::forward(const Tensor& x) {
  if (options_.broadcast_buffers && group_.size() > 1) sync_buffers();
  return module_->forward(x);
}

void DistributedDataParallel::sync_buffers() {
  NoGradGuard no_grad;
  std::vector<dist::WorkPtr> works;
  for (const Tensor& b : module_->buffers())
    if (b.is_contiguous()) works.push_back(group_.broadcast(b, 0));
  for (auto& w : works) w->wait();
}

// ---- Note [overlapped all-reduce] ----

void DistributedDataParallel::start_cycle(uint64_t backward) {
  if (in_cycle_) abandon_sync();  // a backward that threw left one behind (Note [abandoned sync])
  in_cycle_ = true;
  cycle_backward_ = backward;
  next_launch_ = 0;
  std::fill(final_.begin(), final_.end(), 0);
  for (Bucket& b : buckets_) {
    b.pending = static_cast<int64_t>(b.params.size());
    b.work.reset();
  }
  last_ = DDPSyncStats{};
  last_.bucket_bytes_peak = held_bucket_bytes();
  queue_backward_callback([this] { finish_cycle(); });
}

void DistributedDataParallel::on_gradient_final(size_t param) {
  if (!require_sync_) return;  // Note [no_sync]
  const uint64_t backward = current_backward_id();
  if (backward == 0) return;  // grad() never reaches here; a hook run by hand does nothing
  if (!in_cycle_ || backward != cycle_backward_) start_cycle(backward);
  if (final_[param]) return;
  final_[param] = 1;
  // A gradient someone put elsewhere (set_grad) is moved into its bucket.
  const Tensor g = params_[param].grad();
  Tensor view = bucket_view(param);
  if (g.defined() && g.storage().get() != view.storage().get()) {
    NoGradGuard no_grad;
    view.copy_(g);
    params_[param].set_grad(view);
  }
  Bucket& bucket = buckets_[where_[param].first];
  if (--bucket.pending == 0) launch_ready();
  if (options_.zero_stage == 2) release_reduced();
}

void DistributedDataParallel::release_reduced() {
  // Predicting among several ranks (Note [meta groups]), nothing has really been reduced: the
  // buckets stay until backward's end, the most a real run can hold (an upper bound for the
  // gradient peak; a real run frees each when its reduce-scatter ends, which depends on the peers).
  if (scalar_.is_meta() && group_.size() > 1) return;
  for (size_t b = 0; b < next_launch_; ++b) {
    Bucket& bucket = buckets_[b];
    // A failed one may still be written by the transport: only a finished, successful one goes.
    if (!bucket.flat.defined() || !bucket.work || !bucket.work->is_done() || bucket.work->failed()) continue;
    for (size_t k : bucket.params) params_[k].zero_grad();
    bucket.flat = Tensor();
  }
}

void DistributedDataParallel::launch_ready() {
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) {
    ++last_.started_in_backward;
    launch(next_launch_++);
  }
}

void DistributedDataParallel::launch(size_t b) {
  ensure_bucket(b);
  Bucket& bucket = buckets_[b];
  // Parameters this backward did not reach: zero here, and that is their gradient.
  NoGradGuard no_grad;
  for (size_t k : bucket.params) {
    if (final_[k]) continue;
    Tensor view = bucket_view(k);
    const Tensor g = params_[k].grad();
    if (!g.defined()) {
      view.zero_();
      params_[k].set_grad(view);
    } else if (g.storage().get() != view.storage().get()) {
      view.copy_(g);
      params_[k].set_grad(view);
    }  // else: accumulated under no_sync and not reached now; its sum is in the bucket already
  }
  bucket.work = sharded() ? group_.reduce_scatter(bucket.shard_grad, bucket.flat, dist::ReduceOp::average)
                          : group_.all_reduce(bucket.flat, dist::ReduceOp::average);
  ++all_reduces_;
  ++last_.buckets;
  last_.bytes += static_cast<int64_t>(bucket.flat.nbytes());
}

void DistributedDataParallel::finish_cycle() {
  // Every node has run: what is still incomplete was not reached by this backward.
  struct EndCycle {
    bool& flag;
    ~EndCycle() { flag = false; }
  } end{in_cycle_};
  const size_t started_by_hooks = static_cast<size_t>(last_.started_in_backward);
  for (size_t b = next_launch_; b < buckets_.size(); ++b) launch(b);
  next_launch_ = buckets_.size();
  last_.started_in_backward = static_cast<int64_t>(started_by_hooks);
  const double begin = now_seconds();
  for (Bucket& bucket : buckets_) bucket.work->wait();
  last_.exposed_seconds = now_seconds() - begin;
  for (Bucket& bucket : buckets_) last_.communication_seconds += bucket.work->seconds();
  if (sharded()) {
    // Note [ZeRO stages]: the shards hold the gradients that count; the parameters' own are
    // this rank's unreduced ones, so they go (stage 2 frees their buffers too).
    for (const Tensor& p : params_) p.zero_grad();
    for (Bucket& bucket : buckets_) {
      bucket.shard_param.set_grad(bucket.shard_grad);  // again, after an optimizer's zero_grad
      if (options_.zero_stage == 2) bucket.flat = Tensor();
    }
  }
  ++syncs_;
}

std::vector<Tensor> DistributedDataParallel::shard_parameters() const {
  HR_CHECK(sharded(), ValueError, "DistributedDataParallel::shard_parameters: no ZeRO stage (DDPOptions::zero_stage)");
  std::vector<Tensor> out;
  for (const Bucket& b : buckets_) out.push_back(b.shard_param);
  return out;
}

void DistributedDataParallel::gather_parameters() {
  HR_CHECK(sharded(), ValueError, "DistributedDataParallel::gather_parameters: no ZeRO stage (DDPOptions::zero_stage)");
  NoGradGuard no_grad;
  std::vector<dist::WorkPtr> works;
  for (Bucket& b : buckets_) works.push_back(group_.all_gather(b.params_flat, b.shard_param.detach()));
  for (auto& w : works) w->wait();
}

void DistributedDataParallel::abandon_sync() noexcept {
  if (!in_cycle_) return;
  in_cycle_ = false;
  try {
    for (size_t b = next_launch_; b < buckets_.size(); ++b) {
      ensure_bucket(b);
      Bucket& bucket = buckets_[b];
      bucket.work = sharded() ? group_.reduce_scatter(bucket.shard_grad, bucket.flat, dist::ReduceOp::average)
                              : group_.all_reduce(bucket.flat, dist::ReduceOp::average);
      ++all_reduces_;
    }
    next_launch_ = buckets_.size();
    for (Bucket& bucket : buckets_)
      if (bucket.work) bucket.work->wait();
    if (options_.zero_stage == 2)  // what the garbage went through goes, as after a real sync
      for (Bucket& bucket : buckets_) {
        for (size_t k : bucket.params) params_[k].zero_grad();
        bucket.flat = Tensor();
      }
  } catch (const std::exception&) {
    // A broken group (or no memory for a stage-2 bucket): nothing more can be sent; the next
    // collective reports it.
  }
}

}  // namespace headroom::nn

namespace headroom::nn {

void DistributedDataParallel::fail_sync() noexcept {
  if (in_cycle_) {
    abandon_sync();
    return;
  }
  if (syncs_ != attempt_syncs_) return;  // this attempt's synchronisation completed already
  // Nothing started yet: the peers will run every bucket's collective of this attempt.
  in_cycle_ = true;
  next_launch_ = 0;
  abandon_sync();
}

double DistributedDataParallel::reduce_scalar(double value, dist::ReduceOp op) {
  // Alone, or predicting (Note [meta groups]: every rank is taken to do as this one does).
  if (group_.size() == 1 || scalar_.is_meta()) return value;
  NoGradGuard no_grad;
  scalar_.fill_(value);
  group_.all_reduce(scalar_, op)->wait();
  return scalar_.item<double>();
}

}  // namespace headroom::nn
