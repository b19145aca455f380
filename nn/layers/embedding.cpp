// Embedding: N(0, 1) table, lookup through the functional op (which range-checks indices).
#include "nn/layers/embedding.h"

#include "autograd/functions.h"
#include "engine/memory.h"
#include "nn/init.h"

namespace headroom::nn {

Embedding::Embedding(int64_t num, int64_t dim, LayerOptions options) : num_embeddings(num), embedding_dim(dim) {
  HR_CHECK(num > 0 && dim > 0, ValueError, "Embedding: sizes must be positive, got num=", num, ", dim=", dim);
  const TensorOptions opts = options.tensor_options("Embedding");
  CategoryScope scope(MemoryCategory::parameter);
  weight = Tensor::empty({num, dim}, opts);
  init::normal_(weight, 0.0, 1.0);
  register_parameter("weight", &weight);
}

Tensor Embedding::forward(const Tensor& indices) {
  HR_CHECK(!is_floating(indices.dtype()), DTypeError, name(), ": indices must be an integer tensor, got ",
           describe(indices));
  return embedding(weight, indices);
}

std::string Embedding::name() const { return str_cat("Embedding(", num_embeddings, ", ", embedding_dim, ")"); }

}  // namespace headroom::nn
