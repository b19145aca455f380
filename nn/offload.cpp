// Parameter streaming (Note [parameter streaming] in offload.h).
#include "nn/offload.h"

#include "autograd/grad_mode.h"
#include "autograd/offload.h"
#include "engine/memory.h"

namespace headroom::nn {

ParameterStreamer::ParameterStreamer(std::vector<std::shared_ptr<Module>> layers, Device device, int prefetch)
    : device_(device), prefetch_(prefetch) {
  HR_CHECK(!layers.empty(), ValueError, "ParameterStreamer: no layers");
  HR_CHECK(prefetch >= 0, ValueError, "ParameterStreamer: prefetch must be >= 0, got ", prefetch);
  for (size_t i = 0; i < layers.size(); ++i)
    HR_CHECK(layers[i] != nullptr, ValueError, "ParameterStreamer: layer ", i, " is null");
  // Every layer's tensors to the host pool: made for all layers first, so a failure (the pool's
  // limit) leaves the model as it was.
  NoGradGuard no_grad;
  std::vector<std::vector<Tensor>> hosts(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    std::vector<Tensor>& host = hosts[i];
    // A walk that changes nothing gives the tensors in place_tensors' order (tied ones once).
    std::vector<Tensor> originals;
    layers[i]->place_tensors([&](const Tensor& t) {
      originals.push_back(t);
      return t;
    });
    CategoryScope as_parameter(MemoryCategory::parameter);
    for (const Tensor& t : originals) {
      Tensor h = Tensor::empty_pinned(t.shape(), t.dtype());
      copy_tensor(h, t.detach());
      host.push_back(std::move(h));
    }
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    size_t k = 0;
    const std::vector<Tensor>& host = hosts[i];
    layers[i]->place_tensors([&](const Tensor&) { return host.at(k++); });
    layers_.push_back(Layer{std::move(layers[i]), std::move(hosts[i]), false, nullptr});
  }
}

ParameterStreamer::~ParameterStreamer() {
  for (Layer& l : layers_) {
    try {
      release(l);
    } catch (...) {  // leaving a layer on the device is all that can go wrong here
    }
  }
}

int64_t ParameterStreamer::host_bytes() const {
  int64_t n = 0;
  for (const Layer& l : layers_)
    for (const Tensor& t : l.host) n += static_cast<int64_t>(t.nbytes());
  return n;
}

void ParameterStreamer::fetch(Layer& layer, bool ahead) {
  if (layer.on_device) return;
  std::vector<Tensor> copies;
  copies.reserve(layer.host.size());
  {
    CategoryScope as_parameter(MemoryCategory::parameter);
    for (const Tensor& h : layer.host)
      copies.push_back(Tensor::empty(h.shape(), TensorOptions().dtype(h.dtype()).device(device_)));
  }
  int64_t bytes = 0;
  if (device_.is_cuda()) {
    // Note [parameter streaming]: on the side stream, after what compute queued so far (the
    // blocks may have been freed by kernels still queued there).
    const Stream side{device_, kOffloadStreamId};
    Event allocated;
    allocated.record(current_stream(device_));
    allocated.wait(side);
    auto ready = std::make_unique<Event>();
    {
      StreamGuard on_side(side);
      for (size_t i = 0; i < copies.size(); ++i) {
        copy_tensor(copies[i], layer.host[i], /*non_blocking=*/true);
        copies[i].record_stream(side);
        bytes += static_cast<int64_t>(copies[i].nbytes());
      }
      ready->record(side);
    }
    layer.ready = std::move(ready);
  } else {
    for (size_t i = 0; i < copies.size(); ++i) {
      copy_tensor(copies[i], layer.host[i]);
      bytes += static_cast<int64_t>(copies[i].nbytes());
    }
  }
  size_t k = 0;
  layer.module->place_tensors([&](const Tensor&) { return copies.at(k++); });
  layer.on_device = true;
  ++stats_.layers_fetched;
  stats_.bytes_fetched += bytes;
  if (ahead) ++stats_.fetched_ahead;
}

void ParameterStreamer::release(Layer& layer) {
  if (!layer.on_device) return;
  size_t k = 0;
  layer.module->place_tensors([&](const Tensor&) { return layer.host.at(k++); });
  layer.on_device = false;
  layer.ready.reset();
}

Tensor ParameterStreamer::forward(const Tensor& x) {
  HR_CHECK(!GradMode::is_enabled(), ValueError,
           "ParameterStreamer::forward is for inference: run it under NoGradGuard (backward would need every "
           "layer's parameters on the device at once)");
  Tensor h = x.to(device_);
  try {
    for (size_t i = 0; i < layers_.size(); ++i) {
      fetch(layers_[i], /*ahead=*/false);
      for (size_t j = i + 1; j <= i + static_cast<size_t>(prefetch_) && j < layers_.size(); ++j)
        fetch(layers_[j], /*ahead=*/true);
      if (layers_[i].ready) layers_[i].ready->wait(current_stream(device_));  // compute waits, the host does not
      h = layers_[i].module->forward(h);
      release(layers_[i]);
    }
  } catch (...) {
    for (Layer& l : layers_) release(l);
    throw;
  }
  return h;
}

}  // namespace headroom::nn
