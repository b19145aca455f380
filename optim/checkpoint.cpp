// Training checkpoints (checkpoint.h). Saving gathers every part's state under its prefix and
// hands the map to save_tensors (atomic: temporary file, fsync, rename). Loading splits the map
// back by prefix, checks each part against its object with the checks that cannot change
// anything, then restores the parts that allocate (the optimizer's state, which is all-or-nothing
// itself) before those that only write in place (model, scaler, splitter, schedule, RNG).
#include "optim/checkpoint.h"

#include <algorithm>
#include <set>

#include "engine/rng.h"
#include "nn/module.h"
#include "nn/serialize.h"
#include "optim/batch_split.h"
#include "optim/grad_scaler.h"
#include "optim/lr_scheduler.h"
#include "optim/optimizer.h"

namespace headroom::optim {

namespace {

Tensor i64_scalar(int64_t v) { return Tensor::from_vector(std::vector<int64_t>{v}, {}, DType::i64); }
Tensor u64_scalar(uint64_t v) { return i64_scalar(static_cast<int64_t>(v)); }  // the bits, as i64

// The entries under "<prefix>/", without the prefix.
std::map<std::string, Tensor> part(const std::map<std::string, Tensor>& all, const std::string& prefix) {
  std::map<std::string, Tensor> out;
  const std::string p = prefix + "/";
  for (auto it = all.lower_bound(p); it != all.end() && it->first.compare(0, p.size(), p) == 0; ++it)
    out[it->first.substr(p.size())] = it->second;
  return out;
}

// An i64 scalar entry, or ValueError naming it.
int64_t get_i64(const std::map<std::string, Tensor>& all, const std::string& key, const std::string& source) {
  auto it = all.find(key);
  HR_CHECK(it != all.end(), ValueError, source, ": no entry '", key, "'");
  const Tensor& t = it->second;
  HR_CHECK(t.defined() && t.dtype() == DType::i64 && t.dim() == 0, ValueError, source, ": '", key,
           "' must be an i64 scalar, got ", t.defined() ? describe(t) : std::string("an undefined tensor"));
  return t.item<int64_t>();
}

void check(bool ok, const std::string& source, const std::string& what) {
  if (!ok) throw ValueError(source + ": " + what);
}

}  // namespace

std::map<std::string, Tensor> training_checkpoint_tensors(const TrainingState& st) {
  HR_CHECK(st.model && st.optimizer, ValueError, "save_training_checkpoint: the state needs a model and an optimizer");
  std::map<std::string, Tensor> out;
  out["checkpoint/version"] = i64_scalar(kTrainingCheckpointVersion);
  for (auto& [k, t] : st.model->state_dict()) out["model/" + k] = t;
  for (auto& [k, t] : st.optimizer->state_dict()) out["optim/" + k] = t;
  if (st.scaler)
    for (auto& [k, t] : st.scaler->state_dict()) out["scaler/" + k] = t;
  if (st.splitter) {
    const BatchSplitter::Learned l = st.splitter->learned();
    out["splitter/micro_batch_size"] = i64_scalar(l.micro_batch_size);
    out["splitter/steps"] = i64_scalar(l.steps);
    out["splitter/clean_steps"] = i64_scalar(l.clean_steps);
    out["splitter/grow_wait"] = i64_scalar(l.grow_wait);
    out["splitter/ooms_recovered"] = i64_scalar(l.ooms_recovered);
    out["splitter/grow_attempts"] = i64_scalar(l.grow_attempts);
    out["splitter/grow_failures"] = i64_scalar(l.grow_failures);
  }
  if (st.schedule) out["schedule/step"] = i64_scalar(st.schedule->last_step());
  if (st.rng) {
    out["rng/seed"] = u64_scalar(default_generator().seed());
    out["rng/offset"] = u64_scalar(default_generator().offset());
  }
  out["loop/step"] = i64_scalar(st.step);
  out["loop/epoch"] = i64_scalar(st.epoch);
  out["loop/next_batch"] = i64_scalar(st.next_batch);
  out["loop/data_order"] = Tensor::from_vector(st.data_order, {static_cast<int64_t>(st.data_order.size())}, DType::i64);
  for (auto& [k, t] : st.extra) out["extra/" + k] = t;
  return out;
}

void save_training_checkpoint(const std::string& path, const TrainingState& state) {
  nn::save_tensors(training_checkpoint_tensors(state), path);
}

void restore_training_state(const std::map<std::string, Tensor>& all, TrainingState& st, const std::string& source) {
  HR_CHECK(st.model && st.optimizer, ValueError, "load_training_checkpoint: the state needs a model and an optimizer");
  // ---- check everything; nothing changes in this half ----
  static const std::set<std::string> kPrefixes = {"checkpoint", "model", "optim", "scaler", "splitter",
                                                  "schedule",   "rng",   "loop",  "extra"};
  for (const auto& [k, t] : all) {
    const size_t slash = k.find('/');
    check(slash != std::string::npos && kPrefixes.count(k.substr(0, slash)), source,
          "entry '" + k +
              "' belongs to no part of a training checkpoint (is this a model's state dict? load it "
              "with Module::load)");
  }
  const int64_t version = get_i64(all, "checkpoint/version", source);
  check(version == kTrainingCheckpointVersion, source,
        str_cat("training checkpoint version ", version, ", this build reads version ", kTrainingCheckpointVersion));
  const std::map<std::string, Tensor> model = part(all, "model"), optim = part(all, "optim"),
                                      scaler = part(all, "scaler"), splitter = part(all, "splitter"),
                                      extra = part(all, "extra");
  auto present = [&](const char* what, bool in_file, bool given) {
    check(in_file == given, source,
          str_cat(in_file ? "the checkpoint has " : "the checkpoint has no ", what,
                  given ? " but one was given to restore" : " state but none was given to restore it into",
                  " -- was it saved with other options (precision, micro-batches, schedule)?"));
  };
  present("loss scaler", !scaler.empty(), st.scaler != nullptr);
  present("batch splitter", !splitter.empty(), st.splitter != nullptr);
  present("lr schedule", all.count("schedule/step") > 0, st.schedule != nullptr);
  present("RNG", all.count("rng/seed") > 0, st.rng);

  // The model: names, shapes and dtypes, as Module::load_state_dict checks them before writing.
  {
    std::map<std::string, Tensor> own = st.model->state_dict();
    for (const auto& [k, t] : own) {
      auto it = model.find(k);
      check(it != model.end(), source, "no entry 'model/" + k + "' for the model's " + describe(t));
      check(it->second.defined() && it->second.shape() == t.shape() && it->second.dtype() == t.dtype(), source,
            "'model/" + k + "' is " + (it->second.defined() ? describe(it->second) : "undefined") +
                " but the model's is " + describe(t));
    }
    for (const auto& [k, t] : model) check(own.count(k) > 0, source, "'model/" + k + "' names nothing in the model");
  }
  BatchSplitter::Learned learned;
  if (st.splitter) {
    learned.micro_batch_size = get_i64(all, "splitter/micro_batch_size", source);
    learned.steps = get_i64(all, "splitter/steps", source);
    learned.clean_steps = get_i64(all, "splitter/clean_steps", source);
    learned.grow_wait = get_i64(all, "splitter/grow_wait", source);
    learned.ooms_recovered = get_i64(all, "splitter/ooms_recovered", source);
    learned.grow_attempts = get_i64(all, "splitter/grow_attempts", source);
    learned.grow_failures = get_i64(all, "splitter/grow_failures", source);
    check(splitter.size() == 7, source, "the splitter part has entries besides its 7 counters");
    check(learned.micro_batch_size >= 0 && learned.steps >= 0 && learned.clean_steps >= 0 && learned.grow_wait >= 0 &&
              learned.ooms_recovered >= 0 && learned.grow_attempts >= 0 && learned.grow_failures >= 0 &&
              learned.grow_failures <= learned.grow_attempts,
          source, "the splitter's counters are negative or inconsistent");
  }
  const int64_t schedule_step = st.schedule ? get_i64(all, "schedule/step", source) : 0;
  check(schedule_step >= 0, source, str_cat("'schedule/step' is ", schedule_step));
  const int64_t seed = st.rng ? get_i64(all, "rng/seed", source) : 0;
  const int64_t offset = st.rng ? get_i64(all, "rng/offset", source) : 0;
  const int64_t step = get_i64(all, "loop/step", source);
  const int64_t epoch = get_i64(all, "loop/epoch", source);
  const int64_t next_batch = get_i64(all, "loop/next_batch", source);
  check(step >= 0 && epoch >= 0 && next_batch >= 0, source,
        str_cat("the loop position is negative (step ", step, ", epoch ", epoch, ", next batch ", next_batch, ")"));
  auto order_it = all.find("loop/data_order");
  check(order_it != all.end() && order_it->second.defined() && order_it->second.dtype() == DType::i64 &&
            order_it->second.dim() == 1,
        source, "no 1-d i64 entry 'loop/data_order'");
  std::vector<int64_t> order = order_it->second.to_vector<int64_t>();
  {  // a permutation of 0..n-1
    std::vector<bool> seen(order.size(), false);
    for (int64_t i : order) {
      check(i >= 0 && i < static_cast<int64_t>(order.size()) && !seen[static_cast<size_t>(i)], source,
            str_cat("'loop/data_order' is not a permutation of 0..", order.size() - 1, " (holds ", i, ")"));
      seen[static_cast<size_t>(i)] = true;
    }
  }
  // The scaler and the optimizer check their own entries in load_state_dict before changing
  // anything; the scaler's load cannot allocate, so it is checked first by loading it into a
  // copy of its options.
  // Their errors gain the file's name.
  auto named = [&](const auto& load) {
    try {
      load();
    } catch (const ValueError& e) {
      throw ValueError(source + ": " + e.what());
    }
  };
  if (st.scaler) {
    named([&] {
      GradScaler probe(st.scaler->options());
      probe.load_state_dict(scaler);
    });
  }

  // ---- restore: first the part that allocates (all-or-nothing), then in-place writes ----
  named([&] { st.optimizer->load_state_dict(optim); });
  st.model->load_state_dict(model);
  if (st.scaler) st.scaler->load_state_dict(scaler);
  if (st.splitter) st.splitter->restore(learned);
  if (st.schedule) st.schedule->restore(schedule_step);
  // The schedule wrote lr_at(step); the optimizer's saved lr is the one that was in use.
  if (st.schedule) st.optimizer->set_lr(optim.at("lr").item<double>());
  if (st.rng) {
    default_generator().manual_seed(static_cast<uint64_t>(seed));
    default_generator().set_offset(static_cast<uint64_t>(offset));
  }
  st.step = step;
  st.epoch = epoch;
  st.next_batch = next_batch;
  st.data_order = std::move(order);
  st.extra = extra;
}

void load_training_checkpoint(const std::string& path, TrainingState& state) {
  restore_training_state(nn::load_tensors(path), state, "load_training_checkpoint: '" + path + "'");
}

}  // namespace headroom::optim
