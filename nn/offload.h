// Parameter streaming: inference of a model larger than the device.
//
//   nn::ParameterStreamer streamer(layers, Device::cuda());   // the layers' tensors go to the host pool
//   NoGradGuard no_grad;
//   Tensor y = streamer.forward(x);                           // each layer comes in ahead of use, then goes
//
// Note [parameter streaming]: the streamer keeps every layer's parameters and buffers in the
// pinned host pool (Note [host pool] in engine/allocator.h, category parameter), so the device
// holds only the layers in flight. forward() runs the layers in order; before layer i runs, its
// tensors are on the device and layers i+1 .. i+prefetch are being copied there (on a GPU on the
// side stream kOffloadStreamId, while layer i computes; the compute stream waits for a layer's
// copies before running it); after it ran its device copies are dropped and the layer points at
// its host tensors again. So the device's parameter bytes peak at about 1 + prefetch layers
// instead of all of them, and its activations at what one layer needs.
// Inference only: with grad mode on, backward would need every layer's weights at once, so
// forward() refuses (ValueError) -- run it under NoGradGuard or InferenceMode. On the cpu
// devices the copies are made in place of the transfers, with the same bytes on both sides.
// The layers are not usable outside the streamer while it lives (their tensors are on the host);
// ~ParameterStreamer leaves them on the host.
#pragma once

#include <memory>
#include <vector>

#include "engine/event.h"
#include "nn/module.h"

namespace headroom::nn {

struct ParameterStreamerStats {
  int64_t layers_fetched = 0;  // layer copies made on the device, over every forward
  int64_t bytes_fetched = 0;
  int64_t fetched_ahead = 0;  // of those, started before the layer's turn (prefetch)
};

class ParameterStreamer {
 public:
  // prefetch: how many layers ahead are brought to the device (0: each at its turn).
  // Throws ValueError for no layers, a null layer or a negative prefetch.
  ParameterStreamer(std::vector<std::shared_ptr<Module>> layers, Device device, int prefetch = 1);
  ~ParameterStreamer();
  ParameterStreamer(const ParameterStreamer&) = delete;
  ParameterStreamer& operator=(const ParameterStreamer&) = delete;

  // x on any device (copied to the streamer's); the output on the streamer's device.
  Tensor forward(const Tensor& x);
  Device device() const { return device_; }
  // Bytes of every layer's tensors in the host pool.
  int64_t host_bytes() const;
  ParameterStreamerStats stats() const { return stats_; }

 private:
  struct Layer {
    std::shared_ptr<Module> module;
    std::vector<Tensor> host;  // its tensors in the host pool, in the module's order
    bool on_device = false;
    std::unique_ptr<Event> ready;  // GPU: its copies are done
  };
  void fetch(Layer& layer, bool ahead);
  void release(Layer& layer);

  std::vector<Layer> layers_;
  Device device_;
  int prefetch_;
  ParameterStreamerStats stats_;
};

}  // namespace headroom::nn
