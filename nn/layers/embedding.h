// Embedding: a lookup table weight [num, dim], initialised N(0, 1) like PyTorch's. Its weight
// can be shared with an output projection (tied embeddings): use linear(x, emb->weight, {}).
#pragma once

#include "nn/module.h"

namespace headroom::nn {

class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim, LayerOptions options = {});
  Tensor forward(const Tensor& indices) override;  // integer [...] -> [..., dim]
  std::string name() const override;

  int64_t num_embeddings, embedding_dim;
  Tensor weight;  // [num, dim]
};

}  // namespace headroom::nn
