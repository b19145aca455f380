// headroom-bench's results and the four ways it writes them: a Markdown table (stdout),
// results.json, results.csv and memory_vs_throughput.svg.
//
// results.json is the exchange format with bench/pytorch_reference.py, which writes the same
// fields, so that `pytorch_reference.py --compare headroom.json torch.json` can line the two up
// by preset. Schema (version 1):
//   { "schema": 1, "framework": "headroom", "device": "cuda:0", "device_name": "...",
//     "date": "2025-01-31T12:00:00Z", "steps": 10, "warmup_steps": 2,
//     "results": [ {
//       "preset", "framework", "mode" ("eager"; PyTorch: "eager" or "compile"), "model",
//       "description", "batch", "seq_len" (0 unless GPT), "items_per_step", "item_unit"
//       ("tokens" | "images"), "precision" ("f32" | "f16" | "bf16"), "precision_mode" ("pure" for
//       f32, "amp" for autocast; PyTorch likewise, or "pure" with --precision-mode pure), "technique" ("naive attention" | "fused attention" | "none", then ", K micro-batches",
//       ", checkpoint per block" | ", checkpoint per stage" | ", checkpoint sqrt(n) segments"),
//       "status" ("ok" | "oom" | "error"), "error" (message or ""), "oom_requested_bytes",
//       "parameters", "peak_allocated_bytes", "peak_reserved_bytes",
//       "peak_by_category": { "parameter": n, ... },
//       "step_time_ms", "step_time_ms_min", "step_time_ms_max", "items_per_second",
//       "final_loss" (null when not finite or not reached),
//       "allocator_stats": the allocator's whole MemoryStats as report/memory_report.h writes it
//                          (headroom only; the peak fields above are copied from it) } ],
//       "data_parallel": null, or for a data-parallel preset { "world_size", "zero_stage",
//         "bucket_cap_mib", "buckets", "communication_bytes", "communication_ms", "exposed_ms",
//         "hidden_fraction" } (per step; the peaks above are rank 0's),
//       "several_devices": null, or for a preset on several devices of one process { "pipeline_stages",
//         "schedule" ("gpipe" | "1f1b" | null), "micro_batches", "tensor_parallel", "replicas",
//         "bubble_fraction" (measured; null without stages), "ideal_bubble" ((K-1)/(M+K-1)),
//         "devices": [ { "device", "peak_allocated_bytes", "peak_reserved_bytes",
//         "peak_by_category" } ] } (the peaks above are the first device's),
//       "host_pool": null, or for an offload preset the pinned host pool's { "peak_allocated_bytes",
//         "peak_reserved_bytes", "peak_by_category" } over the timed steps,
//       "peak_rss_bytes", "start_rss_bytes": the process's resident-memory high-water mark over
//         the configuration (warm-up and timed steps; reset when it starts) and its resident
//         memory when it started -- the operating system's measure, the same for both engines
//         and the only one PyTorch has on the CPU (null where /proc does not tell) } ],
//     "checkpoint_overhead": [ {   ([] when no pair ran, see checkpoint_overheads)
//       "preset", "base", "step_time_ratio" (ckpt / base), "activation_peak_ratio" (base / ckpt),
//       "peak_allocated_ratio" (base / ckpt) } ] }   (PyTorch: also "mode"; its activation ratio is
//       null, having no categories, and on the CPU its peak ratio too)
// Numbers that were not measured (an OOM row's step time) are null.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "bench/bench_models.h"
#include "engine/caching_allocator.h"

namespace headroom::bench {

// One op's GPU time in a profiled step (kernels/cuda/op_profile.h).
struct OpProfileRow {
  std::string name;
  int64_t calls = 0;
  double ms = 0;
};

struct Result {
  Preset preset;
  std::string status = "ok";  // "ok", "oom", "error"
  std::string error;          // the first line of the exception's message
  int64_t oom_requested_bytes = 0;
  int64_t parameters = 0;
  bool measured = false;  // the timed steps completed (step time, items/s and loss are valid)
  MemoryStats stats;      // the allocator's, read after the timed steps (or at the failure)
  double step_ms = 0, step_ms_min = 0, step_ms_max = 0;
  double items_per_second = 0;
  double final_loss = 0;
  // --profile (cuda): one extra step's GPU time by op, and that step's time between events.
  std::vector<OpProfileRow> profile;
  double profile_step_ms = 0;
  // --predict: the same run inside a MetaScope first (Note [meta execution]): its allocator's
  // stats, how long the prediction took, and its status ("ok", "oom", "error: ...").
  bool predicted = false;
  std::string predict_status;
  MemoryStats predicted_stats;
  double predict_seconds = 0;
  // Data-parallel presets (Preset::ddp): the ranks, and per timed step (means) the time the
  // buckets' all-reduces (reduce-scatters) took and the part of it backward's end waited for
  // (nn::DDPSyncStats). stats above are this rank's (rank 0's) allocator: the bytes per rank.
  int world_size = 1;
  int64_t buckets = 0;
  int64_t communication_bytes = 0;  // gradient bytes reduced per step
  double communication_ms = 0, exposed_ms = 0;
  double hidden_fraction() const {
    return communication_ms > 0 ? std::max(0.0, 1.0 - exposed_ms / communication_ms) : 0.0;
  }

  // Several devices in one process (Preset::several_devices): each device's allocator stats in
  // device order (`stats` above is the first's), predicted likewise under --predict; and the
  // pipeline's idle share of the timed steps (mean of nn::PipelineStats::bubble_fraction).
  std::vector<std::pair<Device, MemoryStats>> device_stats, predicted_device_stats;
  double bubble_fraction = 0;
  // Offload presets (Preset::offload_*): the pinned host pool's stats over the timed steps
  // (Note [host pool]); all zero otherwise.
  MemoryStats host_stats;
  // The operating system's view (ProcessMemory): resident bytes when the configuration started
  // and their high-water mark over it; -1 where /proc does not tell.
  int64_t start_rss_bytes = -1, peak_rss_bytes = -1;

  int64_t peak_allocated() const { return stats.allocated_bytes.peak; }
  int64_t peak_reserved() const { return stats.reserved_bytes.peak; }
  int64_t peak_category(MemoryCategory c) const { return stats.category(c).peak; }
};

// The process's resident memory as Linux reports it (/proc/self/status VmRSS and VmHWM). The
// high-water mark can be reset (writing 5 to /proc/self/clear_refs), so each configuration gets
// its own peak. This counts everything the process holds -- libraries, the allocator's cache,
// the heap -- so it is the measure to compare with another framework's process, not a
// replacement for the allocator's categories. Returns -1 where the file or field is missing.
int64_t process_rss_bytes();
int64_t process_peak_rss_bytes();
bool reset_process_peak_rss();

struct RunInfo {
  std::string device;       // "cpu", "cuda:0"
  std::string device_name;  // "cpu, 2 threads", "NVIDIA H100 80GB HBM3"
  std::string date;         // ISO 8601, UTC
  int64_t steps = 0, warmup_steps = 0;
};

// --predict: predicted against measured peak allocated (to the byte, and per category) and
// peak reserved, one row per preset that both predicted and ran; `all_exact` false when any
// allocated peak differs or a reserved peak is off by more than 2%.
std::string prediction_table(const std::vector<Result>& results, bool* all_exact);

// What recompute checkpointing cost and bought: a -ckpt- preset against its base preset
// (Preset::checkpoint_base(), the same configuration without checkpointing). Only pairs that
// both ran to the end in this invocation: a ratio across runs would compare the machine's load
// as much as the technique.
struct CheckpointOverhead {
  const Result* ckpt = nullptr;
  const Result* base = nullptr;
  double step_time_ratio = 0;        // ckpt / base: above 1 is the recomputation's time
  double activation_peak_ratio = 0;  // base / ckpt: above 1 is the activation memory saved
  double peak_allocated_ratio = 0;   // base / ckpt, the whole step's peak
};
// In the order of the checkpointed results. The pointers point into `results`.
std::vector<CheckpointOverhead> checkpoint_overheads(const std::vector<Result>& results);

// The Markdown tables: one row per configuration, then peak allocated by category, then (when a
// -ckpt- preset ran) each checkpointed preset against its base.
std::string markdown_table(const std::vector<Result>& results);
std::string results_json(const std::vector<Result>& results, const RunInfo& info);
std::string results_csv(const std::vector<Result>& results, const RunInfo& info);
// Peak allocated (y) against items/s (x), one labelled point (<circle class="point">) per
// configuration that was measured; failed ones are listed under the plot. Axes are logarithmic
// where the values span more than a factor of 10.
std::string memory_throughput_svg(const std::vector<Result>& results, const RunInfo& info);

// The profiled steps' tables (results with a profile only; "" when none): per preset the `top`
// ops by GPU time with calls, ms and share of the step, the rest summed, and the step's time the
// ops do not cover (the GPU waiting for the host).
std::string profile_tables(const std::vector<Result>& results, size_t top = 20);

// Writes `text` to `path`; throws IOError naming the path.
void write_text_file(const std::string& path, const std::string& text);

}  // namespace headroom::bench
