// Observability of the caching allocator: its stats, snapshot and event trace written out as
// files that people and tools can open.
//
// Everything here is a pure function of data the allocator already keeps (MemoryStats, the
// snapshot, the TraceEvent list), so it can be tested on a private allocator and works the same
// for any device. Output formats, and who reads them:
//   stats.json          memory_stats_json   the counters (names as in PyTorch's memory_stats())
//   snapshot.json       snapshot_json       segments and their blocks right now
//   trace.json          trace_json          every traced event, raw
//   trace.chrome.json   chrome_trace_json   counter tracks for Perfetto / chrome://tracing
//   timeline.html       memory_timeline_html  a page with an inline SVG chart: no script, no network
// No JSON library: a small writer (json_quote) escapes strings and replaces bad UTF-8, so any
// title or name is safe in JSON and, escaped again by html_escape, in HTML.
//
// Example (what the example programs do for --memory-report DIR):
//
//   caching_allocator(Device::cpu()).set_trace_enabled(true);
//   ... train ...
//   write_memory_report("report", Device::cpu(), "mlp, batch 256");
//   // open report/timeline.html in a browser, report/trace.chrome.json in ui.perfetto.dev
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/caching_allocator.h"

namespace headroom {

// `s` as a JSON string literal, quotes included. Escapes ", \ and control characters, and
// < > & as \u003c etc. (so the text is also safe inside HTML); invalid UTF-8 becomes U+FFFD.
std::string json_quote(std::string_view s);
// `s` with & < > " ' replaced by entities, for HTML text and attribute values.
std::string html_escape(std::string_view s);
// "850 ns", "12.3 us", "4.57 ms", "2.05 s" (three significant digits).
std::string format_duration_ns(int64_t ns);

std::string memory_stats_json(const MemoryStats& stats);
std::string snapshot_json(const std::vector<SegmentInfo>& segments, Device device);
std::string trace_json(const std::vector<TraceEvent>& events);
// Chrome trace event format: a counter track ("ph":"C") for allocated, reserved and each
// category, timestamps in microseconds, and an instant event per out-of-memory. `title` goes
// into the process name and "otherData".
std::string chrome_trace_json(const std::vector<TraceEvent>& events, Device device, const std::string& title = "");

// One moment of the timeline: bytes in use by category, allocated and reserved.
struct TimelinePoint {
  int64_t time_ns = 0;
  int64_t allocated = 0;
  int64_t reserved = 0;
  std::array<int64_t, kNumMemoryCategories> category{};
};

inline constexpr size_t kTimelineMaxPoints = 2000;

// The trace as at most `max_points` points (>= 3), in time order. Short traces keep every
// event. Longer ones are cut into equal time intervals and each interval is represented by its
// event of most allocated bytes (with the interval's most reserved bytes), so the peak is never
// lost; the first and the last event are kept too, so the time range is exact.
std::vector<TimelinePoint> downsample_timeline(const std::vector<TraceEvent>& events,
                                               size_t max_points = kTimelineMaxPoints);

// A self-contained HTML page: memory over time stacked by category, the reserved line, the
// peak of allocated marked with its value and time, a legend with each category's peak in the
// trace, and a table of `stats`. The categories' areas and legend entries and the peak marker
// have stable ids, classes and data- attributes (Note [timeline hooks] in memory_report.cpp).
std::string memory_timeline_html(const std::vector<TraceEvent>& events, const MemoryStats& stats, Device device,
                                 const std::string& title);

// Writes stats.json, snapshot.json, trace.json, trace.chrome.json and timeline.html for the
// caching allocator of `device` into `dir` (created if needed); throws IOError naming the path
// that could not be created or written. The trace is empty unless set_trace_enabled(true) was
// called on that allocator.
// When the pinned host pool (Note [host pool] in engine/allocator.h) was used, its five files
// go to `dir`/host_pool as well.
void write_memory_report(const std::string& dir, Device device, const std::string& title);
// The five files of one allocator (a device's, the host pool, a meta scope's).
void write_memory_report(const std::string& dir, CachingAllocator& allocator, const std::string& title);

// Several devices (a model placed over cpu:0..N-1 or GPUs): each device's five files in a folder
// of its own under `dir` ("cpu", "cpu_1", "cuda_0": the device's name with ':' as '_'), and
// `dir`/index.html, one row per device -- peak allocated and reserved, each category's peak, a
// link to its timeline -- with the largest peak over the smallest, and a row for the pinned host
// pool (folder host_pool) when it was used. The same errors.
void write_memory_report(const std::string& dir, const std::vector<Device>& devices, const std::string& title);

}  // namespace headroom
