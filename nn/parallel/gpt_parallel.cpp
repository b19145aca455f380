// GPT stages and the tensor-parallel GPT (nn/parallel/gpt_parallel.h).
#include "nn/parallel/gpt_parallel.h"

#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "nn/chunked_cross_entropy.h"
#include "nn/checkpoint.h"

namespace headroom::nn {

namespace {
Tensor gpt_loss(const GPTConfig& config, const Tensor& hidden, const Tensor& head, const Tensor& targets) {
  HR_CHECK(
      hidden.dim() == 3 && targets.dim() == 2 && hidden.size(0) == targets.size(0) && hidden.size(1) == targets.size(1),
      ShapeError, "GPT loss: hidden ", shape_str(hidden.shape()), " and targets ", shape_str(targets.shape()),
      " must be [B, T, C] and [B, T]");
  const int64_t n = hidden.size(0) * hidden.size(1);
  Tensor rows = hidden.reshape({n, config.n_embd});
  Tensor t = targets.reshape({n});
  if (config.chunked_loss) return chunked_cross_entropy(rows, head, t, config.loss_chunk_rows);
  return cross_entropy(linear(rows, head, Tensor()), t);
}

Tensor embed(Embedding& wte, Embedding& wpe, const GPTConfig& config, const Tensor& idx, const char* who) {
  HR_CHECK(idx.dim() == 2 && !is_floating(idx.dtype()), ShapeError, who,
           ": the first stage takes [B, T] integer tokens, got ", shape_str(idx.shape()), " ", dtype_name(idx.dtype()));
  HR_CHECK(idx.size(1) <= config.block_size, ValueError, who, ": sequence of ", idx.size(1),
           " tokens is longer than block_size ", config.block_size);
  Tensor pos = Tensor::arange(static_cast<double>(idx.size(1)), TensorOptions().dtype(DType::i64).device(idx.device()));
  return wte.forward(idx) + wpe.forward(pos);
}
// The stage's blocks under their index in the whole model ("h.2", "h.3"), so that a stage's
// parameter names are the unsplit GPT's.
class BlockRange final : public Module {
 public:
  Tensor forward(const Tensor& x) override { return x; }
  std::string name() const override { return "BlockRange"; }
  void add(size_t index, const std::shared_ptr<Block>& b) { register_module(std::to_string(index), b); }
};
}  // namespace

std::vector<std::shared_ptr<GPTStage>> GPTStage::split(GPT& model, const std::vector<Device>& devices) {
  const int64_t k = static_cast<int64_t>(devices.size());
  const int64_t layers = static_cast<int64_t>(model.blocks.size());
  HR_CHECK(k >= 1, ValueError, "GPTStage::split: no devices");
  HR_CHECK(k <= layers, ValueError, "GPTStage::split: ", k, " stages for ", layers,
           " blocks (each stage needs a block at least)");
  HR_CHECK(model.config.dropout == 0.0, ValueError,
           "GPTStage::split: dropout must be 0 (the stages' threads would draw masks in an order they decide)");
  std::vector<std::shared_ptr<GPTStage>> stages;
  int64_t next = 0;
  for (int64_t s = 0; s < k; ++s) {
    auto st = std::make_shared<GPTStage>();
    st->config = model.config;
    st->device = devices[static_cast<size_t>(s)];
    if (s == 0) {
      st->wte = st->register_module("wte", model.wte);
      st->wpe = st->register_module("wpe", model.wpe);
    }
    const int64_t count = layers / k + (s < layers % k ? 1 : 0);
    st->first_block = static_cast<size_t>(next);
    auto range = st->register_module("h", std::make_shared<BlockRange>());
    for (int64_t b = 0; b < count; ++b, ++next) {
      st->blocks.push_back(model.blocks[static_cast<size_t>(next)]);
      range->add(static_cast<size_t>(next), st->blocks.back());
    }
    if (s == k - 1) {
      st->ln_f = st->register_module("ln_f", model.ln_f);
      if (k > 1) {  // Note [tied weights across stages]
        NoGradGuard no_grad;
        st->head = model.wte->weight.detach().to(st->device).clone();
        st->register_parameter("head", &st->head);
      }
    }
    st->to(st->device);
    stages.push_back(st);
  }
  return stages;
}

std::vector<PipelineStage> GPTStage::pipeline_stages(const std::vector<std::shared_ptr<GPTStage>>& stages,
                                                     bool checkpoint) {
  std::vector<PipelineStage> out;
  for (const auto& s : stages) out.push_back({s, s->device, checkpoint});
  return out;
}

Pipeline::LossFn GPTStage::loss_fn(const std::vector<std::shared_ptr<GPTStage>>& stages) {
  HR_CHECK(!stages.empty(), ValueError, "GPTStage::loss_fn: no stages");
  std::shared_ptr<GPTStage> last = stages.back();
  return [last](const Tensor& hidden, const Tensor& targets) { return last->loss(hidden, targets); };
}

void GPTStage::tie_gradients(const std::vector<std::shared_ptr<GPTStage>>& stages) {
  if (stages.size() < 2) return;
  NoGradGuard no_grad;
  Tensor& a = stages.front()->wte->weight;
  Tensor& b = stages.back()->head;
  Tensor ga = a.grad(), gb = b.grad();
  if (!ga.defined() && !gb.defined()) return;
  Tensor sum_first =
      ga.defined() ? ga.clone() : Tensor::zeros(a.shape(), TensorOptions().dtype(a.dtype()).device(a.device()));
  if (gb.defined()) sum_first.add_(gb.to(a.device()));
  Tensor sum_last = sum_first.to(b.device());
  if (b.device() == a.device()) sum_last = sum_last.clone();
  a.set_grad(sum_first);
  b.set_grad(sum_last);
}

std::map<std::string, Tensor> GPTStage::state_dict_on(const std::vector<std::shared_ptr<GPTStage>>& stages,
                                                      Device device) {
  std::map<std::string, Tensor> out;
  NoGradGuard no_grad;
  for (const auto& st : stages)
    for (const auto& [name, t] : st->state_dict())
      if (name != "head") out[name] = t.to(device).clone();
  return out;
}

Tensor GPTStage::forward(const Tensor& x) {
  Tensor h = wte ? embed(*wte, *wpe, config, x, "GPTStage") : x;
  std::vector<std::shared_ptr<Module>> mods(blocks.begin(), blocks.end());
  h = run_checkpointed(mods, h, config.checkpoint);
  return ln_f ? ln_f->forward(h) : h;
}

Tensor GPTStage::loss(const Tensor& hidden, const Tensor& targets) {
  HR_CHECK(ln_f, ValueError, "GPTStage::loss: only the last stage has the head");
  return gpt_loss(config, hidden, head.defined() ? head : wte->weight, targets);
}

std::string GPTStage::name() const {
  return str_cat("GPTStage(", wte ? "embeddings, " : "", "blocks ", first_block, "..", first_block + blocks.size(),
                 ln_f ? ", head" : "", ")");
}

// ---- tensor parallelism ----

std::shared_ptr<TensorParallelGPT> TensorParallelGPT::from(const GPT& model, dist::ProcessGroup& group, Device device) {
  HR_CHECK(model.config.dropout == 0.0, ValueError,
           "TensorParallelGPT: dropout must be 0 (each rank would draw its own masks)");
  auto m = std::make_shared<TensorParallelGPT>();
  m->config = model.config;
  auto copy_embedding = [&](const Embedding& e) {
    auto c = std::make_shared<Embedding>(e.num_embeddings, e.embedding_dim);
    c->load_state_dict(e.state_dict());
    c->to(device);
    return c;
  };
  m->wte = m->register_module("wte", copy_embedding(*model.wte));
  m->wpe = m->register_module("wpe", copy_embedding(*model.wpe));
  auto h = m->register_module("h", std::make_shared<Sequential>());
  for (const auto& b : model.blocks) {
    m->blocks.push_back(TensorParallelBlock::from(*b, group, device));
    h->push_back(m->blocks.back());
  }
  auto ln = std::make_shared<LayerNorm>(model.ln_f->normalized_shape, model.ln_f->eps);
  ln->load_state_dict(model.ln_f->state_dict());
  ln->to(device);
  m->ln_f = m->register_module("ln_f", ln);
  return m;
}

Tensor TensorParallelGPT::hidden(const Tensor& idx) {
  Tensor h = embed(*wte, *wpe, config, idx, "TensorParallelGPT");
  std::vector<std::shared_ptr<Module>> mods(blocks.begin(), blocks.end());
  return ln_f->forward(run_checkpointed(mods, h, config.checkpoint));
}

std::map<std::string, Tensor> TensorParallelGPT::unsplit_state_dict(
    const std::vector<std::shared_ptr<TensorParallelGPT>>& ranks, Device device) {
  HR_CHECK(!ranks.empty(), ValueError, "TensorParallelGPT::unsplit_state_dict: no ranks");
  NoGradGuard no_grad;
  const TensorParallelGPT& r0 = *ranks[0];
  auto here = [&](const Tensor& t) { return t.to(device); };
  auto joined = [&](auto get, int64_t dim) {
    std::vector<Tensor> parts;
    for (const auto& r : ranks) parts.push_back(here(get(*r)));
    return cat(parts, dim);
  };
  std::map<std::string, Tensor> out;
  for (const auto& [name, t] : r0.state_dict()) {
    // The replicated tensors from rank 0; the sharded ones below.
    if (name.find(".attn.") == std::string::npos && name.find(".mlp.") == std::string::npos)
      out[name] = here(t).clone();
  }
  for (size_t i = 0; i < r0.blocks.size(); ++i) {
    const std::string b = str_cat("h.", i, ".");
    // c_attn: each rank's rows are its q | k | v parts; the whole is all q's | all k's | all v's.
    for (const char* field : {"weight", "bias"}) {
      const bool w = std::string(field) == "weight";
      if (!w && !r0.blocks[i]->attn->c_attn->bias.defined()) continue;
      std::vector<Tensor> parts;
      for (int64_t part = 0; part < 3; ++part)
        for (const auto& r : ranks) {
          const Tensor& t = w ? r->blocks[i]->attn->c_attn->weight : r->blocks[i]->attn->c_attn->bias;
          const int64_t local = t.size(0) / 3;
          parts.push_back(here(t.slice(0, part * local, (part + 1) * local)));
        }
      out[b + "attn.c_attn." + field] = cat(parts, 0);
    }
    out[b + "attn.c_proj.weight"] =
        joined([i](const TensorParallelGPT& r) { return r.blocks[i]->attn->c_proj->weight; }, 1);
    if (r0.blocks[i]->attn->c_proj->bias.defined())
      out[b + "attn.c_proj.bias"] = here(r0.blocks[i]->attn->c_proj->bias).clone();
    out[b + "mlp.c_fc.weight"] = joined([i](const TensorParallelGPT& r) { return r.blocks[i]->mlp->fc->weight; }, 0);
    if (r0.blocks[i]->mlp->fc->bias.defined())
      out[b + "mlp.c_fc.bias"] = joined([i](const TensorParallelGPT& r) { return r.blocks[i]->mlp->fc->bias; }, 0);
    out[b + "mlp.c_proj.weight"] =
        joined([i](const TensorParallelGPT& r) { return r.blocks[i]->mlp->proj->weight; }, 1);
    if (r0.blocks[i]->mlp->proj->bias.defined())
      out[b + "mlp.c_proj.bias"] = here(r0.blocks[i]->mlp->proj->bias).clone();
  }
  return out;
}

Tensor TensorParallelGPT::loss(const Tensor& idx, const Tensor& targets) {
  return gpt_loss(config, hidden(idx), wte->weight, targets);
}

}  // namespace headroom::nn
