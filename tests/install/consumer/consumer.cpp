// A program outside the headroom tree, built against an installed headroom (tests/install/
// install_test.sh): it includes the public headers as the examples do and links
// libheadroom.so only. It runs one training step of an nn::Linear and prints what the test
// checks -- gradients that do not depend on the random initialisation:
//   L = sum(x W^T + b)  =>  dL/dW[o][i] = sum over rows of x[:, i],  dL/db[o] = rows of x.
// With --dist it also makes the world group: under mpirun that loads libheadroom_mpi.so from
// beside the installed libheadroom.so (Note [installed backends] in CMakeLists.txt).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "dist/process_group.h"
#include "headroom.h"
#include "nn/nn.h"
#include "optim/optim.h"

using namespace headroom;

namespace {
void print(const char* name, const Tensor& t) {
  std::printf("%s", name);
  for (float v : t.to_vector<float>()) std::printf(" %g", v);
  std::printf("\n");
}
}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--dist") == 0) {
    dist::ProcessGroup& world = dist::init();
    std::printf("dist world: %s, size %d\n", world.backend_name().c_str(), world.size());
    dist::finalize();
    return 0;
  }
  manual_seed(0);
  nn::Linear linear(3, 2);
  Tensor x = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});  // [batch 2, in 3]

  Tensor out = linear.forward(x);  // [2, 2]
  std::printf("out shape %lld %lld\n", static_cast<long long>(out.shape()[0]), static_cast<long long>(out.shape()[1]));
  Tensor loss = out.sum();
  loss.backward();
  print("weight.grad", linear.weight.grad());  // 5 7 9 5 7 9
  print("bias.grad", linear.bias.grad());      // 2 2

  // One SGD step moves every weight by -lr * its gradient.
  const std::vector<float> before = linear.weight.to_vector<float>();
  optim::SGD sgd(linear.parameters(), 0.5);
  sgd.step();
  const std::vector<float> after = linear.weight.to_vector<float>();
  const float expected_grad[] = {5, 7, 9, 5, 7, 9};
  double worst = 0;
  for (size_t i = 0; i < after.size(); ++i)
    worst = std::fmax(worst, std::fabs(after[i] - (before[i] - 0.5f * expected_grad[i])));
  std::printf("sgd step max error %g\n", worst);

  std::printf("cpu peak allocated %s\n",
              format_bytes(caching_allocator(Device::cpu()).stats().allocated_bytes.peak).c_str());
  std::printf("headroom consumer: ok\n");
  return worst < 1e-5 ? 0 : 1;
}
