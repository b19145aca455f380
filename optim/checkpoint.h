// Training checkpoints: the whole state of a training run in one file, so that a run killed at
// any point resumes from its last checkpoint and ends bit for bit where an uninterrupted run
// would.
//
// What is saved is what decides the rest of the run: the model's parameters and buffers, the
// optimizer's state and lr, the loss scaler's scale and counters, the batch splitter's learned
// micro-batch size and counters, the lr schedule's step, the global RNG (seed and offset: the
// next dropout mask), and the loop's position -- optimizer steps done, the epoch, the next batch
// and the epoch's data order -- plus any tensors the program adds (`extra`).
//
// The file is a state-dict file (nn/serialize.h: checksummed, read with byte offsets in every
// error) whose keys say what each tensor is: "model/<name>", "optim/<key>", "scaler/<key>",
// "splitter/<counter>", "schedule/step", "rng/seed", "rng/offset", "loop/step", "loop/epoch",
// "loop/next_batch", "loop/data_order", "extra/<name>", and "checkpoint/version". Saving writes a
// temporary file, syncs it and renames it over the old checkpoint (save_tensors), so a kill
// during the save leaves the previous checkpoint whole.
//
// Loading is all-or-nothing (Note [all-or-nothing step] in optimizer.h): every entry is checked
// against the objects it goes into -- names, shapes, dtypes, which parts exist -- before any of
// them changes; a file from another model or another configuration (a scaler saved but none
// given, a different data set size) is refused with a ValueError that says which entry.
//
//   optim::TrainingState st{.model = model.get(), .optimizer = &opt, .splitter = &splitter};
//   if (resume) { optim::load_training_checkpoint(path, st); loader.resume(st.epoch, st.data_order, st.next_batch); }
//   ... after each optimizer step: ++st.step; if (st.step % every == 0) { fill the loop fields; save(path, st); }
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace headroom::nn {
class Module;
}

namespace headroom::optim {

class Optimizer;
class GradScaler;
class BatchSplitter;
class LRScheduler;

inline constexpr int64_t kTrainingCheckpointVersion = 1;

struct TrainingState {
  // The objects whose state is saved and restored; model and optimizer are required, the rest
  // optional (a file saved with one must be loaded with one).
  nn::Module* model = nullptr;
  Optimizer* optimizer = nullptr;
  GradScaler* scaler = nullptr;
  BatchSplitter* splitter = nullptr;
  LRScheduler* schedule = nullptr;
  bool rng = true;  // the global generator (engine/rng.h)
  // The loop's position, kept by the caller: set before saving, read after loading.
  int64_t step = 0;                       // optimizer steps done
  int64_t epoch = 0;                      // the epoch in progress (0-based)
  int64_t next_batch = 0;                 // the first batch of that epoch not yet trained on
  std::vector<int64_t> data_order{};      // the epoch's sample order (empty when not shuffled)
  std::map<std::string, Tensor> extra{};  // anything else the program keeps; loaded as saved
};

// Throws ValueError for a state without model or optimizer, IOError naming the file when it
// cannot be written (the previous checkpoint at path is then left as it was).
void save_training_checkpoint(const std::string& path, const TrainingState& state);

// Reads path (IOError naming the file and byte offset for a damaged one) and restores `state`
// from it, or throws ValueError naming the entry that does not fit and changes nothing.
void load_training_checkpoint(const std::string& path, TrainingState& state);

// The two halves, for tools and the fuzz target: the tensors save writes, and the restore from
// tensors already read (`source` names them in errors).
std::map<std::string, Tensor> training_checkpoint_tensors(const TrainingState& state);
void restore_training_state(const std::map<std::string, Tensor>& tensors, TrainingState& state,
                            const std::string& source);

}  // namespace headroom::optim
