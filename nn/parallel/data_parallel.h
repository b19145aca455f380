// DataParallel: one process, several devices (PyTorch's nn.DataParallel), for comparison with
// DistributedDataParallel -- and as the reason to prefer DDP.
//
//   auto make = [] { return std::make_shared<MyNet>(); };
//   nn::DataParallel dp(make(), {Device::cpu(0), Device::cpu(1), Device::cpu(2)}, make);
//   Tensor loss = cross_entropy(dp(x), y);   // x split over the devices, run at the same time
//   loss.backward();                         // every replica's gradients summed on cpu:0
//   opt.step();                              // an optimizer over dp.parameters(): the master's
//
// Note [data parallel in one process]: the module given is the master, on the first device.
// Each forward copies its parameters and buffers into a replica on every other device (made
// once, by the factory), splits the batch on dim 0 into one part per device, runs the parts on
// one thread per device at the same time, and gathers the outputs on the first device with
// differentiable copies, so backward reaches every replica. When backward ends (Note [backward
// callbacks]) each replica's gradients are added into the master's, on the first device, and
// dropped. The first device thus holds more than the others -- the whole batch's outputs, the
// gathered gradients, the optimizer state -- which the memory report shows; DDP balances it, one
// process per device. Replicas' BatchNorm statistics are not kept (the master's are, from its
// own part); dropout draws from the one global generator in an order the threads decide.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "engine/device.h"
#include "nn/module.h"

namespace headroom::nn {

class DataParallel final : public Module {
 public:
  using Factory = std::function<std::shared_ptr<Module>()>;
  // module: the master, already on devices[0]; make_replica: a module of the same architecture
  // (its values are overwritten). ValueError for no devices or a replica whose parameters differ
  // in names or shapes; DeviceError for a master not on devices[0].
  DataParallel(std::shared_ptr<Module> module, std::vector<Device> devices, const Factory& make_replica);

  // x split on dim 0 over the devices (the first parts one row longer when it does not divide);
  // the outputs concatenated on dim 0, on the first device.
  Tensor forward(const Tensor& x) override;
  Module& module() { return *module_; }
  const std::vector<Device>& devices() const { return devices_; }
  std::string name() const override;

 private:
  void reduce_gradients();

  std::shared_ptr<Module> module_;
  std::vector<Device> devices_;
  std::vector<std::shared_ptr<Module>> replicas_;  // replicas_[k] on devices_[k + 1]
  bool reduce_queued_ = false;
};

}  // namespace headroom::nn
