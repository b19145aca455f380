// The NCCL transport (dist/nccl/, Note [nccl stream]) on the GPUs of one process: a world of one
// rank here (ctest runs this binary without mpirun; gpu-check.sh may add an mpirun run). The
// collectives' results, the overlap of the NCCL stream with the caller's, and DistributedDataParallel
// on cuda against the plain model. Skipped without a GPU, except the check that a machine with
// none gets a clear error, not a crash.
#include "dist/process_group.h"
#include "kernels/cuda/cuda_memory.h"
#include "nn/nn.h"
#include "optim/optim.h"
#include "test_util.h"

namespace headroom {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cuda_device_count() == 0): needs a GPU"

const Device kGpu = Device::cuda(0);

TEST(Nccl, WithoutAGpuTheGroupIsAClearError) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is here";
  EXPECT_THROW_WITH(dist::group_for(DeviceType::cuda), Error, "GPU");
}

TEST(Nccl, CollectivesOnOneGpu) {
  SKIP_WITHOUT_GPU();
  dist::ProcessGroup& g = dist::group_for(DeviceType::cuda);
  EXPECT_EQ(g.backend_name(), "nccl");
  const int n = g.size(), r = g.rank();
  for (DType d : {DType::f32, DType::bf16, DType::f16, DType::f64, DType::i64}) {
    Tensor t = Tensor::full({1000}, r + 1, TensorOptions().dtype(d).device(kGpu));
    g.all_reduce(t, dist::ReduceOp::sum)->wait();
    EXPECT_EQ(t.to(Device::cpu()).to(DType::f64).to_vector<double>()[999], n * (n + 1) / 2.0) << dtype_name(d);
  }
  Tensor in = Tensor::arange(0, 8 * n, 1, TensorOptions().device(kGpu));
  Tensor out = Tensor::zeros({8}, TensorOptions().device(kGpu));
  g.reduce_scatter(out, in, dist::ReduceOp::average)->wait();
  EXPECT_EQ(out.to(Device::cpu()).to_vector<float>()[3], static_cast<float>(8 * r + 3));
  Tensor flat = Tensor::full({4 * n}, -1, TensorOptions().device(kGpu));
  flat.slice(0, 4 * r, 4 * r + 4).fill_(r);
  g.all_gather(flat, flat.slice(0, 4 * r, 4 * r + 4))->wait();  // in place
  EXPECT_EQ(flat.to(Device::cpu()).to_vector<float>()[4 * (n - 1)], static_cast<float>(n - 1));
  g.barrier()->wait();
}

TEST(Nccl, DdpOnCudaEqualsThePlainModel) {
  SKIP_WITHOUT_GPU();
  auto make = [] {
    manual_seed(5);
    auto m = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Module>>{
        std::make_shared<nn::Linear>(16, 64), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(64, 4)});
    m->to(kGpu);
    return m;
  };
  auto plain = make(), model = make();
  nn::DistributedDataParallel ddp(model, dist::group_for(DeviceType::cuda));
  optim::SGD a(plain->parameters(), 0.1, 0.9), b(ddp.parameters(), 0.1, 0.9);
  manual_seed(9);
  Tensor x = Tensor::randn({8, 16}).to(kGpu);
  Tensor y = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 3, 0, 1, 2, 3}, {8}, DType::i64).to(kGpu);
  for (int step = 0; step < 3; ++step) {
    a.zero_grad();
    cross_entropy((*plain)(x), y).backward();
    a.step();
    b.zero_grad();
    cross_entropy(ddp(x), y).backward();
    b.step();
  }
  const auto p = plain->parameters(), q = ddp.parameters();
  for (size_t i = 0; i < p.size(); ++i)
    EXPECT_TRUE(headroom::testing::all_close(q[i].to(Device::cpu()), p[i].to(Device::cpu()), 1e-6, 1e-5)) << i;
  EXPECT_EQ(ddp.syncs(), 3);
}

}  // namespace
}  // namespace headroom
