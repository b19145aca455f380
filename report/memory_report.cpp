// The report writers. JSON goes through one small writer (JsonWriter) that tracks commas and
// indentation, so every output is well formed by construction; strings go through json_quote.
// The HTML timeline is built as text: an inline SVG whose stacked areas are step paths
// ("H x V y"), one path per category drawn from the top of the stack down, so each path only
// needs its upper edge and a trace of millions of events stays a page of a few hundred KiB
// after downsample_timeline.
#include "report/memory_report.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <concepts>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "engine/error.h"

namespace headroom {

namespace {

// Length of the valid UTF-8 sequence starting at s[i], or 0 if the bytes there are not one.
size_t utf8_length(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = byte(i);
  size_t len = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) len = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;  // no overlong forms
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  if (byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (size_t k = 2; k < len; ++k)
    if (byte(i + k) < 0x80 || byte(i + k) > 0xBF) return 0;
  return len;
}

template <typename T>
void append_int(std::string& out, T v) {
  char buf[24];
  auto res = std::to_chars(buf, buf + sizeof(buf), v);
  out.append(buf, res.ptr);
}

// Fixed-point text of `v` with `decimals` digits after the point ("-0.0" is written as "0.0").
std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  std::string s = buf;
  if (s[0] == '-' && s.find_first_not_of("-0.") == std::string::npos) s.erase(0, 1);
  return s;
}

// Writes JSON text: containers and keys in order, commas and (optionally) line breaks are its
// business. Containers nested less than `pretty_depth` deep put each element on its own line.
class JsonWriter {
 public:
  explicit JsonWriter(int pretty_depth = 0) : pretty_depth_(pretty_depth) {}

  JsonWriter& begin_object() { return open('{'); }
  JsonWriter& end_object() { return close('}'); }
  JsonWriter& begin_array() { return open('['); }
  JsonWriter& end_array() { return close(']'); }
  JsonWriter& key(std::string_view k) {
    separate();
    out_ += json_quote(k);
    out_ += ':';
    after_key_ = true;
    return *this;
  }
  template <typename T>
  requires std::integral<T> JsonWriter& value(T v) {
    separate();
    if constexpr (std::is_same_v<T, bool>) out_ += v ? "true" : "false";
    else append_int(out_, v);
    return *this;
  }
  // Finite doubles with `decimals` digits after the point; others (inf, nan) as null.
  JsonWriter& value(double v, int decimals) {
    separate();
    out_ += std::isfinite(v) ? fixed(v, decimals) : "null";
    return *this;
  }
  JsonWriter& value(std::string_view s) {
    separate();
    out_ += json_quote(s);
    return *this;
  }
  JsonWriter& value(const char* s) { return value(std::string_view(s)); }
  JsonWriter& value(const std::string& s) { return value(std::string_view(s)); }
  JsonWriter& null() {
    separate();
    out_ += "null";
    return *this;
  }
  template <typename T>
  JsonWriter& field(std::string_view k, const T& v) {
    key(k);
    return value(v);
  }
  void reserve(size_t n) { out_.reserve(n); }
  std::string take() {
    HR_CHECK(open_.empty() && !after_key_, Error, "JsonWriter: ", open_.size(), " containers left open");
    out_ += '\n';
    return std::move(out_);
  }

 private:
  struct Open {
    bool empty = true;
  };
  void line_break(size_t depth) {
    if (static_cast<int>(depth) <= pretty_depth_) {
      out_ += '\n';
      out_.append(2 * depth, ' ');
    }
  }
  void separate() {
    if (after_key_) {
      after_key_ = false;
      return;
    }
    if (open_.empty()) return;
    if (!open_.back().empty) out_ += ',';
    open_.back().empty = false;
    line_break(open_.size());
  }
  JsonWriter& open(char c) {
    separate();
    out_ += c;
    open_.push_back({});
    return *this;
  }
  JsonWriter& close(char c) {
    HR_CHECK(!open_.empty() && !after_key_, Error, "JsonWriter: unbalanced '", c, "'");
    const bool was_empty = open_.back().empty;
    const bool broken = static_cast<int>(open_.size()) <= pretty_depth_;  // its elements had lines
    open_.pop_back();
    if (!was_empty && broken) line_break(open_.size());
    out_ += c;
    return *this;
  }

  std::string out_;
  std::vector<Open> open_;
  bool after_key_ = false;
  int pretty_depth_;
};

void write_stat(JsonWriter& w, std::string_view name, const Stat& s) {
  w.key(name).begin_object();
  w.field("current", s.current).field("peak", s.peak).field("allocated", s.allocated).field("freed", s.freed);
  w.end_object();
}

MemoryCategory category_at(int c) { return static_cast<MemoryCategory>(c); }

}  // namespace

// ---- text helpers ----

std::string json_quote(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out += '"';
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      size_t len = utf8_length(s, i);
      if (len == 0) {
        out += "\\ufffd";
        ++i;
      } else {
        out.append(s.substr(i, len));
        i += len;
      }
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '<': out += "\\u003c"; break;
      case '>': out += "\\u003e"; break;
      case '&': out += "\\u0026"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
    ++i;
  }
  out += '"';
  return out;
}

std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string format_duration_ns(int64_t ns) {
  const double a = std::abs(static_cast<double>(ns));
  if (a < 1e3) return str_cat(ns, " ns");
  double scale = 1e3;
  const char* unit = "µs";
  if (a >= 1e9) {
    scale = 1e9;
    unit = "s";
  } else if (a >= 1e6) {
    scale = 1e6;
    unit = "ms";
  }
  const double x = static_cast<double>(ns) / scale;
  const double ax = std::abs(x);
  return fixed(x, ax >= 100 ? 0 : ax >= 10 ? 1 : 2) + " " + unit;
}

// ---- JSON documents ----

std::string memory_stats_json(const MemoryStats& s) {
  JsonWriter w(/*pretty_depth=*/3);
  w.begin_object();
  write_stat(w, "allocated_bytes", s.allocated_bytes);
  write_stat(w, "requested_bytes", s.requested_bytes);
  write_stat(w, "reserved_bytes", s.reserved_bytes);
  write_stat(w, "active_bytes", s.active_bytes);
  write_stat(w, "inactive_split_bytes", s.inactive_split_bytes);
  write_stat(w, "allocation", s.allocation);
  write_stat(w, "segment", s.segment);
  write_stat(w, "active", s.active);
  write_stat(w, "inactive_split", s.inactive_split);
  w.key("category_bytes").begin_object();
  for (int c = 0; c < kNumMemoryCategories; ++c)
    write_stat(w, category_name(category_at(c)), s.category(category_at(c)));
  w.end_object();
  w.field("num_allocs", s.num_allocs);
  w.field("num_cache_hits", s.num_cache_hits);
  w.field("num_device_alloc", s.num_device_alloc);
  w.field("num_device_free", s.num_device_free);
  w.field("num_alloc_retries", s.num_alloc_retries);
  w.field("num_ooms", s.num_ooms);
  w.end_object();
  return w.take();
}

std::string snapshot_json(const std::vector<SegmentInfo>& segments, Device device) {
  JsonWriter w(/*pretty_depth=*/4);
  int64_t reserved = 0, allocated = 0;
  for (const auto& seg : segments) {
    reserved += seg.size;
    for (const auto& b : seg.blocks)
      if (b.state == "allocated") allocated += b.size;
  }
  w.begin_object();
  w.field("device", device.str());
  w.field("num_segments", static_cast<int64_t>(segments.size()));
  w.field("reserved_bytes", reserved);
  w.field("allocated_bytes", allocated);
  w.key("segments").begin_array();
  for (const auto& seg : segments) {
    int64_t seg_allocated = 0;
    for (const auto& b : seg.blocks)
      if (b.state == "allocated") seg_allocated += b.size;
    w.begin_object();
    w.field("address", seg.address).field("size", seg.size).field("stream", seg.stream);
    w.field("pool", seg.small_pool ? "small" : "large").field("allocated_bytes", seg_allocated);
    w.key("blocks").begin_array();
    for (const auto& b : seg.blocks) {
      w.begin_object();
      w.field("address", b.address).field("size", b.size).field("requested", b.requested);
      w.field("state", b.state).field("stream", seg.stream);
      // A free block's category is whatever its last user had: not meaningful.
      w.key("category");
      if (b.state == "free") w.null();
      else w.value(category_name(b.category));
      w.end_object();
    }
    w.end_array();
    w.end_object();
  }
  w.end_array();
  w.end_object();
  return w.take();
}

std::string trace_json(const std::vector<TraceEvent>& events) {
  JsonWriter w(/*pretty_depth=*/2);
  w.reserve(events.size() * 220 + 256);
  w.begin_object();
  w.field("num_events", static_cast<int64_t>(events.size()));
  w.key("categories").begin_array();
  for (int c = 0; c < kNumMemoryCategories; ++c) w.value(category_name(category_at(c)));
  w.end_array();
  w.key("events").begin_array();
  for (const auto& e : events) {
    w.begin_object();
    w.field("time_ns", e.time_ns).field("kind", trace_kind_name(e.kind)).field("address", e.address);
    w.field("bytes", e.bytes).field("category", category_name(e.category)).field("stream", e.stream);
    w.field("allocated_after", e.allocated_after).field("reserved_after", e.reserved_after);
    w.key("category_after").begin_array();
    for (int64_t v : e.category_after) w.value(v);
    w.end_array();
    w.end_object();
  }
  w.end_array();
  w.end_object();
  return w.take();
}

std::string chrome_trace_json(const std::vector<TraceEvent>& events, Device device, const std::string& title) {
  // One process per device so that reports of several devices can be loaded together.
  const int64_t pid = device.is_cpu() ? 1 : 100 + device.index;
  const std::string process = "headroom memory: " + device.str() + (title.empty() ? "" : " (" + title + ")");
  JsonWriter w(/*pretty_depth=*/2);
  w.reserve(events.size() * 120 + 512);
  w.begin_object();
  w.field("displayTimeUnit", "ms");
  w.key("otherData").begin_object();
  w.field("generator", "headroom").field("device", device.str()).field("title", title);
  w.end_object();
  w.key("traceEvents").begin_array();
  w.begin_object();
  w.field("name", "process_name").field("ph", "M").field("pid", pid).field("tid", int64_t{0});
  w.key("args").begin_object().field("name", process).end_object();
  w.end_object();

  auto counter = [&](const char* name, double ts_us, int64_t bytes) {
    w.begin_object();
    w.field("name", name).field("cat", "memory").field("ph", "C");
    w.key("ts").value(ts_us, 3);
    w.field("pid", pid).field("tid", int64_t{0});
    w.key("args").begin_object().field("bytes", bytes).end_object();
    w.end_object();
  };
  // Counters are written when their value changes (all of them at the first event), so a
  // trace of a million events does not become nine million counter samples.
  int64_t last_allocated = -1, last_reserved = -1;
  std::array<int64_t, kNumMemoryCategories> last_category;
  last_category.fill(-1);
  for (const auto& e : events) {
    const double ts = static_cast<double>(e.time_ns) / 1e3;
    if (e.kind == TraceKind::oom) {
      w.begin_object();
      w.field("name", "out of memory").field("cat", "memory").field("ph", "i").field("s", "p");
      w.key("ts").value(ts, 3);
      w.field("pid", pid).field("tid", int64_t{0});
      w.key("args").begin_object();
      w.field("requested_bytes", e.bytes).field("requested", format_bytes(e.bytes));
      w.field("category", category_name(e.category)).field("stream", e.stream);
      w.field("allocated_bytes", e.allocated_after).field("reserved_bytes", e.reserved_after);
      w.end_object();
      w.end_object();
    }
    if (e.allocated_after != last_allocated) counter("allocated", ts, last_allocated = e.allocated_after);
    if (e.reserved_after != last_reserved) counter("reserved", ts, last_reserved = e.reserved_after);
    for (int c = 0; c < kNumMemoryCategories; ++c) {
      const auto i = static_cast<size_t>(c);
      if (e.category_after[i] != last_category[i])
        counter(category_name(category_at(c)), ts, last_category[i] = e.category_after[i]);
    }
  }
  w.end_array();
  w.end_object();
  return w.take();
}

// ---- timeline ----

std::vector<TimelinePoint> downsample_timeline(const std::vector<TraceEvent>& events, size_t max_points) {
  HR_CHECK(max_points >= 3, ValueError, "downsample_timeline: max_points must be at least 3, got ", max_points);
  auto point_of = [](const TraceEvent& e) {
    TimelinePoint p;
    p.time_ns = e.time_ns;
    p.allocated = e.allocated_after;
    p.reserved = e.reserved_after;
    p.category = e.category_after;
    return p;
  };
  std::vector<TimelinePoint> out;
  if (events.size() <= max_points) {
    out.reserve(events.size());
    for (const auto& e : events) out.push_back(point_of(e));
    return out;
  }
  // The first event, max_points - 2 equal intervals of time, and the last event: the first and
  // last keep the chart's time range exact.
  const size_t buckets = max_points - 2;
  const int64_t t0 = events.front().time_ns;
  const double span = static_cast<double>(events.back().time_ns - t0) + 1.0;
  std::vector<size_t> best(buckets, SIZE_MAX);
  std::vector<int64_t> reserved(buckets, 0);
  for (size_t i = 0; i < events.size(); ++i) {
    const auto& e = events[i];
    auto b = static_cast<size_t>(static_cast<double>(e.time_ns - t0) / span * static_cast<double>(buckets));
    b = std::min(b, buckets - 1);
    if (best[b] == SIZE_MAX || e.allocated_after > events[best[b]].allocated_after) best[b] = i;
    reserved[b] = std::max(reserved[b], e.reserved_after);
  }
  out.reserve(max_points);
  if (best[0] != 0) out.push_back(point_of(events.front()));
  for (size_t b = 0; b < buckets; ++b) {
    if (best[b] == SIZE_MAX) continue;
    TimelinePoint p = point_of(events[best[b]]);
    p.reserved = reserved[b];
    out.push_back(p);
  }
  if (best[buckets - 1] != events.size() - 1) out.push_back(point_of(events.back()));
  return out;
}

namespace {

// Colours of the categories, in MemoryCategory order (Tableau 10: distinct, colour-blind aware).
constexpr std::array<const char*, kNumMemoryCategories> kCategoryColour = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2",
                                                                           "#59a14f", "#edc948", "#b07aa1"};
static_assert(kNumMemoryCategories == 7, "give the new category a colour");

// 1, 2 or 5 times a power of ten, the smallest such step giving at most `max_ticks` intervals.
double nice_step(double range, int max_ticks) {
  const double raw = range / max_ticks;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw * (1 - 1e-9)) return m * mag;
  return 10 * mag;
}

// Byte ticks: 1-2-5 steps in the binary unit (B, KiB, MiB, GiB, TiB) of the range.
double byte_step(double range) {
  double unit = 1;
  while (unit < 1024.0 * 1024 * 1024 * 1024 && range / unit >= 1024) unit *= 1024;
  return std::max(1.0, nice_step(range / unit, 6) * unit);
}

// Time tick text: a step of 1-2-5 x 10^k ns, written in the unit the step is at least one of.
std::string time_tick(double ns, double step) {
  double scale = 1;
  const char* unit = "ns";
  if (step >= 1e9) scale = 1e9, unit = "s";
  else if (step >= 1e6) scale = 1e6, unit = "ms";
  else if (step >= 1e3) scale = 1e3, unit = "µs";
  return fixed(ns / scale, 0) + " " + unit;
}

struct Plot {
  double left = 100, right = 30, top = 36, bottom = 56;
  double width = 1100, height = 470;
  int64_t t0 = 0;
  double span_ns = 1;
  double y_max = 1;
  double pw() const { return width - left - right; }
  double ph() const { return height - top - bottom; }
  double x(int64_t t) const { return left + static_cast<double>(t - t0) / span_ns * pw(); }
  double y(double v) const { return top + ph() - v / y_max * ph(); }
};

// A step line through (t_i, v_i): each value holds until the next point. Returns the path data
// after its "M", with repeated H/V commands dropped.
template <typename ValueOf>
std::string step_path(const Plot& plot, const std::vector<TimelinePoint>& pts, ValueOf value_of, bool close_to_base) {
  std::string d;
  std::string last_x, last_y;
  const std::string base = fixed(plot.y(0), 1);
  for (size_t i = 0; i < pts.size(); ++i) {
    std::string xs = fixed(plot.x(pts[i].time_ns), 1);
    std::string ys = fixed(plot.y(static_cast<double>(value_of(pts[i]))), 1);
    if (i == 0) {
      d = close_to_base ? "M" + xs + " " + base + "V" + ys : "M" + xs + " " + ys;
    } else {
      if (xs != last_x) d += "H" + xs;
      if (ys != last_y) d += "V" + ys;
    }
    last_x = std::move(xs);
    last_y = std::move(ys);
  }
  const std::string end_x = fixed(plot.x(pts.back().time_ns), 1);
  if (end_x != last_x) d += "H" + end_x;
  if (close_to_base) d += "V" + base + "Z";
  return d;
}

}  // namespace

// Note [timeline hooks]: the page carries, besides what a reader sees, stable names for the
// parts a test (or a tool scraping the page) looks for, so that a change of wording or layout
// does not hide a missing part: each category's area is <path class="area NAME"
// data-category="NAME">, drawn only for a category that held memory; each legend entry is
// <li class="used|unused" data-category="NAME" data-peak-bytes="N">; the peak of allocated is
// <g id="peak" data-bytes="N" data-time-ns="T"> (T since the first event) holding the text
// #peak-label. tests/report/memory_report_test.cpp reads them from the page as Chromium
// rendered it (TimelineRendersInHeadlessChromium).
std::string memory_timeline_html(const std::vector<TraceEvent>& events, const MemoryStats& stats, Device device,
                                 const std::string& title) {
  const std::vector<TimelinePoint> pts = downsample_timeline(events);
  // Exact figures come from every event, not from the downsampled points.
  std::array<int64_t, kNumMemoryCategories> cat_peak{};
  int64_t reserved_peak = 0;
  std::vector<const TraceEvent*> ooms;
  size_t num_ooms = 0;
  for (const auto& e : events) {
    for (size_t c = 0; c < cat_peak.size(); ++c) cat_peak[c] = std::max(cat_peak[c], e.category_after[c]);
    reserved_peak = std::max(reserved_peak, e.reserved_after);
    if (e.kind == TraceKind::oom && num_ooms++ < 100) ooms.push_back(&e);
  }
  size_t peak_i = 0;
  for (size_t i = 0; i < pts.size(); ++i)
    if (pts[i].allocated > pts[peak_i].allocated) peak_i = i;

  Plot plot;
  if (!pts.empty()) {
    plot.t0 = pts.front().time_ns;
    plot.span_ns = std::max(1.0, static_cast<double>(pts.back().time_ns - plot.t0));
  }
  const double top_value =
      pts.empty() ? 0.0 : static_cast<double>(std::max(pts[peak_i].allocated, reserved_peak)) * 1.08;
  const double y_step = byte_step(std::max(top_value, 1024.0));
  plot.y_max = std::ceil(std::max(top_value, 1024.0) / y_step) * y_step;

  std::string svg;
  svg.reserve(64 * 1024);
  svg += str_cat("<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 ", plot.width, " ",
                 plot.height, "\" width=\"", plot.width, "\" height=\"", plot.height,
                 "\" role=\"img\" aria-label=\"memory over time by category\">\n");
  svg += str_cat("<rect x=\"", plot.left, "\" y=\"", plot.top, "\" width=\"", plot.pw(), "\" height=\"", plot.ph(),
                 "\" fill=\"#fafafa\" stroke=\"#ccc\"/>\n");
  // Y grid and labels.
  svg += "<g class=\"y-axis\" font-size=\"12\" text-anchor=\"end\" fill=\"#333\">\n";
  for (double v = 0; v <= plot.y_max * (1 + 1e-9); v += y_step) {
    const std::string yy = fixed(plot.y(v), 1);
    svg += str_cat("<line x1=\"", plot.left, "\" x2=\"", plot.left + plot.pw(), "\" y1=\"", yy, "\" y2=\"", yy,
                   "\" stroke=\"#e4e4e4\"/><text x=\"", plot.left - 8, "\" y=\"", yy, "\" dy=\"4\">",
                   html_escape(format_bytes(static_cast<int64_t>(std::llround(v)))), "</text>\n");
  }
  svg += "</g>\n";
  // X grid and labels: time since the first event.
  svg += "<g class=\"x-axis\" font-size=\"12\" text-anchor=\"middle\" fill=\"#333\">\n";
  const double x_step = std::max(1.0, nice_step(plot.span_ns, 8));
  for (double t = 0; t <= plot.span_ns * (1 + 1e-9); t += x_step) {
    const std::string xx = fixed(plot.x(plot.t0 + static_cast<int64_t>(std::llround(t))), 1);
    svg += str_cat("<line x1=\"", xx, "\" x2=\"", xx, "\" y1=\"", plot.top, "\" y2=\"", plot.top + plot.ph(),
                   "\" stroke=\"#eeeeee\"/><text x=\"", xx, "\" y=\"", plot.top + plot.ph() + 18, "\">",
                   pts.empty() ? "" : time_tick(t, x_step), "</text>\n");
  }
  svg += str_cat("<text x=\"", plot.left + plot.pw() / 2, "\" y=\"", plot.height - 10,
                 "\">time since the first traced event</text>\n</g>\n");

  if (pts.empty()) {
    svg += str_cat("<text x=\"", plot.left + plot.pw() / 2, "\" y=\"", plot.top + plot.ph() / 2,
                   "\" text-anchor=\"middle\" font-size=\"15\" fill=\"#555\">no events were traced: call "
                   "caching_allocator(device).set_trace_enabled(true) before the run</text>\n");
  } else {
    // Stacked areas: layer c covers 0 .. (sum of categories up to c); the highest layer is drawn
    // first and each lower one on top of it, so only upper edges are needed.
    std::array<int64_t, kNumMemoryCategories> trace_max{};
    for (const auto& p : pts)
      for (size_t c = 0; c < trace_max.size(); ++c) trace_max[c] = std::max(trace_max[c], p.category[c]);
    svg += "<g class=\"areas\" stroke=\"none\">\n";
    for (int c = kNumMemoryCategories - 1; c >= 0; --c) {
      if (trace_max[static_cast<size_t>(c)] == 0) continue;
      auto cumulative = [c](const TimelinePoint& p) {
        int64_t s = 0;
        for (int k = 0; k <= c; ++k) s += p.category[static_cast<size_t>(k)];
        return s;
      };
      svg += str_cat("<path class=\"area ", category_name(category_at(c)), "\" data-category=\"",
                     category_name(category_at(c)), "\" fill=\"", kCategoryColour[static_cast<size_t>(c)], "\" d=\"",
                     step_path(plot, pts, cumulative, true), "\"><title>", category_name(category_at(c)),
                     "</title></path>\n");
    }
    svg += "</g>\n";
    svg += str_cat("<path class=\"allocated\" fill=\"none\" stroke=\"#222\" stroke-width=\"1\" d=\"",
                   step_path(
                       plot, pts, [](const TimelinePoint& p) { return p.allocated; }, false),
                   "\"/>\n");
    svg += str_cat(
        "<path class=\"reserved\" fill=\"none\" stroke=\"#555\" stroke-width=\"1.5\" "
        "stroke-dasharray=\"6 4\" d=\"",
        step_path(
            plot, pts, [](const TimelinePoint& p) { return p.reserved; }, false),
        "\"/>\n");
    for (const TraceEvent* e : ooms) {
      const std::string xx = fixed(plot.x(e->time_ns), 1);
      svg += str_cat("<line class=\"oom\" x1=\"", xx, "\" x2=\"", xx, "\" y1=\"", plot.top, "\" y2=\"",
                     plot.top + plot.ph(), "\" stroke=\"#d00\" stroke-width=\"1.5\"><title>out of memory: ",
                     html_escape(format_bytes(e->bytes)), " requested (", category_name(e->category), ") at ",
                     format_duration_ns(e->time_ns - plot.t0), "</title></line>\n");
    }
    // The peak of allocated: a dashed level line, a dot, and its value and time.
    const TimelinePoint& pk = pts[peak_i];
    const double px = plot.x(pk.time_ns), py = plot.y(static_cast<double>(pk.allocated));
    const bool right_side = px > plot.left + 0.65 * plot.pw();
    svg += str_cat(
        "<g class=\"peak\" id=\"peak\" data-bytes=\"", pk.allocated, "\" data-time-ns=\"", pk.time_ns - plot.t0,
        "\">\n<line x1=\"", plot.left, "\" x2=\"", plot.left + plot.pw(), "\" y1=\"", fixed(py, 1), "\" y2=\"",
        fixed(py, 1), "\" stroke=\"#c00\" stroke-dasharray=\"3 3\"/>\n", "<circle cx=\"", fixed(px, 1), "\" cy=\"",
        fixed(py, 1), "\" r=\"4\" fill=\"#c00\"/>\n", "<text id=\"peak-label\" x=\"",
        fixed(right_side ? px - 8 : px + 8, 1), "\" y=\"", fixed(py - 8, 1), "\" text-anchor=\"",
        right_side ? "end" : "start", "\" font-size=\"13\" font-weight=\"bold\" fill=\"#c00\">peak allocated ",
        html_escape(format_bytes(pk.allocated)), " at ", format_duration_ns(pk.time_ns - plot.t0), "</text>\n</g>\n");
  }
  svg += "</svg>\n";

  // Legend: each category's colour and its peak in the trace, then the lines.
  std::string legend = "<ul class=\"legend\">\n";
  for (int c = 0; c < kNumMemoryCategories; ++c) {
    const auto i = static_cast<size_t>(c);
    legend +=
        str_cat("<li class=\"", cat_peak[i] == 0 ? "unused" : "used", "\" data-category=\"",
                category_name(category_at(c)), "\" data-peak-bytes=\"", cat_peak[i],
                "\"><span class=\"swatch\" style=\"background:", kCategoryColour[i], "\"></span>",
                category_name(category_at(c)), " <b>peak ", html_escape(format_bytes(cat_peak[i])), "</b></li>\n");
  }
  legend += str_cat("<li><span class=\"line solid\"></span>allocated (top of the stack) <b>peak ",
                    html_escape(format_bytes(pts.empty() ? 0 : pts[peak_i].allocated)), "</b></li>\n",
                    "<li><span class=\"line dashed\"></span>reserved <b>peak ",
                    html_escape(format_bytes(reserved_peak)), "</b></li>\n");
  if (num_ooms > 0) legend += str_cat("<li><span class=\"line oom\"></span>out of memory <b>", num_ooms, "</b></li>\n");
  legend += "</ul>\n";

  // The allocator's own counters (they cover the whole run, traced or not).
  std::string table = "<table class=\"stats\">\n<tr><th></th><th>current</th><th>peak</th></tr>\n";
  auto row = [&](const std::string& name, const Stat& s) {
    table += str_cat("<tr><td>", html_escape(name), "</td><td>", html_escape(format_bytes(s.current)), "</td><td>",
                     html_escape(format_bytes(s.peak)), "</td></tr>\n");
  };
  row("allocated", stats.allocated_bytes);
  row("reserved", stats.reserved_bytes);
  row("requested", stats.requested_bytes);
  row("active", stats.active_bytes);
  row("inactive split", stats.inactive_split_bytes);
  for (int c = 0; c < kNumMemoryCategories; ++c) row(category_name(category_at(c)), stats.category(category_at(c)));
  table += "</table>\n<table class=\"stats\">\n";
  const double hit_rate =
      stats.num_allocs > 0 ? 100.0 * static_cast<double>(stats.num_cache_hits) / static_cast<double>(stats.num_allocs)
                           : 0.0;
  for (const auto& [name, value] : std::vector<std::pair<const char*, std::string>>{
           {"allocations", str_cat(stats.num_allocs)},
           {"served from the cache", str_cat(stats.num_cache_hits, " (", fixed(hit_rate, 1), "%)")},
           {"segments obtained", str_cat(stats.num_device_alloc)},
           {"segments returned", str_cat(stats.num_device_free)},
           {"retries after freeing the cache", str_cat(stats.num_alloc_retries)},
           {"out of memory", str_cat(stats.num_ooms)}})
    table += str_cat("<tr><td>", name, "</td><td>", value, "</td></tr>\n");
  table += "</table>\n";

  std::string sub = str_cat("device ", device.str(), " &middot; ", events.size(), " events");
  if (!pts.empty()) {
    sub += str_cat(" over ", format_duration_ns(events.back().time_ns - events.front().time_ns), " (first at ",
                   format_duration_ns(events.front().time_ns), " after the allocator was made)");
    if (pts.size() < events.size())
      sub += str_cat(" &middot; drawn as ", pts.size(), " points, each the highest moment of its interval");
  }

  std::string html;
  html.reserve(svg.size() + 8192);
  html += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  html += str_cat("<title>", html_escape(title), " &mdash; headroom memory timeline</title>\n");
  html +=
      "<style>\n"
      "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#222;background:#fff}\n"
      "h1{font-size:20px;margin:0 0 4px}\n"
      ".sub{color:#666;font-size:13px;margin:0 0 12px}\n"
      "svg{max-width:100%;height:auto;display:block}\n"
      "svg text{font-family:inherit}\n"
      ".legend{list-style:none;padding:0;margin:10px 0;display:flex;flex-wrap:wrap;gap:6px 18px;font-size:13px}\n"
      ".legend li{display:flex;align-items:center;gap:6px}\n"
      ".legend li.unused{opacity:.45}\n"
      ".swatch{display:inline-block;width:14px;height:14px;border-radius:2px}\n"
      ".line{display:inline-block;width:22px;height:0;border-top:2px solid #222}\n"
      ".line.dashed{border-top:2px dashed #555}\n"
      ".line.oom{border-top:2px solid #d00}\n"
      ".tables{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}\n"
      ".stats{border-collapse:collapse;font-size:13px}\n"
      ".stats td,.stats th{padding:2px 10px;border-bottom:1px solid #eee;text-align:right}\n"
      ".stats td:first-child{text-align:left}\n"
      "</style>\n</head>\n<body>\n";
  html += str_cat("<h1>", html_escape(title), "</h1>\n<p class=\"sub\">", sub, "</p>\n");
  html += svg;
  html += legend;
  html += "<div class=\"tables\">\n" + table + "</div>\n</body>\n</html>\n";
  return html;
}

// ---- files ----

namespace {
void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (f) f.write(text.data(), static_cast<std::streamsize>(text.size()));
  if (f) f.close();
  if (!f) throw IOError(str_cat("write_memory_report: cannot write ", path.string(), ": ", std::strerror(errno)));
}
}  // namespace

namespace {
// The pinned host pool, when something was ever allocated from it (Note [host pool]).
CachingAllocator* used_host_pool() {
  CachingAllocator* pool = host_pool_if_made();
  return pool != nullptr && pool->stats().num_allocs > 0 ? pool : nullptr;
}
}  // namespace

void write_memory_report(const std::string& dir, Device device, const std::string& title) {
  write_memory_report(dir, caching_allocator(device), title);
  if (CachingAllocator* pool = used_host_pool())
    write_memory_report((std::filesystem::path(dir) / "host_pool").string(), *pool,
                        str_cat(title, " (pinned host pool)"));
}

void write_memory_report(const std::string& dir, CachingAllocator& alloc, const std::string& title) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir))
    throw IOError(str_cat("write_memory_report: cannot create the directory ", dir, ": ",
                          ec ? ec.message() : "a file of that name exists"));
  const Device device = alloc.device();
  const MemoryStats stats = alloc.stats();
  const std::vector<SegmentInfo> snapshot = alloc.snapshot();
  const std::vector<TraceEvent> trace = alloc.trace();
  const fs::path d(dir);
  write_file(d / "stats.json", memory_stats_json(stats));
  write_file(d / "snapshot.json", snapshot_json(snapshot, device));
  write_file(d / "trace.json", trace_json(trace));
  write_file(d / "trace.chrome.json", chrome_trace_json(trace, device, title));
  write_file(d / "timeline.html", memory_timeline_html(trace, stats, device, title));
}

void write_memory_report(const std::string& dir, const std::vector<Device>& devices, const std::string& title) {
  HR_CHECK(!devices.empty(), ValueError, "write_memory_report: no devices");
  namespace fs = std::filesystem;
  std::ostringstream rows;
  int64_t most = 0, least = -1;
  std::vector<MemoryCategory> cats;
  for (int c = 0; c < kNumMemoryCategories; ++c) cats.push_back(static_cast<MemoryCategory>(c));
  auto row = [&](const std::string& folder, const std::string& name, CachingAllocator& a, bool device) {
    write_memory_report((fs::path(dir) / folder).string(), a, str_cat(title, " (", name, ")"));
    const MemoryStats st = a.stats();
    if (device) {
      most = std::max(most, st.allocated_bytes.peak);
      least = least < 0 ? st.allocated_bytes.peak : std::min(least, st.allocated_bytes.peak);
    }
    rows << "<tr><td><a href=\"" << html_escape(folder) << "/timeline.html\">" << html_escape(name) << "</a></td><td>"
         << html_escape(format_bytes(st.allocated_bytes.peak)) << "</td><td>"
         << html_escape(format_bytes(st.reserved_bytes.peak)) << "</td>";
    for (MemoryCategory c : cats) rows << "<td>" << html_escape(format_bytes(st.category(c).peak)) << "</td>";
    rows << "</tr>\n";
  };
  for (const Device& d : devices) {
    std::string folder = d.str();
    for (char& ch : folder)
      if (ch == ':') ch = '_';
    row(folder, d.str(), caching_allocator(d), true);
  }
  // The pinned host pool (Note [host pool]) when offload used it: not a device, so not in the ratio.
  if (CachingAllocator* pool = used_host_pool()) row("host_pool", "pinned host pool", *pool, false);
  std::ostringstream html;
  html << "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" << html_escape(title)
       << "</title>\n<style>body{font-family:sans-serif;margin:24px}table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}</style>"
          "</head><body>\n<h1>"
       << html_escape(title) << "</h1>\n<p>" << devices.size()
       << " devices, each with its own allocator. Largest peak allocated over the smallest: "
       << (least > 0 ? str_cat(static_cast<double>(most) / static_cast<double>(least)) : std::string("-"))
       << ".</p>\n<table>\n<tr><th>device</th><th>peak allocated</th><th>peak reserved</th>";
  for (MemoryCategory c : cats) html << "<th>" << html_escape(category_name(c)) << "</th>";
  html << "</tr>\n" << rows.str() << "</table>\n</body></html>\n";
  write_file(fs::path(dir) / "index.html", html.str());
}

}  // namespace headroom
