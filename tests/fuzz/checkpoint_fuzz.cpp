// Fuzz target: the training-checkpoint reader (optim/checkpoint.h) -- the state-dict parser
// (load_tensors_from_buffer) and then restore_training_state into a small fixed training setup:
// a Linear(3, 2), SGD with momentum, a GradScaler, an automatic BatchSplitter and a StepLR, the
// objects make_corpus.py writes checkpoints for. Rules in fuzz_target.h, plus the checkpoint's
// own: a restore may refuse bytes with a ValueError naming the input (an entry that does not fit
// its object), and a refused restore must leave every object exactly as it was (Note
// [all-or-nothing step]); a successful one must have set what the file says.
// HEADROOM_FUZZ_VERBOSE=1 prints what each input came to (restored, or refused and why).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "engine/rng.h"
#include "fuzz_target.h"
#include "nn/layers/linear.h"
#include "nn/serialize.h"
#include "optim/optim.h"

namespace {

using namespace headroom;

// Every byte of the objects' state, for the all-or-nothing check.
std::string state_bytes(const nn::Module& model, const optim::Optimizer& opt, const optim::GradScaler& scaler,
                        const optim::BatchSplitter& splitter, const optim::LRScheduler& schedule) {
  std::string out;
  auto add = [&](const std::map<std::string, Tensor>& m) {
    for (const auto& [k, t] : m) {
      out += k;
      Tensor c = t.contiguous();
      out.append(static_cast<const char*>(c.raw_data()), c.nbytes());
    }
  };
  add(model.state_dict());
  add(opt.state_dict());
  add(scaler.state_dict());
  const optim::BatchSplitter::Learned l = splitter.learned();
  out.append(reinterpret_cast<const char*>(&l), sizeof l);
  const int64_t step = schedule.last_step();
  out.append(reinterpret_cast<const char*>(&step), sizeof step);
  const uint64_t rng[2] = {default_generator().seed(), default_generator().offset()};
  out.append(reinterpret_cast<const char*>(rng), sizeof rng);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  manual_seed(7);
  nn::Linear model(3, 2);
  optim::SGD opt(model.parameters(), 0.1, 0.9);
  optim::GradScaler scaler;
  optim::BatchSplitter splitter(opt, optim::BatchSplitter::kAuto, &model);
  optim::StepLR schedule(opt, 10, 0.5);
  optim::TrainingState st{
      .model = &model, .optimizer = &opt, .scaler = &scaler, .splitter = &splitter, .schedule = &schedule};
  const std::string before = state_bytes(model, opt, scaler, splitter, schedule);
  try {
    const auto tensors = nn::load_tensors_from_buffer(data, size, fuzz::kInputName);
    optim::restore_training_state(tensors, st, fuzz::kInputName);
    fuzz::fuzz_check(st.step >= 0 && st.epoch >= 0 && st.next_batch >= 0, "a restored loop position is >= 0");
    fuzz::fuzz_check(schedule.last_step() >= 0, "a restored schedule step is >= 0");
    if (std::getenv("HEADROOM_FUZZ_VERBOSE"))
      std::fprintf(stderr, "    restored: step %lld\n", static_cast<long long>(st.step));
  } catch (const OutOfMemoryError&) {
    fuzz::fuzz_check(state_bytes(model, opt, scaler, splitter, schedule) == before,
                     "a refused restore changes nothing");
  } catch (const IOError& e) {
    if (std::getenv("HEADROOM_FUZZ_VERBOSE")) std::fprintf(stderr, "    refused: %s\n", e.what());
    fuzz::fuzz_check(std::strstr(e.what(), fuzz::kInputName) != nullptr, "an IOError names the input");
    fuzz::fuzz_check(state_bytes(model, opt, scaler, splitter, schedule) == before,
                     "a refused restore changes nothing");
  } catch (const ValueError& e) {
    if (std::getenv("HEADROOM_FUZZ_VERBOSE")) std::fprintf(stderr, "    refused: %s\n", e.what());
    fuzz::fuzz_check(std::strstr(e.what(), fuzz::kInputName) != nullptr, "a ValueError names the input");
    fuzz::fuzz_check(state_bytes(model, opt, scaler, splitter, schedule) == before,
                     "a refused restore changes nothing");
  } catch (const Error& e) {
    std::fprintf(stderr, "fuzz finding: the checkpoint reader threw %s\n", e.what());
    std::abort();
  }
  return 0;
}
