// The writers of bench_report.h. Everything is built as text with snprintf: the formats are
// small and fixed, and no library is needed (strings go through json_quote / html_escape from
// report/memory_report.h, so a preset name or an error message cannot break the JSON or SVG).
#include "bench/bench_report.h"

#include <limits>
#include <tuple>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <sstream>

#include "engine/error.h"
#include "report/memory_report.h"

namespace headroom::bench {

namespace {

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

// A JSON number, or null when not finite / not measured.
std::string json_number(double v, bool valid = true) { return valid && std::isfinite(v) ? fmt("%.9g", v) : "null"; }
std::string json_int(int64_t v) { return std::to_string(v); }

// "1.23k", "45.6k", "1.20M": items per second, short.
std::string short_count(double v) {
  if (v >= 1e9) return fmt("%.3gG", v / 1e9);
  if (v >= 1e6) return fmt("%.3gM", v / 1e6);
  if (v >= 1e3) return fmt("%.3gk", v / 1e3);
  return fmt("%.3g", v);
}

std::string step_time(double ms) {
  return ms >= 100 ? fmt("%.0f ms", ms) : ms >= 10 ? fmt("%.1f ms", ms) : fmt("%.2f ms", ms);
}

// Categories that held memory in any result (so an all-zero column is left out).
std::vector<MemoryCategory> used_categories(const std::vector<Result>& results) {
  std::vector<MemoryCategory> cats;
  for (int c = 0; c < kNumMemoryCategories; ++c) {
    auto cat = static_cast<MemoryCategory>(c);
    for (const Result& r : results)
      if (r.peak_category(cat) > 0) {
        cats.push_back(cat);
        break;
      }
  }
  return cats;
}

std::string status_text(const Result& r) {
  if (r.status == "oom") return "OOM (asked for " + format_bytes(r.oom_requested_bytes) + ")";
  if (r.status == "error") return "error";
  return "ok";
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) {
    if (c == '"') q += '"';
    q += c == '\n' ? ' ' : c;
  }
  return q + "\"";
}

}  // namespace

// ---- checkpointing against its base ----

std::vector<CheckpointOverhead> checkpoint_overheads(const std::vector<Result>& results) {
  std::vector<CheckpointOverhead> out;
  for (const Result& r : results) {
    const std::string base = r.preset.checkpoint_base();
    if (base.empty() || !r.measured) continue;
    auto it = std::find_if(results.begin(), results.end(),
                           [&](const Result& b) { return b.preset.name == base && b.measured; });
    if (it == results.end()) continue;
    auto ratio = [](double num, double den) { return den > 0 ? num / den : std::nan(""); };
    const auto act = [](const Result& x) { return static_cast<double>(x.peak_category(MemoryCategory::activation)); };
    out.push_back({&r, &*it, ratio(r.step_ms, it->step_ms), ratio(act(*it), act(r)),
                   ratio(static_cast<double>(it->peak_allocated()), static_cast<double>(r.peak_allocated()))});
  }
  return out;
}

// ---- Markdown ----

std::string markdown_table(const std::vector<Result>& results) {
  std::ostringstream os;
  os << "| preset | precision | technique | status | peak allocated | peak reserved | step time | items/s | final loss "
        "|\n"
     << "|---|---|---|---|---:|---:|---:|---:|---:|\n";
  for (const Result& r : results) {
    os << "| " << r.preset.name << " | " << r.preset.precision_label() << " | " << r.preset.technique() << " | "
       << status_text(r) << " | " << format_bytes(r.peak_allocated()) << " | " << format_bytes(r.peak_reserved())
       << " | ";
    if (r.measured)
      os << step_time(r.step_ms) << " | " << fmt("%.0f", r.items_per_second) << " " << r.preset.item_unit() << "/s | "
         << (std::isfinite(r.final_loss) ? fmt("%.4f", r.final_loss) : "nan") << " |\n";
    else os << "- | - | - |\n";
  }
  const std::vector<MemoryCategory> cats = used_categories(results);
  os << "\nPeak allocated by category (each category's own peak; they need not coincide):\n\n| preset |";
  for (MemoryCategory c : cats) os << " " << category_name(c) << " |";
  os << "\n|---|";
  for (size_t i = 0; i < cats.size(); ++i) os << "---:|";
  os << "\n";
  for (const Result& r : results) {
    os << "| " << r.preset.name << " |";
    for (MemoryCategory c : cats) os << " " << format_bytes(r.peak_category(c)) << " |";
    os << "\n";
  }
  // Offload presets: what the pinned host pool held (Note [host pool]).
  if (std::any_of(results.begin(), results.end(),
                  [](const Result& r) { return r.preset.offload_activations || r.preset.offload_optimizer; })) {
    os << "\nPinned host pool (offload presets; the device's peaks are above):\n\n"
       << "| preset | host peak allocated | activation | gradient | optimizer_state |\n|---|---:|---:|---:|---:|\n";
    for (const Result& r : results) {
      if (!r.preset.offload_activations && !r.preset.offload_optimizer) continue;
      const MemoryStats& h = r.host_stats;
      os << "| " << r.preset.name << " | " << format_bytes(h.allocated_bytes.peak) << " | "
         << format_bytes(h.category(MemoryCategory::activation).peak) << " | "
         << format_bytes(h.category(MemoryCategory::gradient).peak) << " | "
         << format_bytes(h.category(MemoryCategory::optimizer_state).peak) << " |\n";
    }
  }
  const std::vector<CheckpointOverhead> pairs = checkpoint_overheads(results);
  auto times = [](double v) { return std::isfinite(v) ? fmt("%.2fx", v) : std::string("-"); };
  if (!pairs.empty()) {
    os << "\nRecompute checkpointing against the same preset without it (both from this run):\n\n"
       << "| preset | base | step time ckpt/base | activation peak base/ckpt | peak allocated base/ckpt |\n"
       << "|---|---|---:|---:|---:|\n";
    for (const CheckpointOverhead& o : pairs)
      os << "| " << o.ckpt->preset.name << " | " << o.base->preset.name << " | " << times(o.step_time_ratio) << " | "
         << times(o.activation_peak_ratio) << " | " << times(o.peak_allocated_ratio) << " |\n";
  }
  for (const Result& r : results) {
    const std::string base = r.preset.checkpoint_base();
    if (base.empty() || !r.measured ||
        std::any_of(pairs.begin(), pairs.end(), [&](const CheckpointOverhead& o) { return o.ckpt == &r; }))
      continue;
    os << "\n"
       << r.preset.name << ": no checkpointing overhead: its base preset " << base
       << " did not run to the end in this invocation (add it to --preset)\n";
  }
  for (const Result& r : results)
    if (r.status != "ok") os << "\n" << r.preset.name << ": " << r.error << "\n";
  bool any_parallel = false;
  for (const Result& r : results) any_parallel = any_parallel || (r.preset.ddp && r.measured);
  if (any_parallel) {
    os << "\nData parallelism (per step, means over the timed steps; bytes are rank 0's peaks, one rank's share):\n\n"
       << "| preset | ranks | buckets | reduced | communication | exposed | hidden behind backward | parameter | "
          "gradient "
          "| optimizer_state |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for (const Result& r : results) {
      if (!r.preset.ddp || !r.measured) continue;
      os << "| " << r.preset.name << " | " << r.world_size << " | " << r.buckets << " | "
         << format_bytes(r.communication_bytes) << " | " << fmt("%.2f ms", r.communication_ms) << " | "
         << fmt("%.2f ms", r.exposed_ms) << " | " << fmt("%.0f%%", 100 * r.hidden_fraction()) << " | "
         << format_bytes(r.peak_category(MemoryCategory::parameter)) << " | "
         << format_bytes(r.peak_category(MemoryCategory::gradient)) << " | "
         << format_bytes(r.peak_category(MemoryCategory::optimizer_state)) << " |\n";
    }
  }
  bool any_devices = false;
  for (const Result& r : results) any_devices = any_devices || !r.device_stats.empty();
  if (any_devices) {
    os << "\nSeveral devices (each device's own allocator; the bubble is the stages' idle share of the timed steps, "
          "against (K-1)/(M+K-1)):\n\n"
       << "| preset | devices | peak allocated per device | largest / smallest | bubble | ideal bubble | items/s |\n"
       << "|---|---:|---|---:|---:|---:|---:|\n";
    for (const Result& r : results) {
      if (r.device_stats.empty()) continue;
      std::string per;
      int64_t most = 0, least = std::numeric_limits<int64_t>::max();
      for (const auto& [d, st] : r.device_stats) {
        per += (per.empty() ? "" : ", ") + d.str() + " " + format_bytes(st.allocated_bytes.peak);
        most = std::max(most, st.allocated_bytes.peak);
        least = std::min(least, st.allocated_bytes.peak);
      }
      const bool stages = r.preset.pipeline_stages > 1;
      os << "| " << r.preset.name << " | " << r.device_stats.size() << " | " << per << " | "
         << (least > 0 ? fmt("%.2fx", static_cast<double>(most) / static_cast<double>(least)) : std::string("-"))
         << " | " << (stages && r.measured ? fmt("%.1f%%", 100 * r.bubble_fraction) : std::string("-")) << " | "
         << (stages ? fmt("%.1f%%", 100 * r.preset.ideal_bubble()) : std::string("-")) << " | "
         << (r.measured ? fmt("%.0f", r.items_per_second) + " " + r.preset.item_unit() + "/s" : std::string("-"))
         << " |\n";
    }
  }
  return os.str();
}

// ---- JSON ----

std::string results_json(const std::vector<Result>& results, const RunInfo& info) {
  std::ostringstream os;
  os << "{\n  \"schema\": 1,\n  \"framework\": \"headroom\",\n  \"device\": " << json_quote(info.device)
     << ",\n  \"device_name\": " << json_quote(info.device_name) << ",\n  \"date\": " << json_quote(info.date)
     << ",\n  \"steps\": " << info.steps << ",\n  \"warmup_steps\": " << info.warmup_steps << ",\n  \"results\": [";
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    const Preset& p = r.preset;
    os << (i ? ",\n" : "\n") << "    {\n"
       << "      \"preset\": " << json_quote(p.name) << ",\n"
       << "      \"framework\": \"headroom\",\n"
       << "      \"mode\": \"eager\",\n"
       << "      \"model\": " << json_quote(p.model) << ",\n"
       << "      \"description\": " << json_quote(p.description) << ",\n"
       << "      \"batch\": " << p.batch << ",\n"
       << "      \"seq_len\": " << p.seq_len << ",\n"
       << "      \"items_per_step\": " << p.items_per_step() << ",\n"
       << "      \"item_unit\": " << json_quote(p.item_unit()) << ",\n"
       << "      \"precision\": " << json_quote(dtype_name(p.dtype)) << ",\n"
       << "      \"precision_mode\": " << (p.dtype == DType::f32 ? "\"pure\"" : "\"amp\"") << ",\n"
       << "      \"technique\": " << json_quote(p.technique()) << ",\n"
       << "      \"status\": " << json_quote(r.status) << ",\n"
       << "      \"error\": " << json_quote(r.error) << ",\n"
       << "      \"oom_requested_bytes\": " << json_int(r.oom_requested_bytes) << ",\n"
       << "      \"parameters\": " << json_int(r.parameters) << ",\n"
       << "      \"peak_allocated_bytes\": " << json_int(r.peak_allocated()) << ",\n"
       << "      \"peak_reserved_bytes\": " << json_int(r.peak_reserved()) << ",\n"
       << "      \"peak_by_category\": {";
    for (int c = 0; c < kNumMemoryCategories; ++c) {
      auto cat = static_cast<MemoryCategory>(c);
      os << (c ? ", " : "") << json_quote(category_name(cat)) << ": " << json_int(r.peak_category(cat));
    }
    os << "},\n"
       << "      \"step_time_ms\": " << json_number(r.step_ms, r.measured) << ",\n"
       << "      \"step_time_ms_min\": " << json_number(r.step_ms_min, r.measured) << ",\n"
       << "      \"step_time_ms_max\": " << json_number(r.step_ms_max, r.measured) << ",\n"
       << "      \"items_per_second\": " << json_number(r.items_per_second, r.measured) << ",\n"
       << "      \"final_loss\": " << json_number(r.final_loss, r.measured) << ",\n"
       << "      \"start_rss_bytes\": " << (r.start_rss_bytes >= 0 ? std::to_string(r.start_rss_bytes) : "null")
       << ",\n"
       << "      \"peak_rss_bytes\": " << (r.peak_rss_bytes >= 0 ? std::to_string(r.peak_rss_bytes) : "null") << ",\n";
    if (p.ddp)
      os << "      \"data_parallel\": {\"world_size\": " << r.world_size << ", \"zero_stage\": " << p.zero_stage
         << ", \"bucket_cap_mib\": " << p.bucket_cap_mib << ", \"buckets\": " << r.buckets
         << ", \"communication_bytes\": " << r.communication_bytes
         << ", \"communication_ms\": " << json_number(r.communication_ms, r.measured)
         << ", \"exposed_ms\": " << json_number(r.exposed_ms, r.measured)
         << ", \"hidden_fraction\": " << json_number(r.hidden_fraction(), r.measured) << "},\n";
    else os << "      \"data_parallel\": null,\n";
    if (!r.device_stats.empty()) {
      const bool stages = p.pipeline_stages > 1;
      os << "      \"several_devices\": {\"pipeline_stages\": " << p.pipeline_stages
         << ", \"schedule\": " << (stages ? json_quote(nn::pipeline_schedule_name(p.schedule)) : std::string("null"))
         << ", \"micro_batches\": " << p.micro_batches << ", \"tensor_parallel\": " << p.tensor_parallel
         << ", \"replicas\": " << p.replicas
         << ", \"bubble_fraction\": " << json_number(r.bubble_fraction, stages && r.measured)
         << ", \"ideal_bubble\": " << json_number(p.ideal_bubble(), stages) << ", \"devices\": [";
      for (size_t k = 0; k < r.device_stats.size(); ++k) {
        const auto& [d, st] = r.device_stats[k];
        os << (k ? ", " : "") << "{\"device\": " << json_quote(d.str())
           << ", \"peak_allocated_bytes\": " << st.allocated_bytes.peak
           << ", \"peak_reserved_bytes\": " << st.reserved_bytes.peak << ", \"peak_by_category\": {";
        for (int c = 0; c < kNumMemoryCategories; ++c)
          os << (c ? ", " : "") << json_quote(category_name(static_cast<MemoryCategory>(c))) << ": "
             << st.category(static_cast<MemoryCategory>(c)).peak;
        os << "}}";
      }
      os << "]},\n";
    } else {
      os << "      \"several_devices\": null,\n";
    }
    if (p.offload_activations || p.offload_optimizer) {
      const MemoryStats& h = r.host_stats;
      os << "      \"host_pool\": {\"peak_allocated_bytes\": " << h.allocated_bytes.peak
         << ", \"peak_reserved_bytes\": " << h.reserved_bytes.peak << ", \"peak_by_category\": {";
      for (int c = 0; c < kNumMemoryCategories; ++c)
        os << (c ? ", " : "") << json_quote(category_name(static_cast<MemoryCategory>(c))) << ": "
           << h.category(static_cast<MemoryCategory>(c)).peak;
      os << "}},\n";
    } else {
      os << "      \"host_pool\": null,\n";
    }
    // The library's own serialisation of the same stats, indented into place.
    std::string stats = memory_stats_json(r.stats);
    while (!stats.empty() && (stats.back() == '\n' || stats.back() == ' ')) stats.pop_back();
    std::string indented;
    for (char c : stats) {
      indented += c;
      if (c == '\n') indented += "      ";
    }
    os << "      \"allocator_stats\": " << indented << "\n    }";
  }
  os << "\n  ],\n  \"checkpoint_overhead\": [";
  const std::vector<CheckpointOverhead> pairs = checkpoint_overheads(results);
  for (size_t i = 0; i < pairs.size(); ++i) {
    const CheckpointOverhead& o = pairs[i];
    os << (i ? ",\n" : "\n") << "    {\"preset\": " << json_quote(o.ckpt->preset.name)
       << ", \"base\": " << json_quote(o.base->preset.name)
       << ", \"step_time_ratio\": " << json_number(o.step_time_ratio)
       << ", \"activation_peak_ratio\": " << json_number(o.activation_peak_ratio)
       << ", \"peak_allocated_ratio\": " << json_number(o.peak_allocated_ratio) << "}";
  }
  os << (pairs.empty() ? "]" : "\n  ]") << "\n}\n";
  return os.str();
}

// ---- CSV ----

std::string results_csv(const std::vector<Result>& results, const RunInfo& info) {
  std::ostringstream os;
  os << "preset,framework,mode,device,model,batch,seq_len,items_per_step,item_unit,precision,precision_mode,technique,"
        "status,parameters,peak_allocated_bytes,peak_reserved_bytes";
  for (int c = 0; c < kNumMemoryCategories; ++c)
    os << ",peak_" << category_name(static_cast<MemoryCategory>(c)) << "_bytes";
  os << ",step_time_ms,step_time_ms_min,step_time_ms_max,items_per_second,final_loss,oom_requested_bytes,error\n";
  auto num = [](double v, bool valid) { return valid && std::isfinite(v) ? fmt("%.9g", v) : std::string(); };
  for (const Result& r : results) {
    const Preset& p = r.preset;
    os << csv_field(p.name) << ",headroom,eager," << csv_field(info.device) << "," << csv_field(p.model) << ","
       << p.batch << "," << p.seq_len << "," << p.items_per_step() << "," << p.item_unit() << "," << dtype_name(p.dtype)
       << "," << (p.dtype == DType::f32 ? "pure" : "amp") << "," << csv_field(p.technique()) << "," << r.status << ","
       << r.parameters << "," << r.peak_allocated() << "," << r.peak_reserved();
    for (int c = 0; c < kNumMemoryCategories; ++c) os << "," << r.peak_category(static_cast<MemoryCategory>(c));
    os << "," << num(r.step_ms, r.measured) << "," << num(r.step_ms_min, r.measured) << ","
       << num(r.step_ms_max, r.measured) << "," << num(r.items_per_second, r.measured) << ","
       << num(r.final_loss, r.measured) << "," << r.oom_requested_bytes << "," << csv_field(r.error) << "\n";
  }
  return os.str();
}

// ---- SVG ----

namespace {

// One axis of the plot: linear from 0, or logarithmic over whole decades.
struct Axis {
  bool log = false;
  double lo = 0, hi = 1;
  std::vector<double> ticks;

  // Fraction of the way from lo to hi.
  double frac(double v) const {
    if (log) return (std::log10(v) - std::log10(lo)) / (std::log10(hi) - std::log10(lo));
    return (v - lo) / (hi - lo);
  }
};

// bytes: linear ticks at round binary multiples (1, 2, 5 x KiB, MiB or GiB), so they read as
// "16.00 MiB" rather than "19.07 MiB".
Axis make_axis(const std::vector<double>& values, bool bytes) {
  Axis a;
  double vmin = *std::min_element(values.begin(), values.end());
  double vmax = *std::max_element(values.begin(), values.end());
  if (vmin > 0 && vmax / vmin > 10) {
    a.log = true;
    a.lo = std::pow(10.0, std::floor(std::log10(vmin)));
    a.hi = std::pow(10.0, std::ceil(std::log10(vmax)));
    if (a.hi <= vmax * 1.0001) a.hi *= 10;  // keep the largest point off the frame
    const bool fine = a.hi / a.lo <= 1000;
    for (double d = a.lo; d <= a.hi * 1.0001; d *= 10)
      for (double m : fine ? std::vector<double>{1, 2, 5} : std::vector<double>{1})
        if (d * m <= a.hi * 1.0001) a.ticks.push_back(d * m);
    return a;
  }
  a.lo = 0;
  double top = vmax > 0 ? vmax * 1.15 : 1;
  const double raw = top / 5;
  double unit = 1;
  if (bytes)
    for (double u : {1024.0, 1048576.0, 1073741824.0, 1099511627776.0})
      if (raw >= u) unit = u;
  const double mag = unit * std::pow(10.0, std::floor(std::log10(raw / unit)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  a.hi = std::ceil(top / step) * step;
  for (double t = 0; t <= a.hi * 1.0001; t += step) a.ticks.push_back(t);
  return a;
}

const char* model_colour(ModelKind k) {
  switch (k) {
    case ModelKind::gpt: return "#1f77b4";
    case ModelKind::mlp: return "#ff7f0e";
    case ModelKind::resnet18: return "#2ca02c";
    case ModelKind::cnn: return "#9467bd";
    case ModelKind::timed_stages: return "#8c564b";
  }
  return "#444";
}

}  // namespace

std::string memory_throughput_svg(const std::vector<Result>& results, const RunInfo& info) {
  constexpr double kW = 820, kLeft = 90, kRight = 200, kTop = 56, kPlotH = 380;
  std::vector<const Result*> points, failed;
  for (const Result& r : results) (r.measured ? points : failed).push_back(&r);
  const double height = kTop + kPlotH + 70 + 18.0 * static_cast<double>(failed.size() + 2);
  const double x0 = kLeft, x1 = kW - kRight, y0 = kTop + kPlotH, y1 = kTop;

  std::ostringstream os;
  os << fmt(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n",
      kW, height, kW, height);
  os << fmt("<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"white\"/>\n", kW, height);
  os << "<text x=\"" << kLeft
     << "\" y=\"24\" font-size=\"15\" font-weight=\"bold\">headroom-bench: peak memory against "
     << "throughput</text>\n";
  os << "<text x=\"" << kLeft << "\" y=\"42\" fill=\"#555\">"
     << html_escape(info.device + " (" + info.device_name + "), ") << info.steps << " timed steps, "
     << html_escape(info.date) << "</text>\n";

  if (points.empty()) {
    os << fmt("<text x=\"%.0f\" y=\"%.0f\">no configuration completed</text>\n", x0, (y0 + y1) / 2);
  } else {
    std::vector<double> xs, ys;
    for (const Result* r : points) {
      xs.push_back(r->items_per_second);
      ys.push_back(static_cast<double>(r->peak_allocated()));
    }
    const Axis ax = make_axis(xs, false), ay = make_axis(ys, true);
    auto px = [&](double v) { return x0 + ax.frac(v) * (x1 - x0); };
    auto py = [&](double v) { return y0 - ay.frac(v) * (y0 - y1); };
    // Grid and ticks.
    os << "<g stroke=\"#ddd\">\n";
    for (double t : ax.ticks)
      os << fmt("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n", px(t), y0, px(t), y1);
    for (double t : ay.ticks)
      os << fmt("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n", x0, py(t), x1, py(t));
    os << "</g>\n<g fill=\"#333\">\n";
    for (double t : ax.ticks)
      os << fmt("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", px(t), y0 + 16) << short_count(t) << "</text>\n";
    for (double t : ay.ticks)
      os << fmt("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">", x0 - 6, py(t) + 4)
         << html_escape(format_bytes(static_cast<int64_t>(t))) << "</text>\n";
    os << "</g>\n";
    os << fmt("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#333\"/>\n", x0, y1,
              x1 - x0, y0 - y1);
    os << fmt("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", (x0 + x1) / 2, y0 + 38)
       << "throughput (items/s: tokens for GPT, images for MLP and ResNet" << (ax.log ? "; log scale" : "")
       << ")</text>\n";
    os << fmt("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" transform=\"rotate(-90 %.1f %.1f)\">", 22.0,
              (y0 + y1) / 2, 22.0, (y0 + y1) / 2)
       << "peak allocated" << (ay.log ? " (log scale)" : "") << "</text>\n";
    // Points, each with its label and a tooltip; a label that would overlap one already placed
    // moves down a line at a time (points themselves are never moved).
    struct Box {
      double x0, y0, x1, y1;
    };
    std::vector<Box> placed;
    for (const Result* r : points) {
      const double cx = px(r->items_per_second), cy = py(static_cast<double>(r->peak_allocated()));
      double ly = cy + 4;
      const double lw = 7.0 * static_cast<double>(r->preset.name.size());
      for (int tries = 0; tries < 8; ++tries) {
        bool clash = false;
        for (const Box& b : placed)
          clash = clash || (cx + 8 < b.x1 && b.x0 < cx + 8 + lw && ly - 11 < b.y1 && b.y0 < ly + 2);
        if (!clash) break;
        ly += 13;
      }
      placed.push_back({cx + 8, ly - 11, cx + 8 + lw, ly + 2});
      const std::string tip = r->preset.name + ": " + short_count(r->items_per_second) + " " + r->preset.item_unit() +
                              "/s, peak allocated " + format_bytes(r->peak_allocated()) + ", reserved " +
                              format_bytes(r->peak_reserved());
      os << fmt("<circle class=\"point\" cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"%s\">", cx, cy,
                model_colour(r->preset.kind))
         << "<title>" << html_escape(tip) << "</title></circle>\n";
      os << fmt("<text class=\"label\" x=\"%.1f\" y=\"%.1f\">", cx + 8, ly) << html_escape(r->preset.name)
         << "</text>\n";
    }
  }
  // Legend and the configurations that have no point.
  double y = y0 + 62;
  os << fmt("<g transform=\"translate(%.0f %.0f)\">", x0, y);
  double lx = 0;
  for (auto [kind, label] : {std::pair{ModelKind::gpt, "GPT"}, std::pair{ModelKind::mlp, "MLP"},
                             std::pair{ModelKind::resnet18, "ResNet-18"}}) {
    os << fmt("<circle cx=\"%.0f\" cy=\"-4\" r=\"5\" fill=\"%s\"/><text x=\"%.0f\" y=\"0\">%s</text>", lx,
              model_colour(kind), lx + 9, label);
    lx += 110;
  }
  os << "</g>\n";
  for (const Result* r : failed) {
    y += 18;
    const std::string what = r->status == "oom"
                                 ? "out of memory (asked for " + format_bytes(r->oom_requested_bytes) + ")"
                                 : "error: " + r->error;
    os << fmt("<text class=\"failed\" x=\"%.0f\" y=\"%.0f\" fill=\"#b00\">", x0, y)
       << html_escape(r->preset.name + ": " + what) << "</text>\n";
  }
  os << "</svg>\n";
  return os.str();
}

void write_text_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  HR_CHECK(out, IOError, "headroom-bench: cannot write ", path);
  out << text;
  out.close();
  HR_CHECK(out, IOError, "headroom-bench: error writing ", path);
}

std::string profile_tables(const std::vector<Result>& results, size_t top) {
  std::ostringstream os;
  for (const Result& r : results) {
    if (r.profile.empty()) continue;
    double ops_ms = 0;
    for (const OpProfileRow& op : r.profile) ops_ms += op.ms;
    const double step = r.profile_step_ms > 0 ? r.profile_step_ms : ops_ms;
    auto share = [step](double ms) { return step > 0 ? 100.0 * ms / step : 0.0; };
    os << "\nGPU time by op, one profiled step of " << r.preset.name << " (" << std::fixed << std::setprecision(2)
       << step << " ms between the step's events):\n\n| op | calls | ms | share of the step |\n|---|---:|---:|---:|\n";
    double rest_ms = 0;
    int64_t rest_calls = 0;
    for (size_t i = 0; i < r.profile.size(); ++i) {
      const OpProfileRow& op = r.profile[i];
      if (i < top) {
        os << "| " << op.name << " | " << op.calls << " | " << std::setprecision(3) << op.ms << " | "
           << std::setprecision(1) << share(op.ms) << "% |\n";
      } else {
        rest_ms += op.ms;
        rest_calls += op.calls;
      }
    }
    if (rest_calls > 0)
      os << "| (" << r.profile.size() - top << " other ops) | " << rest_calls << " | " << std::setprecision(3)
         << rest_ms << " | " << std::setprecision(1) << share(rest_ms) << "% |\n";
    os << "| (not in any op: the GPU waiting for the host) | | " << std::setprecision(3) << std::max(0.0, step - ops_ms)
       << " | " << std::setprecision(1) << share(std::max(0.0, step - ops_ms)) << "% |\n";
  }
  return os.str();
}

namespace {

// A "Name:   123 kB" field of /proc/self/status, in bytes; -1 when absent.
int64_t proc_status_kib_field(const char* name) {
  std::ifstream in("/proc/self/status");
  const std::string key = std::string(name) + ":";
  for (std::string line; std::getline(in, line);) {
    if (line.compare(0, key.size(), key) != 0) continue;
    std::istringstream fields(line.substr(key.size()));
    int64_t kib = -1;
    if (fields >> kib) return kib * 1024;
  }
  return -1;
}

}  // namespace

int64_t process_rss_bytes() { return proc_status_kib_field("VmRSS"); }
int64_t process_peak_rss_bytes() { return proc_status_kib_field("VmHWM"); }

bool reset_process_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";  // Linux: reset the peak resident set size to the current one
  out.flush();
  return static_cast<bool>(out);
}

std::string prediction_table(const std::vector<Result>& results, bool* all_exact) {
  *all_exact = true;
  std::ostringstream os;
  bool any = false;
  for (const Result& r : results) {
    if (!r.predicted) continue;
    if (!any) {
      os << "\nPredicted (meta execution, Note [meta execution]) against measured:\n\n"
         << "| preset | peak allocated predicted | measured | categories | peak reserved predicted | measured | "
            "prediction took |\n|---|---:|---:|---|---:|---:|---:|\n";
      any = true;
    }
    if (r.predict_status != "ok" || !r.measured) {
      os << "| " << r.preset.name << " | " << (r.predict_status != "ok" ? r.predict_status : "-") << " | "
         << (r.measured ? format_bytes(r.peak_allocated()) : r.status) << " | - | - | - | - |\n";
      if (r.predict_status != r.status) *all_exact = false;
      continue;
    }
    // One row, or one per device. A pipeline's stages run on threads of their own, and the
    // copies between stages land when the threads' timing decides (Note [meta in worker
    // threads]): its rows are held to 5% of the allocated peak or 64 KiB, whichever is more
    // (what a few activations in flight between stages hold); the others to the byte.
    std::vector<std::tuple<std::string, const MemoryStats*, const MemoryStats*>> rows;
    if (r.device_stats.empty() || r.device_stats.size() != r.predicted_device_stats.size())
      rows.emplace_back(r.preset.name, &r.predicted_stats, &r.stats);
    else
      for (size_t k = 0; k < r.device_stats.size(); ++k)
        rows.emplace_back(r.preset.name + " @ " + r.device_stats[k].first.str(), &r.predicted_device_stats[k].second,
                          &r.device_stats[k].second);
    const bool threaded_stages = r.preset.pipeline_stages > 1;
    for (const auto& [label, predicted, measured] : rows) {
      const int64_t pa = predicted->allocated_bytes.peak, ma = measured->allocated_bytes.peak;
      const int64_t pr = predicted->reserved_bytes.peak, mr = measured->reserved_bytes.peak;
      int differing = 0;
      std::string which;  // "communication 0 B predicted, 512 B measured"
      for (size_t c = 0; c < kNumMemoryCategories; ++c) {
        const int64_t p = predicted->category_bytes[c].peak, m = measured->category_bytes[c].peak;
        if (p == m) continue;
        ++differing;
        which += str_cat(which.empty() ? ": " : "; ", category_name(static_cast<MemoryCategory>(c)), " ", p,
                         " B predicted, ", m, " B measured");
      }
      if (threaded_stages) {
        if (std::llabs(pa - ma) > std::max<int64_t>(ma / 20, 64 << 10)) *all_exact = false;
      } else {
        const bool reserved_close = std::llabs(pr - mr) <= mr / 50;
        if (pa != ma || differing > 0 || !reserved_close) *all_exact = false;
      }
      os << "| " << label << " | " << pa << " B | " << (pa == ma ? "= " : "") << ma << " B"
         << (threaded_stages && pa != ma ? fmt(" (%+.1f%%, stages on threads: 5%% or 64 KiB allowed)",
                                               100.0 * static_cast<double>(pa - ma) / static_cast<double>(ma))
                                         : std::string())
         << " | " << (differing == 0 ? "all equal" : str_cat(differing, " differ", which)) << " | " << format_bytes(pr)
         << " | " << format_bytes(mr) << " | " << std::fixed << std::setprecision(3) << r.predict_seconds << " s |\n";
    }
  }
  return os.str();
}

}  // namespace headroom::bench
