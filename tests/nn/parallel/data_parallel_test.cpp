// DataParallel in one process (nn/parallel/data_parallel.h) over cpu devices: the gradients of
// the single-device model, every replica's summed on the first device; and the first device
// holding more than the others -- the reason to prefer DDP.
//
// Tolerance: the batch's rows are split over the devices and their weight gradients summed per
// device, then over devices: the same terms in another order (1e-5 relative plus 1e-6 absolute).
#include <gtest/gtest.h>

#include "nn/nn.h"
#include "nn/parallel/data_parallel.h"
#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

using headroom::testing::all_close;

std::shared_ptr<nn::Module> make(uint64_t seed) {
  manual_seed(seed);
  return std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(10, 32), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(32, 4)});
}

std::pair<Tensor, Tensor> batch(int64_t n) {
  manual_seed(8);
  Tensor x = Tensor::randn({n, 10});
  std::vector<int64_t> y(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) y[static_cast<size_t>(i)] = i % 4;
  return {x, Tensor::from_vector(y, {n}, DType::i64)};
}

TEST(DataParallel, GradientsEqualTheSingleDeviceOnes) {
  auto [x, y] = batch(14);
  auto reference = make(5);
  cross_entropy((*reference)(x), y).backward();
  for (int d : {1, 2, 4}) {
    std::vector<Device> devices;
    for (int k = 0; k < d; ++k) devices.push_back(Device::cpu(k));
    auto master = make(5);
    nn::DataParallel dp(master, devices, [] { return make(99); });
    for (int step = 0; step < 2; ++step) {  // twice: the replicas' gradients are dropped after each
      dp.zero_grad();
      Tensor out = dp(x);
      EXPECT_EQ(out.device(), Device::cpu(0));
      cross_entropy(out, y).backward();
    }
    const auto a = dp.parameters(), b = reference->parameters();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_TRUE(all_close(a[i].grad(), b[i].grad(), 1e-6, 1e-5)) << d << " devices, parameter " << i;
  }
}

TEST(DataParallel, TheFirstDeviceHoldsMoreThanTheOthers) {
  auto [x, y] = batch(64);
  std::vector<Device> devices{Device::cpu(0), Device::cpu(1), Device::cpu(2)};
  auto master = make(6);
  nn::DataParallel dp(master, devices, [] { return make(1); });
  optim::Adam opt(dp.parameters(), 1e-3);
  for (const Device& d : devices) {
    caching_allocator(d).empty_cache();
    caching_allocator(d).reset_peak_stats();
  }
  for (int step = 0; step < 2; ++step) {
    opt.zero_grad();
    cross_entropy(dp(x), y).backward();
    opt.step();
  }
  const int64_t first = caching_allocator(Device::cpu(0)).stats().allocated_bytes.peak;
  for (size_t k = 1; k < devices.size(); ++k)
    EXPECT_GT(first, caching_allocator(devices[k]).stats().allocated_bytes.peak) << devices[k];
  // The optimizer state lives only with the master.
  EXPECT_EQ(caching_allocator(Device::cpu(1)).stats().category(MemoryCategory::optimizer_state).current, 0);
}

TEST(DataParallel, ArgumentChecks) {
  EXPECT_THROW_WITH(nn::DataParallel(make(1), {}, nullptr), ValueError, "no devices");
  auto other = make(1);
  other->to(Device::cpu(1));
  EXPECT_THROW_WITH(nn::DataParallel(other, {Device::cpu(0)}, nullptr), DeviceError, "must be on the first device");
  EXPECT_THROW_WITH(nn::DataParallel(make(1), {Device::cpu(0), Device::cpu(1)},
                                     [] { return std::shared_ptr<nn::Module>(std::make_shared<nn::Linear>(10, 4)); }),
                    ValueError, "the replica has 2 parameters, the master 4");
}

}  // namespace
}  // namespace headroom
