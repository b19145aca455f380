// cuDNN plumbing shared by conv.cpp and batch_norm.cpp: descriptor RAII wrappers, the dtype
// mapping, the workspace budget for algorithm searches, and the public switches.
//
// headroom uses cuDNN 9's legacy API (cudnnConvolutionForward, cudnnBatchNormalization*, ...):
// it is still shipped (libcudnn_cnn, libcudnn_ops) and covers what the Backend contract needs,
// where the graph API would need a frontend library. cuDNN 9 marks it deprecated; its headers
// warn only when CUDNN_WARN_DEPRECATED is defined, but a build that defines it must stay
// warnings-clean too, so every file that touches the legacy API silences
// -Wdeprecated-declarations locally (push/pop), as this header does around its own uses.
//
// Switches (process-wide, thread-safe):
//   set_cudnn_benchmark(on)   convolution algorithm choice by measurement (on, the default:
//                             the first call of each shape runs cudnnFind*AlgorithmEx and the
//                             fastest algorithm whose workspace fits is remembered) or by
//                             cuDNN's heuristics (off: cudnnGet*Algorithm_v7, nothing cached)
//   set_cudnn_batch_norm(on)  batch norm through cuDNN where cuDNN can do it (on, the default)
//                             or always with headroom's own kernels (tests compare the two)
#pragma once

#include <cudnn.h>

#include <cstddef>
#include <cstdint>

#include "engine/device.h"
#include "engine/dtype.h"
#include "kernels/cuda/cuda_libs.h"

namespace headroom::cuda {

// Returns the previous setting.
bool set_cudnn_benchmark(bool on);
bool cudnn_benchmark();
// Convolution algorithms remembered by benchmark mode (one per shape, dtype, parameters and
// direction), and forgetting them (the next call of each shape searches again).
size_t conv_algorithm_cache_size();
void clear_conv_algorithm_cache();

bool set_cudnn_batch_norm(bool on);
bool cudnn_batch_norm();

// The cuDNN data type of a float dtype; DTypeError naming `op` otherwise.
cudnnDataType_t cudnn_dtype(DType dtype, const char* op);

// Bytes an algorithm search may take as workspace on `device`: at most 256 MiB, and at most
// half of what can be had without evicting anything -- under the allocator's limit (or the
// GPU's free memory when there is none) plus the allocator's cached free bytes -- so that a
// search does not crowd out the activations it serves.
size_t search_workspace_budget(Device device);

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"  // legacy cuDNN API (see the top)

// Owners of cuDNN descriptors: created in the constructor, destroyed in the destructor (whose
// status is ignored: a destructor cannot throw, and destroying a valid descriptor only fails
// on a broken context, which the next checked call reports).
class TensorDescriptor {
 public:
  TensorDescriptor() { HR_CUDNN_CHECK(cudnnCreateTensorDescriptor(&desc_)); }
  ~TensorDescriptor() { (void)cudnnDestroyTensorDescriptor(desc_); }
  TensorDescriptor(const TensorDescriptor&) = delete;
  TensorDescriptor& operator=(const TensorDescriptor&) = delete;
  // A packed NCHW tensor.
  void set_nchw(cudnnDataType_t type, int n, int c, int h, int w) {
    HR_CUDNN_CHECK(cudnnSetTensor4dDescriptor(desc_, CUDNN_TENSOR_NCHW, type, n, c, h, w));
  }
  cudnnTensorDescriptor_t get() const { return desc_; }

 private:
  cudnnTensorDescriptor_t desc_ = nullptr;
};

class FilterDescriptor {
 public:
  FilterDescriptor() { HR_CUDNN_CHECK(cudnnCreateFilterDescriptor(&desc_)); }
  ~FilterDescriptor() { (void)cudnnDestroyFilterDescriptor(desc_); }
  FilterDescriptor(const FilterDescriptor&) = delete;
  FilterDescriptor& operator=(const FilterDescriptor&) = delete;
  // [out channels, in channels per group, kh, kw], packed NCHW.
  void set_nchw(cudnnDataType_t type, int k, int c, int h, int w) {
    HR_CUDNN_CHECK(cudnnSetFilter4dDescriptor(desc_, type, CUDNN_TENSOR_NCHW, k, c, h, w));
  }
  cudnnFilterDescriptor_t get() const { return desc_; }

 private:
  cudnnFilterDescriptor_t desc_ = nullptr;
};

class ConvolutionDescriptor {
 public:
  ConvolutionDescriptor() { HR_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&desc_)); }
  ~ConvolutionDescriptor() { (void)cudnnDestroyConvolutionDescriptor(desc_); }
  ConvolutionDescriptor(const ConvolutionDescriptor&) = delete;
  ConvolutionDescriptor& operator=(const ConvolutionDescriptor&) = delete;
  // Cross-correlation (what deep learning calls convolution), computing in `compute_type`.
  void set_2d(int pad_h, int pad_w, int stride_h, int stride_w, int dilation_h, int dilation_w, int groups,
              cudnnDataType_t compute_type) {
    HR_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(desc_, pad_h, pad_w, stride_h, stride_w, dilation_h, dilation_w,
                                                   CUDNN_CROSS_CORRELATION, compute_type));
    HR_CUDNN_CHECK(cudnnSetConvolutionGroupCount(desc_, groups));
  }
  void set_math_type(cudnnMathType_t math) { HR_CUDNN_CHECK(cudnnSetConvolutionMathType(desc_, math)); }
  cudnnConvolutionDescriptor_t get() const { return desc_; }

 private:
  cudnnConvolutionDescriptor_t desc_ = nullptr;
};

#pragma GCC diagnostic pop

}  // namespace headroom::cuda
