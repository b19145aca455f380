// The memory report: every JSON output is parsed back by a strict little parser below (not a
// substring search), so a missing comma or a bad escape fails; the numbers are compared with the
// allocator's own stats and trace. The HTML timeline is checked as text and, where Chromium is
// installed, rendered headless (required where HEADROOM_REQUIRE_CHROMIUM=1, as in CI).
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <set>

#include "engine/caching_allocator.h"
#include "report/memory_report.h"
#include "test_util.h"

namespace headroom {
namespace {

constexpr size_t KiB = 1024, MiB = 1024 * 1024;
namespace fs = std::filesystem;

// ---- a strict JSON parser (RFC 8259), enough to check structure and read values back ----

struct Json {
  enum class Type { null, boolean, number, string, array, object } type = Type::null;
  bool b = false;
  std::string text;  // a string's value, or a number's literal
  std::vector<Json> items;
  std::vector<std::pair<std::string, Json>> members;

  bool has(const std::string& k) const {
    for (const auto& m : members)
      if (m.first == k) return true;
    return false;
  }
  const Json& operator[](const std::string& k) const {
    for (const auto& m : members)
      if (m.first == k) return m.second;
    throw std::runtime_error("no key '" + k + "'");
  }
  const Json& operator[](size_t i) const { return items.at(i); }
  int64_t as_int() const {
    if (type != Type::number) throw std::runtime_error("not a number");
    size_t used = 0;
    int64_t v = std::stoll(text, &used);
    if (used != text.size()) throw std::runtime_error("not an integer: " + text);
    return v;
  }
  double as_double() const {
    if (type != Type::number) throw std::runtime_error("not a number");
    return std::stod(text);
  }
  const std::string& as_string() const {
    if (type != Type::string) throw std::runtime_error("not a string");
    return text;
  }
};

class JsonParser {
 public:
  explicit JsonParser(const std::string& s) : s_(s) {}
  Json parse() {
    Json v = value();
    ws();
    if (i_ != s_.size()) fail("text after the value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("JSON: " + what + " at offset " + std::to_string(i_) + ": '" + s_.substr(i_, 40) + "'");
  }
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }
  char peek() {
    ws();
    if (i_ >= s_.size()) fail("unexpected end");
    return s_[i_];
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }
  bool literal(const char* word) {
    size_t n = std::strlen(word);
    if (s_.compare(i_, n, word) != 0) return false;
    i_ += n;
    return true;
  }
  Json value() {
    Json v;
    char c = peek();
    if (c == '{') {
      v.type = Json::Type::object;
      ++i_;
      if (peek() == '}') {
        ++i_;
        return v;
      }
      while (true) {
        if (peek() != '"') fail("expected a key");
        std::string k = string();
        expect(':');
        v.members.emplace_back(std::move(k), value());
        if (peek() == ',') {
          ++i_;
          continue;
        }
        expect('}');
        return v;
      }
    }
    if (c == '[') {
      v.type = Json::Type::array;
      ++i_;
      if (peek() == ']') {
        ++i_;
        return v;
      }
      while (true) {
        v.items.push_back(value());
        if (peek() == ',') {
          ++i_;
          continue;
        }
        expect(']');
        return v;
      }
    }
    if (c == '"') {
      v.type = Json::Type::string;
      v.text = string();
      return v;
    }
    if (literal("true") || literal("false")) {
      v.type = Json::Type::boolean;
      v.b = s_[i_ - 1] == 'e' && s_[i_ - 2] == 'u';
      return v;
    }
    if (literal("null")) return v;
    return number();
  }
  Json number() {
    size_t start = i_;
    auto digits = [&] {
      size_t d = i_;
      while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) ++i_;
      return i_ - d;
    };
    if (i_ < s_.size() && s_[i_] == '-') ++i_;
    if (i_ < s_.size() && s_[i_] == '0') ++i_;
    else if (digits() == 0) fail("bad value");
    if (i_ < s_.size() && s_[i_] == '.') {
      ++i_;
      if (digits() == 0) fail("digits after '.'");
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      if (digits() == 0) fail("exponent digits");
    }
    Json v;
    v.type = Json::Type::number;
    v.text = s_.substr(start, i_ - start);
    return v;
  }
  static void put_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  uint32_t hex4() {
    if (i_ + 4 > s_.size()) fail("short \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      char h = s_[i_++];
      v <<= 4;
      if (h >= '0' && h <= '9') v |= static_cast<uint32_t>(h - '0');
      else if (h >= 'a' && h <= 'f') v |= static_cast<uint32_t>(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') v |= static_cast<uint32_t>(h - 'A' + 10);
      else fail("bad hex digit");
    }
    return v;
  }
  std::string string() {
    ++i_;  // opening quote
    std::string out;
    while (true) {
      if (i_ >= s_.size()) fail("unterminated string");
      auto c = static_cast<unsigned char>(s_[i_++]);
      if (c == '"') return out;
      if (c < 0x20) fail("raw control character in a string");
      if (c != '\\') {
        out += static_cast<char>(c);
        continue;
      }
      if (i_ >= s_.size()) fail("unterminated escape");
      char e = s_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {
            if (!literal("\\u")) fail("lone high surrogate");
            uint32_t lo = hex4();
            if (lo < 0xDC00 || lo >= 0xE000) fail("bad low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            fail("lone low surrogate");
          }
          put_utf8(out, cp);
          break;
        }
        default: fail(std::string("bad escape \\") + e);
      }
    }
  }

  const std::string& s_;
  size_t i_ = 0;
};

Json parse_json(const std::string& text) { return JsonParser(text).parse(); }

// ---- the scenario: a few training-like steps on a private, traced allocator ----

struct Traced {
  std::unique_ptr<CachingAllocator> alloc = std::make_unique<CachingAllocator>(std::make_unique<HostMemoryBackend>());
  std::vector<Allocation> live;  // what the scenario leaves allocated (parameters, optimizer state)

  Traced() {
    alloc->set_trace_enabled(true);
    auto get = [&](size_t n, MemoryCategory c) { return alloc->allocate(n, Stream{Device::cpu(), 0}, c); };
    for (int i = 0; i < 3; ++i) live.push_back(get(256 * KiB, MemoryCategory::parameter));
    live.push_back(get(768 * KiB, MemoryCategory::optimizer_state));
    for (int step = 0; step < 3; ++step) {
      std::vector<Allocation> acts, grads;
      for (int l = 0; l < 4; ++l) acts.push_back(get((1 + step) * MiB + 512 * KiB, MemoryCategory::activation));
      Allocation tmp = get(3 * MiB, MemoryCategory::temporary);
      alloc->deallocate(tmp);
      for (int l = 0; l < 3; ++l) grads.push_back(get(256 * KiB, MemoryCategory::gradient));
      for (auto& a : acts) alloc->deallocate(a);
      for (auto& g : grads) alloc->deallocate(g);
    }
    Allocation ws = get(2 * MiB, MemoryCategory::workspace);
    alloc->deallocate(ws);
    alloc->set_memory_limit(64 * MiB);
    EXPECT_THROW(get(100 * MiB, MemoryCategory::activation), OutOfMemoryError);
    alloc->set_memory_limit(0);
  }
  ~Traced() {
    for (auto& a : live) alloc->deallocate(a);
  }
};

const std::string kNastyTitle = "say \"hi\" <b>bold</b> & \\path\t\x01 caf\xc3\xa9";

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + needle.size())) ++n;
  return n;
}

// The text of the element with id="peak-label" (empty if there is none).
std::string peak_label(const std::string& html) {
  size_t p = html.find("id=\"peak-label\"");
  if (p == std::string::npos) return "";
  size_t open = html.find('>', p), close = html.find("</text>", p);
  if (open == std::string::npos || close == std::string::npos || close < open) return "";
  return html.substr(open + 1, close - open - 1);
}

TEST(MemoryReport, JsonQuoteEscapesAndKeepsUtf8) {
  EXPECT_EQ(json_quote("plain"), "\"plain\"");
  EXPECT_EQ(json_quote("a\"b\\c\n\t\x01"), "\"a\\\"b\\\\c\\n\\t\\u0001\"");
  EXPECT_EQ(json_quote("<b>&"), "\"\\u003cb\\u003e\\u0026\"");
  // Valid UTF-8 passes through; invalid bytes (a lone continuation, a truncated sequence, an
  // overlong form) become U+FFFD, so the output is always valid JSON.
  EXPECT_EQ(json_quote("\xc2\xb5 \xe2\x82\xac \xf0\x9f\x98\x80"), "\"\xc2\xb5 \xe2\x82\xac \xf0\x9f\x98\x80\"");
  EXPECT_EQ(json_quote("a\x80z"), "\"a\\ufffdz\"");
  EXPECT_EQ(json_quote("\xe2\x82"), "\"\\ufffd\\ufffd\"");
  EXPECT_EQ(json_quote("\xc0\xaf"), "\"\\ufffd\\ufffd\"");
  EXPECT_EQ(parse_json(json_quote(kNastyTitle)).as_string(), kNastyTitle);
  EXPECT_EQ(html_escape("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
  // The test parser itself must reject what is not JSON.
  for (const char* bad : {"{\"a\":1,}", "[1 2]", "{\"a\" 1}", "\"x", "01", "[1]x", "{\"a\":\"\x01\"}"})
    EXPECT_THROW(parse_json(bad), std::runtime_error) << bad;
}

TEST(MemoryReport, FormatsDurations) {
  EXPECT_EQ(format_duration_ns(850), "850 ns");
  EXPECT_EQ(format_duration_ns(12345), "12.3 µs");
  EXPECT_EQ(format_duration_ns(4567000), "4.57 ms");
  EXPECT_EQ(format_duration_ns(123456789), "123 ms");
  EXPECT_EQ(format_duration_ns(2050000000), "2.05 s");
}

TEST(MemoryReport, StatsJsonHoldsEveryCounter) {
  Traced t;
  const MemoryStats s = t.alloc->stats();
  const Json j = parse_json(memory_stats_json(s));
  for (const char* k : {"allocated_bytes", "requested_bytes", "reserved_bytes", "active_bytes", "inactive_split_bytes",
                        "allocation", "segment", "active", "inactive_split"})
    for (const char* f : {"current", "peak", "allocated", "freed"}) ASSERT_TRUE(j[k].has(f)) << k << "." << f;
  EXPECT_EQ(j["allocated_bytes"]["current"].as_int(), s.allocated_bytes.current);
  EXPECT_EQ(j["allocated_bytes"]["peak"].as_int(), s.allocated_bytes.peak);
  EXPECT_EQ(j["reserved_bytes"]["peak"].as_int(), s.reserved_bytes.peak);
  EXPECT_EQ(j["segment"]["current"].as_int(), s.segment.current);
  ASSERT_EQ(j["category_bytes"].members.size(), static_cast<size_t>(kNumMemoryCategories));
  for (int c = 0; c < kNumMemoryCategories; ++c) {
    auto cat = static_cast<MemoryCategory>(c);
    EXPECT_EQ(j["category_bytes"][category_name(cat)]["peak"].as_int(), s.category(cat).peak) << category_name(cat);
    EXPECT_EQ(j["category_bytes"][category_name(cat)]["current"].as_int(), s.category(cat).current);
  }
  EXPECT_EQ(j["num_allocs"].as_int(), s.num_allocs);
  EXPECT_EQ(j["num_cache_hits"].as_int(), s.num_cache_hits);
  EXPECT_EQ(j["num_ooms"].as_int(), 1);
  EXPECT_EQ(j["num_alloc_retries"].as_int(), s.num_alloc_retries);
}

TEST(MemoryReport, SnapshotJsonListsSegmentsAndBlocks) {
  Traced t;
  const auto snap = t.alloc->snapshot();
  ASSERT_FALSE(snap.empty());
  const Json j = parse_json(snapshot_json(snap, Device::cpu()));
  EXPECT_EQ(j["device"].as_string(), "cpu");
  const Json& segs = j["segments"];
  ASSERT_EQ(segs.items.size(), snap.size());
  int64_t reserved = 0, allocated = 0;
  std::map<std::string, int> states;
  for (size_t s = 0; s < snap.size(); ++s) {
    EXPECT_EQ(static_cast<uint64_t>(segs[s]["address"].as_int()), snap[s].address);
    EXPECT_EQ(segs[s]["size"].as_int(), snap[s].size);
    EXPECT_EQ(segs[s]["pool"].as_string(), snap[s].small_pool ? "small" : "large");
    reserved += segs[s]["size"].as_int();
    const Json& blocks = segs[s]["blocks"];
    ASSERT_EQ(blocks.items.size(), snap[s].blocks.size());
    int64_t covered = 0;
    for (size_t b = 0; b < blocks.items.size(); ++b) {
      const Json& bj = blocks[b];
      for (const char* k : {"address", "size", "requested", "state", "stream", "category"}) ASSERT_TRUE(bj.has(k)) << k;
      EXPECT_EQ(static_cast<uint64_t>(bj["address"].as_int()), snap[s].blocks[b].address);
      covered += bj["size"].as_int();
      const std::string& state = bj["state"].as_string();
      ++states[state];
      if (state == "allocated") {
        allocated += bj["size"].as_int();
        EXPECT_EQ(bj["category"].as_string(), category_name(snap[s].blocks[b].category));
        EXPECT_GT(bj["requested"].as_int(), 0);
      } else {
        EXPECT_EQ(bj["category"].type, Json::Type::null);
      }
    }
    EXPECT_EQ(covered, snap[s].size) << "blocks must tile their segment";
  }
  const MemoryStats st = t.alloc->stats();
  EXPECT_EQ(reserved, st.reserved_bytes.current);
  EXPECT_EQ(allocated, st.allocated_bytes.current);
  EXPECT_EQ(j["reserved_bytes"].as_int(), reserved);
  EXPECT_EQ(j["allocated_bytes"].as_int(), allocated);
  EXPECT_EQ(states["allocated"], static_cast<int>(t.live.size()));
  EXPECT_GT(states["free"], 0);
}

TEST(MemoryReport, TraceJsonHasEveryEvent) {
  Traced t;
  const auto trace = t.alloc->trace();
  const Json j = parse_json(trace_json(trace));
  ASSERT_EQ(j["num_events"].as_int(), static_cast<int64_t>(trace.size()));
  const Json& ev = j["events"];
  ASSERT_EQ(ev.items.size(), trace.size());
  ASSERT_EQ(j["categories"].items.size(), static_cast<size_t>(kNumMemoryCategories));
  for (int c = 0; c < kNumMemoryCategories; ++c)
    EXPECT_EQ(j["categories"][static_cast<size_t>(c)].as_string(), category_name(static_cast<MemoryCategory>(c)));
  std::map<std::string, int> kinds_json, kinds_trace;
  for (size_t i = 0; i < trace.size(); ++i) {
    const Json& e = ev[i];
    ++kinds_json[e["kind"].as_string()];
    ++kinds_trace[trace_kind_name(trace[i].kind)];
    EXPECT_EQ(e["time_ns"].as_int(), trace[i].time_ns);
    EXPECT_EQ(e["bytes"].as_int(), trace[i].bytes);
    EXPECT_EQ(e["category"].as_string(), category_name(trace[i].category));
    EXPECT_EQ(e["allocated_after"].as_int(), trace[i].allocated_after);
    EXPECT_EQ(e["reserved_after"].as_int(), trace[i].reserved_after);
    ASSERT_EQ(e["category_after"].items.size(), static_cast<size_t>(kNumMemoryCategories));
    for (size_t c = 0; c < trace[i].category_after.size(); ++c)
      EXPECT_EQ(e["category_after"][c].as_int(), trace[i].category_after[c]);
  }
  EXPECT_EQ(kinds_json, kinds_trace);
  EXPECT_EQ(kinds_trace["oom"], 1);
  EXPECT_GT(kinds_trace["segment_alloc"], 0);
  EXPECT_GT(kinds_trace["segment_free"], 0);  // the OOM retry freed cached segments
}

TEST(MemoryReport, ChromeTraceHasACounterTrackPerCategory) {
  Traced t;
  const auto trace = t.alloc->trace();
  const std::string text = chrome_trace_json(trace, Device::cpu(), kNastyTitle);
  EXPECT_EQ(text.find("<b>"), std::string::npos) << "HTML-looking text must be escaped in JSON too";
  const Json j = parse_json(text);
  EXPECT_EQ(j["otherData"]["title"].as_string(), kNastyTitle);
  const Json& ev = j["traceEvents"];
  std::set<std::string> counters;
  std::map<std::string, int64_t> last;
  size_t ooms = 0, metadata = 0;
  double prev_ts = -1;
  for (const Json& e : ev.items) {
    const std::string& ph = e["ph"].as_string();
    EXPECT_TRUE(e.has("pid") && e.has("name")) << "every event needs pid and name";
    if (ph == "M") {
      ++metadata;
      EXPECT_NE(e["args"]["name"].as_string().find(kNastyTitle), std::string::npos);
      continue;
    }
    const double ts = e["ts"].as_double();
    EXPECT_GE(ts, prev_ts) << "timestamps go forward";
    prev_ts = ts;
    if (ph == "C") {
      counters.insert(e["name"].as_string());
      last[e["name"].as_string()] = e["args"]["bytes"].as_int();
      ASSERT_EQ(e["args"].members.size(), 1u) << "one value per counter track";
    } else if (ph == "i") {
      ++ooms;
      EXPECT_EQ(e["name"].as_string(), "out of memory");
      EXPECT_EQ(e["args"]["requested_bytes"].as_int(), static_cast<int64_t>(100 * MiB));
    } else {
      ADD_FAILURE() << "unexpected phase " << ph;
    }
  }
  EXPECT_EQ(metadata, 1u);
  EXPECT_EQ(ooms, 1u);
  std::set<std::string> expected = {"allocated", "reserved"};
  for (int c = 0; c < kNumMemoryCategories; ++c) expected.insert(category_name(static_cast<MemoryCategory>(c)));
  EXPECT_EQ(counters, expected);
  // Each track ends at the trace's final state; the timestamps are the trace's, in microseconds.
  const TraceEvent& end = trace.back();
  EXPECT_EQ(last["allocated"], end.allocated_after);
  EXPECT_EQ(last["reserved"], end.reserved_after);
  for (int c = 0; c < kNumMemoryCategories; ++c)
    EXPECT_EQ(last[category_name(static_cast<MemoryCategory>(c))], end.category_after[static_cast<size_t>(c)]);
  EXPECT_NEAR(prev_ts, static_cast<double>(end.time_ns) / 1e3, 1e-3);
}

TEST(MemoryReport, TimelineHtmlShowsCategoriesAndThePeak) {
  Traced t;
  const auto trace = t.alloc->trace();
  const MemoryStats s = t.alloc->stats();
  const std::string html = memory_timeline_html(trace, s, Device::cpu(), kNastyTitle);
  EXPECT_EQ(count(html, "<svg"), 1u);
  EXPECT_EQ(count(html, "</svg>"), 1u);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("http://", html.find("</svg>")), std::string::npos) << "nothing to fetch";
  EXPECT_EQ(html.find("<b>bold"), std::string::npos) << "the title must be escaped";
  EXPECT_NE(html.find("say &quot;hi&quot; &lt;b&gt;bold&lt;/b&gt; &amp;"), std::string::npos);
  // The peak label carries the allocator's peak (tracing was on from the start).
  const std::string label = peak_label(html);
  EXPECT_NE(label.find(format_bytes(s.allocated_bytes.peak)), std::string::npos) << label;
  // Legend: every category with its peak; areas for the categories that held memory.
  ASSERT_NE(html.find("class=\"legend\""), std::string::npos);
  for (int c = 0; c < kNumMemoryCategories; ++c) {
    auto cat = static_cast<MemoryCategory>(c);
    int64_t peak = 0;
    for (const auto& e : trace) peak = std::max(peak, e.category_after[static_cast<size_t>(c)]);
    EXPECT_EQ(peak, s.category(cat).peak) << category_name(cat);
    const std::string item = std::string(category_name(cat)) + " <b>peak " + format_bytes(peak) + "</b>";
    EXPECT_NE(html.find(item), std::string::npos) << item;
    EXPECT_EQ(html.find(std::string("class=\"area ") + category_name(cat) + "\"") != std::string::npos, peak > 0)
        << category_name(cat);
  }
  EXPECT_NE(html.find("class=\"reserved\""), std::string::npos);
  EXPECT_EQ(count(html, "class=\"oom\""), 1u);
  // Axes in byte units.
  EXPECT_NE(html.find(" MiB</text>"), std::string::npos);
}

TEST(MemoryReport, TimelineOfAnEmptyTraceSaysHowToRecordOne) {
  CachingAllocator alloc(std::make_unique<HostMemoryBackend>());
  const std::string html = memory_timeline_html({}, alloc.stats(), Device::cpu(), "nothing");
  EXPECT_NE(html.find("set_trace_enabled(true)"), std::string::npos);
  EXPECT_EQ(count(html, "<svg"), 1u);
  EXPECT_EQ(peak_label(html), "");
}

// A synthetic trace of 100k events: a random walk with one spike somewhere in the middle.
std::vector<TraceEvent> long_trace(size_t n, size_t spike_at, int64_t spike_bytes) {
  std::mt19937_64 rng(7);
  std::vector<TraceEvent> ev(n);
  int64_t act = 64 * MiB, par = 32 * MiB;
  for (size_t i = 0; i < n; ++i) {
    auto& e = ev[i];
    e.time_ns = static_cast<int64_t>(i) * 1000 + static_cast<int64_t>(rng() % 700);
    act = std::max<int64_t>(0, act + static_cast<int64_t>(rng() % (2 * MiB)) - static_cast<int64_t>(MiB));
    e.kind = i % 2 ? TraceKind::free : TraceKind::alloc;
    e.category = MemoryCategory::activation;
    e.category_after[static_cast<size_t>(MemoryCategory::parameter)] = par;
    e.category_after[static_cast<size_t>(MemoryCategory::activation)] = act;
    if (i == spike_at) e.category_after[static_cast<size_t>(MemoryCategory::temporary)] = spike_bytes;
    e.allocated_after = par + act + (i == spike_at ? spike_bytes : 0);
    e.reserved_after = e.allocated_after + 8 * MiB;
  }
  return ev;
}

TEST(MemoryReport, DownsamplingKeepsThePeak) {
  const size_t n = 100000, spike_at = 61237;
  const int64_t spike = 3 * 1024 * static_cast<int64_t>(MiB);
  auto ev = long_trace(n, spike_at, spike);
  const auto pts = downsample_timeline(ev);
  ASSERT_LE(pts.size(), kTimelineMaxPoints);
  EXPECT_GT(pts.size(), kTimelineMaxPoints / 2);
  int64_t max_alloc = 0, max_res = 0, true_res = 0;
  for (size_t i = 0; i < pts.size(); ++i) {
    if (i > 0) {
      EXPECT_LE(pts[i - 1].time_ns, pts[i].time_ns);
    }
    max_alloc = std::max(max_alloc, pts[i].allocated);
    max_res = std::max(max_res, pts[i].reserved);
    int64_t sum = 0;
    for (int64_t v : pts[i].category) sum += v;
    EXPECT_EQ(sum, pts[i].allocated) << "a point's categories come from one event";
  }
  for (const auto& e : ev) true_res = std::max(true_res, e.reserved_after);
  EXPECT_EQ(max_alloc, ev[spike_at].allocated_after);
  EXPECT_EQ(max_res, true_res);
  EXPECT_EQ(pts.back().time_ns, ev.back().time_ns);
  EXPECT_EQ(pts.back().allocated, ev.back().allocated_after);
  EXPECT_EQ(pts.front().time_ns, ev.front().time_ns);
  // Short traces are kept whole.
  std::vector<TraceEvent> few(ev.begin(), ev.begin() + 1500);
  EXPECT_EQ(downsample_timeline(few).size(), few.size());
  EXPECT_THROW(downsample_timeline(few, 2), ValueError);
  for (size_t m : {3u, 4u, 17u}) {
    auto tiny = downsample_timeline(ev, m);
    EXPECT_LE(tiny.size(), m);
    EXPECT_EQ(tiny.front().time_ns, ev.front().time_ns);
    EXPECT_EQ(tiny.back().time_ns, ev.back().time_ns);
    int64_t mx = 0;
    for (const auto& p : tiny) mx = std::max(mx, p.allocated);
    EXPECT_EQ(mx, ev[spike_at].allocated_after) << m;
  }

  // The page stays small and still names the spike as the peak, with its time.
  MemoryStats s;
  s.allocated_bytes.add(ev[spike_at].allocated_after);
  const std::string html = memory_timeline_html(ev, s, Device::cpu(), "long run");
  EXPECT_LT(html.size(), 512 * KiB) << "a 100k-event trace must make a small page";
  const std::string label = peak_label(html);
  EXPECT_NE(label.find(format_bytes(s.allocated_bytes.peak)), std::string::npos) << label;
  EXPECT_NE(label.find(format_duration_ns(ev[spike_at].time_ns - ev.front().time_ns)), std::string::npos) << label;
  EXPECT_NE(html.find("drawn as " + std::to_string(pts.size()) + " points"), std::string::npos);
}

// A fresh empty directory under the system temp dir, removed when the test ends.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "headroom-memrep-XXXXXX").string();
    char* made = mkdtemp(tmpl.data());
    if (!made) throw std::runtime_error("mkdtemp failed");
    path = made;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

TEST(MemoryReport, WritesAllFilesForTheDeviceAllocator) {
  TempDir tmp;
  CachingAllocator& alloc = caching_allocator(Device::cpu());
  alloc.clear_trace();
  alloc.set_trace_enabled(true);
  {
    CategoryScope scope(MemoryCategory::activation);
    Tensor a = Tensor::randn({128, 128});
    Tensor b = exp(a);
  }
  alloc.set_trace_enabled(false);
  const fs::path dir = tmp.path / "nested" / "report";
  write_memory_report(dir.string(), Device::cpu(), "unit test");
  alloc.clear_trace();
  for (const char* name : {"stats.json", "snapshot.json", "trace.json", "trace.chrome.json"}) {
    const std::string text = read_file(dir / name);
    ASSERT_FALSE(text.empty()) << name;
    EXPECT_NO_THROW(parse_json(text)) << name;
  }
  const Json trace = parse_json(read_file(dir / "trace.json"));
  EXPECT_GE(trace["num_events"].as_int(), 4);  // two allocations and their frees at least
  const std::string html = read_file(dir / "timeline.html");
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_NE(html.find("unit test"), std::string::npos);
  EXPECT_NE(peak_label(html), "");

  // A directory that cannot be made (a file is in the way) names the path.
  std::ofstream(tmp.path / "blocker") << "x";
  const std::string bad = (tmp.path / "blocker" / "report").string();
  EXPECT_THROW_WITH(write_memory_report(bad, Device::cpu(), "x"), IOError, bad);
}

// Several devices: a folder of files per device and an index with a row for each.
TEST(MemoryReport, SeveralDevicesEachTheirOwnFilesAndARowInTheIndex) {
  TempDir tmp;
  const std::vector<Device> devices{Device::cpu(0), Device::cpu(2)};
  Tensor keep0 = Tensor::zeros({64, 64}, Device::cpu(0));
  Tensor keep2 = Tensor::zeros({256, 64}, Device::cpu(2));
  const fs::path dir = tmp.path / "several";
  write_memory_report(dir.string(), devices, "placed model");
  for (const char* folder : {"cpu", "cpu_2"})
    for (const char* name : {"stats.json", "snapshot.json", "trace.json", "trace.chrome.json", "timeline.html"})
      EXPECT_FALSE(read_file(dir / folder / name).empty()) << folder << "/" << name;
  const Json stats2 = parse_json(read_file(dir / "cpu_2" / "stats.json"));
  EXPECT_GE(stats2["allocated_bytes"]["peak"].as_int(), 256 * 64 * 4);
  const std::string index = read_file(dir / "index.html");
  EXPECT_NE(index.find("href=\"cpu/timeline.html\""), std::string::npos);
  EXPECT_NE(index.find("href=\"cpu_2/timeline.html\""), std::string::npos);
  EXPECT_NE(index.find("2 devices"), std::string::npos);
  EXPECT_THROW_WITH(write_memory_report(dir.string(), std::vector<Device>{}, "x"), ValueError, "no devices");
}

// Runs a command, returns its exit status and standard output.
std::pair<int, std::string> run_command(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {-1, ""};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// The start tags <tag ...> of `html` (as a browser serialises them: attributes in double quotes).
std::vector<std::string> start_tags(const std::string& html, const std::string& tag) {
  std::vector<std::string> tags;
  const std::string open = "<" + tag + " ";
  for (size_t p = html.find(open); p != std::string::npos; p = html.find(open, p + 1)) {
    const size_t close = html.find('>', p);
    if (close == std::string::npos) break;
    tags.push_back(html.substr(p, close - p + 1));
  }
  return tags;
}

// The value of attribute `name` in a start tag; nullopt when it has none.
std::optional<std::string> attribute(const std::string& tag, const std::string& name) {
  const std::string key = " " + name + "=\"";
  const size_t p = tag.find(key);
  if (p == std::string::npos) return std::nullopt;
  const size_t begin = p + key.size(), end = tag.find('"', begin);
  if (end == std::string::npos) return std::nullopt;
  return tag.substr(begin, end - begin);
}

// The one start tag <tag ...> with name="value", or "" when there is none (two fail the test).
std::string tag_with(const std::string& html, const std::string& tag, const std::string& name,
                     const std::string& value) {
  std::string found;
  for (const std::string& t : start_tags(html, tag))
    if (attribute(t, name) == value) {
      EXPECT_EQ(found, "") << "two <" << tag << "> with " << name << "=" << value;
      found = t;
    }
  return found;
}

// Width and height that the probe script below measured in the browser's layout ("W.WxH.H").
std::pair<double, double> rendered_size(const std::string& tag) {
  const auto size = attribute(tag, "data-rendered");
  if (!size || size->find('x') == std::string::npos) return {0, 0};
  const size_t x = size->find('x');
  return {std::stod(size->substr(0, x)), std::stod(size->substr(x + 1))};
}

// Measures what Chromium laid out: each category's area, the peak marker and its label (SVG
// boxes) and each legend entry (its box on the page), written into data-rendered="WxH" so that
// --dump-dom shows them. The report's own page has no script (TimelineHtmlShowsCategories...
// checks), so the test adds this one to a copy of it; it runs as the page is parsed, after the
// SVG and the legend, before --dump-dom serialises the document.
const char* kLayoutProbe = R"(<script>
const size = (w, h) => w.toFixed(1) + 'x' + h.toFixed(1);
for (const e of document.querySelectorAll('#timeline path.area, #peak, #peak-label')) {
  const b = e.getBBox();
  e.setAttribute('data-rendered', size(b.width, b.height));
}
for (const e of document.querySelectorAll('ul.legend li[data-category]')) {
  const b = e.getBoundingClientRect();
  e.setAttribute('data-rendered', size(b.width, b.height));
}
</script>
)";

// The timeline as a browser shows it: rendered by headless Chromium, read back from its DOM
// (--dump-dom) through the page's hooks (Note [timeline hooks] in report/memory_report.cpp), and
// screenshot. Skipped without /usr/bin/chromium, unless HEADROOM_REQUIRE_CHROMIUM=1 (set by
// scripts/run-tests.sh, whose scripts/setup.sh installs it): there a missing browser fails, so
// CI cannot pass this test without rendering the page.
TEST(MemoryReport, TimelineRendersInHeadlessChromium) {
  const char* chromium = "/usr/bin/chromium";
  if (access(chromium, X_OK) != 0) {
    const char* required = std::getenv("HEADROOM_REQUIRE_CHROMIUM");
    if (required && std::string(required) == "1")
      FAIL() << "no " << chromium << ", and HEADROOM_REQUIRE_CHROMIUM=1 says the timeline must be rendered: "
             << "apt-get install --no-install-recommends chromium fonts-dejavu-core (scripts/setup.sh does)";
    GTEST_SKIP() << "no " << chromium << ": install it (apt-get install chromium) to render timeline.html";
  }
  Traced t;
  const std::vector<TraceEvent> trace = t.alloc->trace();
  const MemoryStats s = t.alloc->stats();
  ASSERT_FALSE(trace.empty());
  TempDir tmp;
  const std::string html = memory_timeline_html(trace, s, Device::cpu(), kNastyTitle);
  const fs::path page = tmp.path / "timeline.html";
  std::ofstream(page, std::ios::binary) << html;
  const size_t body_end = html.rfind("</body>");
  ASSERT_NE(body_end, std::string::npos);
  const fs::path probed = tmp.path / "timeline-probed.html";
  std::ofstream(probed, std::ios::binary) << html.substr(0, body_end) << kLayoutProbe << html.substr(body_end);

  const std::string flags = std::string(chromium) +
                            " --headless --no-sandbox --disable-gpu --disable-quic --no-first-run"
                            " --disable-background-networking --disable-component-update --disable-sync"
                            " --disable-dev-shm-usage --hide-scrollbars --window-size=1200,900 --user-data-dir=";
  // A fresh profile for each run: Chromium refuses to share one between processes.
  const std::string dom_cmd = "timeout 120 " + flags + (tmp.path / "profile-dom").string() + " --dump-dom file://" +
                              probed.string() + " 2>/dev/null";
  auto [rc, dom] = run_command(dom_cmd);
  ASSERT_EQ(rc, 0) << dom_cmd;
  ASSERT_NE(dom.find("<svg"), std::string::npos) << dom.substr(0, 2000);
  ASSERT_NE(dom.find("class=\"legend\""), std::string::npos) << dom.substr(0, 2000);

  // Each category the trace holds memory in: a legend entry with its name and peak, and an area
  // that the browser drew with a size; a category it never held: an "unused" entry and no area.
  int present = 0;
  for (int c = 0; c < kNumMemoryCategories; ++c) {
    const std::string name = category_name(static_cast<MemoryCategory>(c));
    int64_t peak = 0;
    for (const auto& e : trace) peak = std::max(peak, e.category_after[static_cast<size_t>(c)]);
    present += peak > 0;
    const std::string item = tag_with(dom, "li", "data-category", name);
    ASSERT_NE(item, "") << "no legend entry for " << name;
    EXPECT_EQ(attribute(item, "class"), peak > 0 ? "used" : "unused") << item;
    EXPECT_EQ(attribute(item, "data-peak-bytes"), std::to_string(peak)) << item;
    const size_t text = dom.find(item) + item.size();
    EXPECT_NE(dom.substr(text, dom.find("</li>", text) - text).find(name + " <b>peak " + format_bytes(peak)),
              std::string::npos)
        << name;
    const auto [item_w, item_h] = rendered_size(item);
    EXPECT_GT(item_w * item_h, 0) << "the legend entry of " << name << " is not laid out: " << item;
    const std::string area = tag_with(dom, "path", "data-category", name);
    if (peak == 0) {
      EXPECT_EQ(area, "") << name << " held no memory but has an area";
      continue;
    }
    ASSERT_NE(area, "") << name << " held up to " << peak << " bytes but has no area";
    EXPECT_EQ(attribute(area, "class"), "area " + name);
    EXPECT_EQ(attribute(area, "d").value_or("").substr(0, 1), "M") << area;
    const auto [w, h] = rendered_size(area);
    EXPECT_GT(w, 0) << "the area of " << name << " has no width: " << area;
    EXPECT_GT(h, 0) << "the area of " << name << " has no height: " << area;
  }
  EXPECT_GE(present, 5) << "the traced scenario uses most categories";
  int areas = 0;
  for (const std::string& tag : start_tags(dom, "path"))
    areas += attribute(tag, "class").value_or("").starts_with("area ");
  EXPECT_EQ(areas, present) << "one area per category that held memory";

  // The peak marker: the most allocated in the trace (the allocator's own peak, since tracing
  // was on from the start), at the first event that reached it, and drawn.
  int64_t peak = 0;
  size_t peak_at = 0;
  for (size_t i = 0; i < trace.size(); ++i)
    if (trace[i].allocated_after > peak) {
      peak = trace[i].allocated_after;
      peak_at = i;
    }
  EXPECT_EQ(peak, s.allocated_bytes.peak);
  const std::string marker = tag_with(dom, "g", "id", "peak");
  ASSERT_NE(marker, "") << "no peak marker";
  EXPECT_EQ(attribute(marker, "data-bytes"), std::to_string(peak)) << marker;
  EXPECT_EQ(attribute(marker, "data-time-ns"), std::to_string(trace[peak_at].time_ns - trace.front().time_ns));
  EXPECT_GT(rendered_size(marker).first, 0) << marker;
  const std::string label = peak_label(dom);
  EXPECT_NE(label.find(format_bytes(peak)), std::string::npos) << label;
  EXPECT_NE(label.find(format_duration_ns(trace[peak_at].time_ns - trace.front().time_ns)), std::string::npos) << label;
  const auto [label_w, label_h] = rendered_size(tag_with(dom, "text", "id", "peak-label"));
  EXPECT_GT(label_w * label_h, 0) << "the peak label is not drawn (no font?)";

  // The screenshot of the page itself (no probe): a 1200x900 picture with something on it.
  const fs::path png = tmp.path / "timeline.png";
  const std::string shot_cmd = "timeout 120 " + flags + (tmp.path / "profile-shot").string() +
                               " --screenshot=" + png.string() + " file://" + page.string() + " >/dev/null 2>&1";
  auto [rc2, ignored] = run_command(shot_cmd);
  ASSERT_EQ(rc2, 0) << shot_cmd;
  const std::string img = read_file(png);
  ASSERT_GT(img.size(), 10 * KiB) << "a blank 1200x900 page compresses to far less";
  EXPECT_EQ(img.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
}

}  // namespace
}  // namespace headroom
