// A leak check for training loops: memory that grows from step to step without a reason, named
// by the op that allocated it.
//
//   LeakCheck check(Device::cpu());            // on from here: allocations remember their op
//   for (int step = 0; step < steps; ++step) {
//     train_step();
//     LeakReport r = check.step();             // at the step boundary
//     if (r.leaking) std::cerr << r.str();     // once memory grew `patience` steps in a row
//   }
//
// Note [leak check]: at each step boundary the check reads the device allocator's live blocks
// (snapshot: size, category, the allocation's serial number and, Note [allocation sites], the op
// whose output it holds) and the bytes allocated. A training loop in its steady state ends every
// step with what it began with: the step's activations freed, this step's gradients and
// optimizer state in the place of the last one's. So after `warmup_steps` (the first steps make
// the optimizer state and fill caches) the check counts the steps whose boundary holds more bytes
// than the one before; `patience` of them in a row is a leak. The report lists what is still alive
// from the steps of that run but the last -- allocations the loop made and never let go -- by
// category and op, most bytes first: "activation, 3.00 MiB in 96 blocks from linear". What the
// last step made is left out, since a step's own survivors (its gradients) are alive until the
// next one replaces them.
//
// Overhead (Note [allocation sites]): autograd names each op's output on its block, one lookup
// under the allocator's lock per recorded op, only while a check is open; each step() copies the
// allocator's snapshot. docs/leak-check.md has the measured cost.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/caching_allocator.h"
#include "engine/device.h"

namespace headroom {

struct LeakCheckOptions {
  int warmup_steps = 2;          // boundaries not judged at the start
  int patience = 3;              // growing steps in a row that make a leak
  int64_t min_growth_bytes = 1;  // a step that grows less is not growing
};

struct LeakGroup {
  MemoryCategory category = MemoryCategory::temporary;
  std::string site;  // the op, or "(no autograd op)" for a block no op named
  int64_t bytes = 0;
  int64_t blocks = 0;
};

struct LeakReport {
  bool leaking = false;
  int64_t step = 0;               // boundaries seen so far
  int growing_steps = 0;          // the run of growing steps that ends here
  int64_t growth_bytes = 0;       // allocated bytes now minus at the run's start
  int64_t allocated_bytes = 0;    // now
  std::vector<LeakGroup> groups;  // when leaking: what the run's steps left alive, most bytes first
  // "leak check: memory grew 3 steps in a row, by 3.00 MiB (now 12.40 MiB) on cpu; still alive
  // from those steps: activation 3.00 MiB in 96 blocks from linear; ..." -- or "" when not leaking.
  std::string str() const;
};

class LeakCheck {
 public:
  // Turns on site recording in `device`'s caching allocator, and takes the first boundary now.
  explicit LeakCheck(Device device, LeakCheckOptions options = {});
  ~LeakCheck();
  LeakCheck(const LeakCheck&) = delete;
  LeakCheck& operator=(const LeakCheck&) = delete;

  // A step boundary (Note [leak check]).
  LeakReport step();
  const LeakCheckOptions& options() const { return options_; }

 private:
  Device device_;
  LeakCheckOptions options_;
  CachingAllocator& allocator_;
  bool was_recording_;
  int64_t steps_ = 0;
  int growing_ = 0;
  int64_t last_allocated_ = 0;
  int64_t run_start_allocated_ = 0;
  uint64_t run_start_serial_ = 0;  // allocations from here on belong to the growing run
  uint64_t last_serial_ = 0;       // the serial at the previous boundary
};

}  // namespace headroom
