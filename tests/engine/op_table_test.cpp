// The op table (Note [op table], engine/op_table.h): names, supports_op, the checked entry points
// every backend gets (device check and contract before any kernel), a backend with only some
// ops, and an op registered from outside the library (CustomOp).
#include <atomic>

#include "engine/backend.h"
#include "test_util.h"

namespace headroom {
namespace {

TEST(OpTable, NamesRoundTrip) {
  EXPECT_STREQ(op_name(OpId::conv2d_forward), "conv2d_forward");
  EXPECT_STREQ(op_name(OpId::index_add), "index_add");
  for (int i = 0; i < kNumOps; ++i) {
    OpId op;
    ASSERT_TRUE(op_from_name(op_name(static_cast<OpId>(i)), &op)) << i;
    EXPECT_EQ(static_cast<int>(op), i);
  }
  OpId op;
  EXPECT_FALSE(op_from_name("conv3d_forward", &op));
}

TEST(OpTable, TheCpuBackendSupportsEveryOp) {
  Backend& cpu = backend_for(Device::cpu());
  for (int i = 0; i < kNumOps; ++i) {
    EXPECT_TRUE(cpu.supports_op(static_cast<OpId>(i))) << op_name(static_cast<OpId>(i));
    EXPECT_TRUE(supports_op(op_name(static_cast<OpId>(i)), DeviceType::cpu));
  }
  EXPECT_FALSE(supports_op("no_such_op", DeviceType::cpu));
}

// A backend with kernels for fill and conv2d_forward only, counting the kernels it runs; its
// device kind is settable so that the device check can be seen to refuse.
class PartialBackend final : public Backend {
 public:
  explicit PartialBackend(DeviceType type) : Backend(OpSet{OpId::fill, OpId::conv2d_forward}), type_(type) {}
  DeviceType device_type() const override { return type_; }
  void copy_to_host(void*, const void*, size_t, Device, bool) override {}
  void copy_from_host(void*, const void*, size_t, Device, bool) override {}
  int kernels_run = 0;

 protected:
  void impl_fill(const Tensor& out, double value) override {
    ++kernels_run;
    backend_for(Device::cpu()).fill(out, value);
  }
  void impl_conv2d_forward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Conv2dParams&) override {
    ++kernels_run;
  }

 private:
  DeviceType type_;
};

TEST(OpTable, ABackendWithSomeOpsRunsThemAndRefusesTheOthersByName) {
  PartialBackend b(DeviceType::cpu);
  EXPECT_TRUE(b.supports_op(OpId::fill));
  EXPECT_FALSE(b.supports_op(OpId::unary));
  Tensor t = Tensor::zeros({4});
  b.fill(t, 2.5);
  EXPECT_EQ(t.to_vector<float>(), std::vector<float>(4, 2.5f));
  EXPECT_EQ(b.kernels_run, 1);
  EXPECT_THROW_WITH(b.unary(UnaryOp::exp, t, t), DeviceError, "unary: the cpu backend has no kernel for this op");
  EXPECT_EQ(b.kernels_run, 1);
}

TEST(OpTable, ArgumentsAreCheckedOnceBeforeAnyKernelRuns) {
  PartialBackend b(DeviceType::cpu);
  Tensor x = Tensor::zeros({1, 2, 5, 5}), w = Tensor::zeros({3, 2, 3, 3});
  // The contract is the table's, not the backend's: this backend checks nothing itself.
  EXPECT_THROW_WITH(b.conv2d_forward(x, w, Tensor(), Tensor::zeros({1, 3, 4, 4}), Conv2dParams{}), ShapeError,
                    "expected (1, 3, 3, 3)");
  EXPECT_THROW_WITH(b.conv2d_forward(x, w.to(DType::f64), Tensor(), Tensor::zeros({1, 3, 3, 3}), Conv2dParams{}),
                    DTypeError, "dtypes differ");
  EXPECT_EQ(b.kernels_run, 0);
  b.conv2d_forward(x, w, Tensor(), Tensor::zeros({1, 3, 3, 3}), Conv2dParams{});
  EXPECT_EQ(b.kernels_run, 1);
}

TEST(OpTable, TheDeviceCheckNamesTheArgumentOnTheWrongDevice) {
  PartialBackend b(DeviceType::cuda);  // says it is a cuda backend; the tensors are on the cpu
  EXPECT_THROW_WITH(b.fill(Tensor::zeros({2}), 1.0), DeviceError, "fill: out is on cpu but this is the cuda backend");
  EXPECT_THROW_WITH(b.conv2d_forward(Tensor(), Tensor::zeros({3, 2, 3, 3}), Tensor(), Tensor(), Conv2dParams{}),
                    DeviceError, "conv2d_forward: w is on cpu");
  EXPECT_EQ(b.kernels_run, 0);
}

// An op from outside the library, through the table: y += a * x.
using Axpy = CustomOp<const Tensor&, const Tensor&, double>;

Axpy& axpy() {
  static Axpy op(
      "test_axpy",
      [](const Tensor& y, const Tensor& x, double) {
        HR_CHECK(y.shape() == x.shape() && y.dtype() == DType::f32 && x.dtype() == DType::f32 && y.is_contiguous() &&
                     x.is_contiguous(),
                 ShapeError, "test_axpy: y ", describe(y), " and x ", describe(x),
                 " must be contiguous f32 of one shape");
      },
      "y, x, a");
  return op;
}

TEST(OpTable, AnOutOfTreeOpIsRegisteredChecksItsArgumentsAndRuns) {
  Axpy& op = axpy();
  EXPECT_FALSE(supports_op("test_axpy", DeviceType::cpu));  // no kernel yet
  EXPECT_THROW_WITH(op(Tensor::zeros({3}), Tensor::zeros({3}), 1.0), DeviceError, "no kernel for cpu");
  op.set_kernel(DeviceType::cpu, [](const Tensor& y, const Tensor& x, double a) {
    float* py = y.data<float>();
    const float* px = x.data<float>();
    for (int64_t i = 0; i < y.numel(); ++i) py[i] += static_cast<float>(a) * px[i];
  });
  EXPECT_TRUE(supports_op("test_axpy", DeviceType::cpu));
  EXPECT_FALSE(supports_op("test_axpy", DeviceType::cuda));
  EXPECT_TRUE(op.supports(DeviceType::cpu));
  Tensor y = Tensor::from_vector(std::vector<float>{1, 2, 3}, {3});
  Tensor x = Tensor::from_vector(std::vector<float>{10, 20, 30}, {3});
  op(y, x, 0.5);
  EXPECT_EQ(y.to_vector<float>(), (std::vector<float>{6, 12, 18}));
  // Its own contract runs before its kernel, and leaves y as it was.
  EXPECT_THROW_WITH(op(y, Tensor::zeros({4}), 1.0), ShapeError, "must be contiguous f32 of one shape");
  EXPECT_EQ(y.to_vector<float>(), (std::vector<float>{6, 12, 18}));
  EXPECT_THROW_WITH(op(Tensor(), Tensor(), 1.0), ValueError, "no defined tensor");
}

TEST(OpTable, CustomOpNamesMustBeNew) {
  EXPECT_THROW_WITH(CustomOp<const Tensor&>("matmul"), ValueError, "built-in op");
  {
    CustomOp<const Tensor&> once("test_once");
    EXPECT_THROW_WITH(CustomOp<const Tensor&>("test_once"), ValueError, "already registered");
  }
  CustomOp<const Tensor&> again("test_once");  // a destroyed op's name is free again
  EXPECT_FALSE(supports_op("test_once", DeviceType::cpu));
  EXPECT_THROW_WITH(CustomOp<const Tensor&>(""), ValueError, "name is empty");
}

}  // namespace
}  // namespace headroom
