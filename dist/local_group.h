// In-process groups: the several devices of one process as the ranks of a ProcessGroup, one
// thread per device (Note [cpu devices]). They are the only collectives headroom writes itself:
// everything across processes goes through MPI or NCCL.
//
//   dist::run_on_devices({Device::cpu(0), Device::cpu(1)}, [&](int rank, dist::ProcessGroup& g) {
//     Tensor t = Tensor::full({4}, rank + 1, Device::cpu(rank));
//     g.all_reduce(t)->wait();   // 3 on both devices
//   });
//
// Note [in-process groups]: each rank has its own ProcessGroup object over a shared hub. A
// collective is matched by its number (every rank calls the group's collectives in the same
// order, Note [collective order]); the last rank to arrive runs it for all, in rank order --
// so a reduction adds the ranks' values in the same order every time and the result is the
// same on every run -- and finishes every rank's Work. Works of ranks that arrived earlier wait
// until then. The ranks' tensors are on cpu devices, whose memory is the host's, so the hub
// reads and writes them directly; cuda devices are not supported yet (a DeviceError says so).
// A rank whose thread throws breaks the hub: every pending and later collective fails with a
// CommunicationError naming that rank, instead of waiting for it; run_on_groups mends the groups
// once every rank's thread has ended. send/recv are not supported
// (the pipeline has its own channels).
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "dist/process_group.h"

namespace headroom::dist {

// One ProcessGroup per device, rank r on devices[r]. DeviceError for a device that is not a cpu
// device, or a device listed twice.
std::vector<std::unique_ptr<ProcessGroup>> make_local_groups(const std::vector<Device>& devices);

// Runs fn(rank, group) on one thread per device (rank r's thread on devices[r], in the caller's
// grad mode and MetaScope: Note [meta in worker threads]),
// and waits for all. When a rank throws, the group breaks so that no other rank waits for it,
// and the first exception is rethrown once every thread has ended.
void run_on_devices(const std::vector<Device>& devices, const std::function<void(int rank, ProcessGroup& group)>& fn);
// The same over groups that outlive one call (modules keep a reference to their group): one
// thread per rank each call. A rank that throws breaks the groups for that call, so no other
// rank waits for it; once every thread has ended they are mended, and the next call works
// (the failed call's collectives are dropped; the first exception is rethrown).
void run_on_groups(const std::vector<std::unique_ptr<ProcessGroup>>& groups,
                   const std::function<void(int rank, ProcessGroup& group)>& fn);

}  // namespace headroom::dist
