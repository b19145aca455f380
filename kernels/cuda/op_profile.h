// GPU time by backend op: a profile of what a training step spends on the device, from inside
// the engine (no external profiler needed: Nsight Systems is not on every GPU machine).
//
//   cuda::start_op_profile();
//   step();
//   for (const cuda::OpTime& t : cuda::stop_op_profile()) ...   // e.g. {"matmul", 97, 11.2 ms}
//
// Note [op profile]: every CUDA backend op opens one KernelScope (cuda_scope.h); while a profile
// runs, the outermost scope of each op records a timing event on its stream when it opens and
// another when it closes, so the pair brackets exactly the kernels and library calls that op
// queued. The scope is named by the op (the backend method; elementwise and reduction ops by
// their op, "binary add"). stop_op_profile synchronizes, reads every pair and sums them by name.
// What the pairs do not cover is time the GPU waited for the host (launch overhead, host
// syncs): a step's wall time minus the ops' sum. Events cost a few microseconds of host time
// each, so profile one step, not the timed ones.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/backend.h"

namespace headroom::cuda {

using OpTime = headroom::OpTime;  // engine/backend.h

// Starts recording (clearing an earlier profile). Process-wide; ops on any thread and device.
void start_op_profile();
// Stops, waits for the recorded ops to finish, and returns their time by name, most first.
std::vector<OpTime> stop_op_profile();
bool op_profile_running();

// "kind op" ("binary add") as a name that lives as long as the process, for a KernelScope; just
// `kind` while no profile runs (no string work per op then).
const char* profile_name(const char* kind, const char* op);

}  // namespace headroom::cuda
