// End-to-end tests of bench/headroom-bench: --list, a clear error for an unknown preset, a run
// of two cpu presets whose reported peaks are checked against the allocator's own statistics
// (copied into results.json by the library's serialiser) and against sizes the test computes
// itself (parameters and optimizer state), the CSV, the Markdown table and the SVG plot, an
// out-of-memory configuration that becomes a row while the next one runs, and
// pytorch_reference.py --compare on the run's JSON and a PyTorch file written here.
#include <cmath>
#include <regex>
#include <set>

#include "tests/examples/program_runner.h"

namespace {

using namespace program_runner;

std::string bench() { return std::string(HEADROOM_BINARY_DIR) + "/bench/headroom-bench"; }

const char* const kCategories[] = {"parameter", "gradient",  "optimizer_state", "activation",
                                   "temporary", "workspace", "communication"};

// Bytes the caching allocator hands out for a tensor of `n` f32 values (rounded to 512 B).
int64_t f32_block(int64_t n) { return (n * 4 + 511) / 512 * 512; }

// An SVG (or any XML without comments or CDATA) is well formed: every tag closes in order.
// Returns "" or what is wrong.
std::string xml_problem(const std::string& s) {
  std::vector<std::string> stack;
  size_t i = 0;
  while ((i = s.find('<', i)) != std::string::npos) {
    const size_t end = s.find('>', i);
    if (end == std::string::npos) return "unterminated tag at " + std::to_string(i);
    std::string tag = s.substr(i + 1, end - i - 1);
    i = end + 1;
    if (tag.empty()) return "empty tag";
    if (tag[0] == '?' || tag[0] == '!') continue;
    const bool closing = tag[0] == '/', self_closing = tag.back() == '/';
    std::string name = tag.substr(closing ? 1 : 0);
    name = name.substr(0, name.find_first_of(" \t\n/"));
    if (closing) {
      if (stack.empty() || stack.back() != name)
        return "</" + name + "> does not close " + (stack.empty() ? "anything" : "<" + stack.back() + ">");
      stack.pop_back();
    } else if (!self_closing) {
      stack.push_back(name);
    }
    // Text between tags must not hold a raw '&' that is not an entity.
    const size_t next = s.find('<', i);
    const std::string text = s.substr(i, next == std::string::npos ? std::string::npos : next - i);
    for (size_t a = text.find('&'); a != std::string::npos; a = text.find('&', a + 1))
      if (!std::regex_search(text.substr(a), std::regex("^&(#\\d+|#x[0-9a-fA-F]+|[a-z]+);"))) return "raw & in " + text;
  }
  return stack.empty() ? "" : "<" + stack.back() + "> never closed";
}

TEST(HeadroomBench, ListPrintsEveryPreset) {
  RunResult r = run_program(bench(), "--list");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* name : {"gpt2-small-f32-naive",
                           "gpt2-small-f32-fused",
                           "gpt2-small-f16-naive",
                           "gpt2-small-f16-fused",
                           "gpt2-small-bf16-naive",
                           "gpt2-small-bf16-fused",
                           "mlp-f32",
                           "resnet18-f32",
                           "gpt-tiny-cpu-f32-naive",
                           "gpt-tiny-cpu-f32-fused",
                           "gpt-tiny-cpu-f16-fused",
                           "gpt-tiny-cpu-bf16-fused",
                           "mlp-cpu-f32",
                           "resnet18-cpu-f32",
                           "gpt2-small-bf16-fused-ckpt-block",
                           "gpt2-small-bf16-fused-ckpt-sqrt",
                           "resnet18-f32-ckpt-block",
                           "resnet18-f32-ckpt-sqrt",
                           "gpt-tiny-cpu-f32-fused-ckpt-block",
                           "resnet18-cpu-f32-ckpt-block",
                           "resnet18-cpu-f32-ckpt-sqrt"})
    EXPECT_TRUE(std::regex_search(r.output, std::regex(std::string("\n  ") + name + " +\\S"))) << name << " missing:\n"
                                                                                               << r.output;
  EXPECT_NE(r.output.find("B=8 T=1024"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("784-4096-4096-4096-10, batch 4096"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("3x32x32, batch 256"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("mixed precision (autocast"), std::string::npos) << r.output;
}

TEST(HeadroomBench, UnknownPresetIsAClearErrorWithExitCode2) {
  TempDir out("bench-unknown");
  RunResult r = run_program(bench(), "--preset mlp-cpu-f32,no-such-preset --out '" + out.path.string() + "'");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("unknown preset 'no-such-preset'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("mlp-cpu-f32"), std::string::npos) << "the error should list the presets:\n" << r.output;
  EXPECT_FALSE(fs::exists(out.path / "results.json")) << "nothing runs when a name is wrong";
  r = run_program(bench(), "");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("no preset given"), std::string::npos) << r.output;
  r = run_program(bench(), "--preset mlp-cpu-f32 --steps 0");
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

TEST(HeadroomBench, CpuPresetsReportTheAllocatorsPeaks) {
  TempDir out("bench-cpu");
  RunResult r =
      run_program(bench(), "--preset mlp-cpu-f32 --preset gpt-tiny-cpu-f32-fused --steps 3 --warmup 1 --out '" +
                               out.path.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* file : {"results.json", "results.csv", "results.md", "memory_vs_throughput.svg"})
    ASSERT_TRUE(fs::exists(out.path / file)) << file;

  const Json doc = parse_json(read_text(out.path / "results.json"));
  EXPECT_EQ(doc["schema"].as_int(), 1);
  EXPECT_EQ(doc["framework"].str, "headroom");
  EXPECT_EQ(doc["device"].str, "cpu");
  EXPECT_EQ(doc["steps"].as_int(), 3);
  EXPECT_EQ(doc["warmup_steps"].as_int(), 1);
  const Json& results = doc["results"];
  ASSERT_EQ(results.items.size(), 2u);
  EXPECT_EQ(results[0]["preset"].str, "mlp-cpu-f32");
  EXPECT_EQ(results[1]["preset"].str, "gpt-tiny-cpu-f32-fused");

  for (const Json& res : results.items) {
    SCOPED_TRACE(res["preset"].str);
    ASSERT_EQ(res["status"].str, "ok") << res["error"].str;
    const Json& stats = res["allocator_stats"];
    // The reported figures are the allocator's.
    const int64_t peak = res["peak_allocated_bytes"].as_int();
    EXPECT_EQ(peak, stats["allocated_bytes"]["peak"].as_int());
    EXPECT_EQ(res["peak_reserved_bytes"].as_int(), stats["reserved_bytes"]["peak"].as_int());
    int64_t sum = 0, largest = 0;
    for (const char* cat : kCategories) {
      const int64_t c = res["peak_by_category"][cat].as_int();
      EXPECT_EQ(c, stats["category_bytes"][cat]["peak"].as_int()) << cat;
      sum += c;
      largest = std::max(largest, c);
    }
    // The total's peak is at least each category's and at most their sum (peaks need not coincide).
    EXPECT_GT(peak, 0);
    EXPECT_GE(peak, largest);
    EXPECT_LE(peak, sum);
    EXPECT_GE(res["peak_reserved_bytes"].as_int(), peak);
    EXPECT_GT(res["peak_by_category"]["activation"].as_int(), 0);
    // Timing and throughput agree with each other.
    const double ms = res["step_time_ms"].num;
    EXPECT_GT(ms, 0);
    EXPECT_LE(res["step_time_ms_min"].num, ms);
    EXPECT_GE(res["step_time_ms_max"].num, ms);
    EXPECT_NEAR(res["items_per_second"].num, static_cast<double>(res["items_per_step"].as_int()) / (ms / 1000.0),
                1e-6 * res["items_per_second"].num);
    EXPECT_EQ(res["final_loss"].kind, Json::number);
    EXPECT_TRUE(std::isfinite(res["final_loss"].num));
  }

  // Sizes computed here: the MLP's parameters (784-512-512-512-10), each weight and bias its
  // own block; SGD with momentum keeps one buffer of each; gradients need at least as much.
  int64_t params = 0, param_bytes = 0;
  const int64_t widths[] = {784, 512, 512, 512, 10};
  for (int i = 0; i + 1 < 5; ++i) {
    params += widths[i] * widths[i + 1] + widths[i + 1];
    param_bytes += f32_block(widths[i] * widths[i + 1]) + f32_block(widths[i + 1]);
  }
  const Json& mlp = results[0];
  EXPECT_EQ(mlp["parameters"].as_int(), params);
  EXPECT_EQ(mlp["peak_by_category"]["parameter"].as_int(), param_bytes);
  EXPECT_EQ(mlp["peak_by_category"]["optimizer_state"].as_int(), param_bytes);
  EXPECT_GE(mlp["peak_by_category"]["gradient"].as_int(), param_bytes);
  EXPECT_EQ(mlp["items_per_step"].as_int(), 256);
  EXPECT_EQ(mlp["item_unit"].str, "images");
  // AdamW keeps two moments per parameter.
  const Json& gpt = results[1];
  EXPECT_EQ(gpt["peak_by_category"]["optimizer_state"].as_int(), 2 * gpt["peak_by_category"]["parameter"].as_int());
  EXPECT_EQ(gpt["items_per_step"].as_int(), 4 * 128);
  EXPECT_EQ(gpt["item_unit"].str, "tokens");
  EXPECT_EQ(gpt["technique"].str, "fused attention");

  // The CSV: a header and a row per configuration, with the JSON's numbers.
  const std::string csv = read_text(out.path / "results.csv");
  ASSERT_EQ(count_of(csv, "\n"), 3) << csv;
  EXPECT_EQ(csv.rfind("preset,framework,mode,device,model,", 0), 0u) << csv;
  EXPECT_NE(csv.find("\nmlp-cpu-f32,headroom,eager,cpu,mlp-small,256,0,256,images,f32,pure,none,ok," +
                     std::to_string(params) + "," + std::to_string(mlp["peak_allocated_bytes"].as_int()) + "," +
                     std::to_string(mlp["peak_reserved_bytes"].as_int()) + "," + std::to_string(param_bytes) + ","),
            std::string::npos)
      << csv;

  // The Markdown table on stdout, one row per configuration.
  EXPECT_NE(r.output.find("| preset | precision | technique | status | peak allocated |"), std::string::npos)
      << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex(R"(\| mlp-cpu-f32 \| f32 \| none \| ok \| [0-9.]+ MiB \|)")))
      << r.output;
  EXPECT_TRUE(
      std::regex_search(r.output, std::regex(R"(\| gpt-tiny-cpu-f32-fused \| f32 \| fused attention \| ok \|)")))
      << r.output;
  EXPECT_EQ(read_text(out.path / "results.md").find("| mlp-cpu-f32 |") != std::string::npos, true);

  // The SVG: well formed, one point per configuration, each labelled.
  const std::string svg = read_text(out.path / "memory_vs_throughput.svg");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u) << svg.substr(0, 100);
  EXPECT_EQ(xml_problem(svg), "");
  EXPECT_EQ(count_of(svg, "<circle class=\"point\""), 2) << svg;
  EXPECT_NE(svg.find(">mlp-cpu-f32</text>"), std::string::npos);
  EXPECT_NE(svg.find(">gpt-tiny-cpu-f32-fused</text>"), std::string::npos);
}

// A -ckpt- preset is measured against its base (the name without the suffix) from the same run:
// the JSON's checkpoint_overhead holds the ratios of the two rows' own numbers, the Markdown
// prints them, and a checkpointed preset whose base did not run says so instead. Checkpointing
// changes memory, not arithmetic: the losses equal the base's bit for bit (BatchNorm included).
TEST(HeadroomBench, CheckpointPresetsReportTheirOverheadAgainstTheirBase) {
  TempDir out("bench-ckpt");
  RunResult r = run_program(bench(),
                            "--preset resnet18-cpu-f32-ckpt-sqrt,resnet18-cpu-f32,resnet18-cpu-f32-ckpt-block,"
                            "gpt-tiny-cpu-f32-fused-ckpt-block --steps 2 --warmup 1 --out '" +
                                out.path.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Json doc = parse_json(read_text(out.path / "results.json"));
  const Json& results = doc["results"];
  ASSERT_EQ(results.items.size(), 4u);
  for (const Json& res : results.items)
    ASSERT_EQ(res["status"].str, "ok") << res["preset"].str << ": " << res["error"].str;
  const Json &sqrt_row = results[0], &base = results[1], &block_row = results[2];
  EXPECT_EQ(sqrt_row["technique"].str, "checkpoint sqrt(n) segments");
  EXPECT_EQ(block_row["technique"].str, "checkpoint per stage");
  EXPECT_EQ(results[3]["technique"].str, "fused attention, checkpoint per block");
  EXPECT_EQ(block_row["final_loss"].num, base["final_loss"].num);
  EXPECT_EQ(sqrt_row["final_loss"].num, base["final_loss"].num);

  const Json& overhead = doc["checkpoint_overhead"];
  ASSERT_EQ(overhead.items.size(), 2u) << "one pair per checkpointed preset whose base ran";
  auto act = [](const Json& res) { return static_cast<double>(res["peak_by_category"]["activation"].as_int()); };
  const Json* ckpts[] = {&sqrt_row, &block_row};
  for (size_t i = 0; i < 2; ++i) {
    const Json& o = overhead[i];
    const Json& ck = *ckpts[i];
    SCOPED_TRACE(ck["preset"].str);
    EXPECT_EQ(o["preset"].str, ck["preset"].str);
    EXPECT_EQ(o["base"].str, "resnet18-cpu-f32");
    EXPECT_NEAR(o["step_time_ratio"].num, ck["step_time_ms"].num / base["step_time_ms"].num, 1e-6);
    EXPECT_NEAR(o["activation_peak_ratio"].num, act(base) / act(ck), 1e-6);
    EXPECT_NEAR(o["peak_allocated_ratio"].num,
                static_cast<double>(base["peak_allocated_bytes"].as_int()) /
                    static_cast<double>(ck["peak_allocated_bytes"].as_int()),
                1e-6);
    EXPECT_GT(o["activation_peak_ratio"].num, 1.0) << "checkpointing keeps fewer activations";
  }
  EXPECT_TRUE(std::regex_search(
      r.output,
      std::regex(R"(\| resnet18-cpu-f32-ckpt-block \| resnet18-cpu-f32 \| [0-9.]+x \| [0-9.]+x \| [0-9.]+x \|)")))
      << r.output;
  EXPECT_NE(r.output.find("gpt-tiny-cpu-f32-fused-ckpt-block: no checkpointing overhead: its base preset "
                          "gpt-tiny-cpu-f32-fused did not run"),
            std::string::npos)
      << r.output;
}

TEST(HeadroomBench, OutOfMemoryIsARowAndTheNextConfigurationRuns) {
  TempDir out("bench-oom");
  // GPT-2 small's token embedding alone (50304 x 768 f32, 147 MiB) does not fit in 64 MiB.
  RunResult r =
      run_program(bench(), "--memory-limit 64MiB --preset gpt2-small-f32-fused,mlp-cpu-f32 --steps 2 --out '" +
                               out.path.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Json doc = parse_json(read_text(out.path / "results.json"));
  const Json& results = doc["results"];
  ASSERT_EQ(results.items.size(), 2u);
  EXPECT_EQ(results[0]["status"].str, "oom");
  EXPECT_EQ(results[0]["oom_requested_bytes"].as_int(), int64_t{50304} * 768 * 4);
  EXPECT_NE(results[0]["error"].str.find("out of memory"), std::string::npos) << results[0]["error"].str;
  EXPECT_EQ(results[0]["step_time_ms"].kind, Json::null);
  EXPECT_EQ(results[0]["final_loss"].kind, Json::null);
  EXPECT_EQ(results[1]["status"].str, "ok");
  EXPECT_LE(results[1]["peak_reserved_bytes"].as_int(), int64_t{64} << 20);
  EXPECT_NE(r.output.find("| gpt2-small-f32-fused | f32 | fused attention | OOM (asked for 147.38 MiB) |"),
            std::string::npos)
      << r.output;
  const std::string svg = read_text(out.path / "memory_vs_throughput.svg");
  EXPECT_EQ(xml_problem(svg), "");
  EXPECT_EQ(count_of(svg, "<circle class=\"point\""), 1);
  EXPECT_NE(svg.find("gpt2-small-f32-fused: out of memory (asked for 147.38 MiB)"), std::string::npos) << svg;
}

TEST(HeadroomBench, PytorchReferenceComparesWithTheRunsJson) {
  if (std::system("python3 -c 'import json' >/dev/null 2>&1") != 0) GTEST_SKIP() << "no python3";
  TempDir out("bench-compare");
  RunResult r = run_program(bench(), "--preset mlp-cpu-f32 --steps 2 --warmup 1 --out '" + out.path.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Json doc = parse_json(read_text(out.path / "results.json"));
  const Json& mine = doc["results"][0];
  // A PyTorch file as pytorch_reference.py writes it: eager at half headroom's throughput and
  // twice its peak, compile at twice the throughput and the same peak.
  auto row = [&](const char* mode, double ips_scale, double mem_scale) {
    return std::string("{\"preset\": \"mlp-cpu-f32\", \"framework\": \"pytorch\", \"mode\": \"") + mode +
           "\", \"precision_mode\": \"pure\", \"status\": \"ok\", \"items_per_second\": " +
           std::to_string(mine["items_per_second"].num * ips_scale) + ", \"peak_allocated_bytes\": " +
           std::to_string(
               static_cast<int64_t>(static_cast<double>(mine["peak_allocated_bytes"].as_int()) * mem_scale)) +
           ", \"peak_reserved_bytes\": " + std::to_string(mine["peak_reserved_bytes"].as_int()) + "}";
  };
  write_text(out.path / "torch.json",
             "{\"schema\": 1, \"framework\": \"pytorch\", \"device\": \"cpu\", "
             "\"device_name\": \"cpu, 2 threads\", \"results\": [" +
                 row("eager", 0.5, 2.0) + ", " + row("compile", 2.0, 1.0) + "]}");
  const std::string script = std::string(HEADROOM_SOURCE_DIR) + "/bench/pytorch_reference.py";
  const std::string cmd = "python3 '" + script + "' --compare '" + (out.path / "results.json").string() + "' '" +
                          (out.path / "torch.json").string() + "' 2>&1";
  RunResult c;
  FILE* pipe = popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) c.output.append(buf, n);
  c.exit_code = WEXITSTATUS(pclose(pipe));
  ASSERT_EQ(c.exit_code, 0) << c.output;
  // items/s ratio, peak allocated ratio, peak reserved ratio: eager then compile.
  EXPECT_TRUE(std::regex_search(
      c.output,
      std::regex(R"(\| mlp-cpu-f32 \| .*\| 2\.00x \| 0\.50x \| 1\.00x \| .*\| 0\.50x \| 1\.00x \| 1\.00x \|)")))
      << c.output;
  EXPECT_NE(c.output.find("pytorch eager items/s, peak"), std::string::npos) << c.output;
  EXPECT_NE(c.output.find("pytorch compile items/s, peak"), std::string::npos) << c.output;
}

}  // namespace
