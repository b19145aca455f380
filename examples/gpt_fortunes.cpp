// A character-level GPT trained on the English text of Debian's fortunes package: the model of
// issue 5 (nn::GPT, fused or naive attention, chunked loss) learning something a person can
// read, on the CPU, in a couple of minutes.
//
//   ./gpt_fortunes                              # defaults: 3 layers, 4 heads, 96 wide, T=64
//   ./gpt_fortunes --steps 2000 --n-layer 4 --n-embd 128   # longer and bigger: better fortunes
//   ./gpt_fortunes --attention naive --memory-report report   # the textbook attention, traced
//   ./gpt_fortunes --precision bf16 --micro-batches 2 --memory-limit 64MiB   # the common training flags
//   ./gpt_fortunes --pipeline 3 --schedule 1f1b --micro-batches 4   # stages on cpu:0..cpu:2
//   ./gpt_fortunes --tensor-parallel 2                        # each block split over cpu:0, cpu:1
//
// Data: every plain-text fortune file in /usr/share/games/fortunes (the files without an
// extension; the .dat indexes and the .u8 links are skipped), decoded as UTF-8, with the
// overstrike sequences some files use for underlining ("_\bX") reduced to the character that
// shows, and the other control characters but newline and tab dropped. The files hold entries
// separated by lines of "%"; the text keeps those separators, so the model learns where a fortune
// ends. Every 20th entry (5%) is held out for validation, so validation text is whole fortunes
// the model never saw, drawn from every file. The vocabulary is the set of characters present
// (about a hundred), sorted.
//
// Training: random windows of block_size characters, AdamW (betas 0.9/0.99, weight decay 0.1
// on everything -- the model is small), a short linear warm-up and a cosine decay to lr/10 over
// the run (--lr-schedule constant: lr throughout), gradient clipping at 1. The training flags of
// the Fashion-MNIST examples (examples/common.h) apply as there: each step runs through a
// BatchSplitter (--micro-batches N|auto), its forward under autocast with --precision bf16|f16
// (f16's losses scaled), and so on. The default size is chosen for a 2-core CPU: 3 layers of
// width 96 (about 0.35 M parameters), 2048 tokens a step, lr 6e-3 -- measured there, the
// validation loss goes from ln(vocab) ~ 4.65 through the unigram (~3.2) and bigram (~2.5)
// plateaus to about 2.1 in 600 steps (2-2.5 minutes); a 4-layer, 128-wide model learns the same
// per step but takes twice as long a step. Printed: a line every --log-every steps (mean
// training loss since the last line, tokens/s), the validation loss every --eval-every steps,
// the peak memory by category, a sample, and last exactly one "final validation loss: X.XXXX".
//
// Model parallelism (docs/model-parallel.md) runs on devices 0..N-1 of --device's kind (cpu:N
// devices in one process: HEADROOM_CPU_DEVICES, limits per device with HEADROOM_MEMORY_LIMIT):
// --pipeline K cuts the blocks into K stages (nn::GPTStage, the tied head copied to the last
// stage) run by nn::Pipeline over --micro-batches M with --schedule gpipe|1f1b; --tensor-parallel
// T splits every block's matrices over T devices (nn::TensorParallelGPT), one thread each. The
// same seed gives the same model and batches as the one-device run, so the losses compare.
// Validation and the sample run on a whole GPT on device 0, loaded from the parts; the end
// prints each device's peak memory (and the pipeline's bubble).
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "dist/local_group.h"
#include "report/memory_report.h"
#include "examples/common.h"
#include "nn/parallel/gpt_parallel.h"

using namespace headroom;

namespace {

namespace fs = std::filesystem;

constexpr const char* kFortunesDir = "/usr/share/games/fortunes";

// ---- text ----

// Code points of UTF-8 text; an invalid byte is taken as Latin-1 (some fortune files are not
// UTF-8), so no byte is lost and decoding never fails.
std::vector<char32_t> decode_utf8(const std::string& s) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    int len = b0 < 0x80 ? 1 : (b0 >> 5) == 0x6 ? 2 : (b0 >> 4) == 0xE ? 3 : (b0 >> 3) == 0x1E ? 4 : 0;
    char32_t cp = len == 1 ? b0 : len == 2 ? (b0 & 0x1F) : len == 3 ? (b0 & 0x0F) : (b0 & 0x07);
    bool ok = len > 0 && i + static_cast<size_t>(len) <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + static_cast<size_t>(k)]);
      ok = (b & 0xC0) == 0x80;
      cp = (cp << 6) | (b & 0x3F);
    }
    if (!ok || (len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF))) {
      out.push_back(b0);  // Latin-1
      ++i;
      continue;
    }
    out.push_back(cp);
    i += static_cast<size_t>(len);
  }
  return out;
}

std::string encode_utf8(char32_t c) {
  std::string s;
  if (c < 0x80) {
    s += static_cast<char>(c);
  } else if (c < 0x800) {
    s += static_cast<char>(0xC0 | (c >> 6));
    s += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    s += static_cast<char>(0xE0 | (c >> 12));
    s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (c >> 18));
    s += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (c & 0x3F));
  }
  return s;
}

// Overstrike ("X\bY" prints Y over X) keeps the character that shows; other control characters
// but newline and tab are dropped.
std::vector<char32_t> clean(const std::vector<char32_t>& text) {
  std::vector<char32_t> out;
  out.reserve(text.size());
  for (char32_t c : text) {
    if (c == U'\b') {
      if (!out.empty() && out.back() != U'\n') out.pop_back();
    } else if (c == U'\n' || c == U'\t' || (c >= 0x20 && c != 0x7F && !(c >= 0x80 && c < 0xA0))) {
      out.push_back(c);
    }
  }
  return out;
}

struct Corpus {
  std::vector<char32_t> vocab;      // sorted; token i is vocab[i]
  std::vector<int64_t> train, val;  // tokens
  int64_t files = 0, entries = 0, val_entries = 0;
};

// Reads the fortune files of `dir`, splits them into entries at "%" lines and holds out every
// 20th entry. Throws IOError with the package to install when the folder is missing or empty.
Corpus load_fortunes(const std::string& dir) {
  const std::string hint = "install the Debian package fortunes (apt-get install fortunes)";
  HR_CHECK(fs::is_directory(dir), IOError, "fortunes: ", dir, " not found: ", hint);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const fs::path& p = e.path();
    // Plain text files only: not the symlinks (the .u8 aliases), nor anything with an extension.
    if (e.is_symlink() || !e.is_regular_file() || p.filename().string().find('.') != std::string::npos) continue;
    files.push_back(p);
  }
  std::sort(files.begin(), files.end());
  HR_CHECK(!files.empty(), IOError, "fortunes: no fortune files in ", dir, ": ", hint);

  std::vector<std::vector<char32_t>> train_entries, val_entries;
  Corpus c;
  for (const fs::path& p : files) {
    std::ifstream in(p, std::ios::binary);
    HR_CHECK(in, IOError, "fortunes: cannot read ", p.string());
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::vector<char32_t> text = clean(decode_utf8(bytes));
    ++c.files;
    // Entries end at a line holding only "%".
    std::vector<char32_t> entry;
    size_t line_start = 0;
    auto finish_entry = [&] {
      bool blank =
          std::all_of(entry.begin(), entry.end(), [](char32_t ch) { return ch == U'\n' || ch == U' ' || ch == U'\t'; });
      if (!blank) {
        (c.entries % 20 == 19 ? val_entries : train_entries).push_back(entry);
        ++c.entries;
      }
      entry.clear();
    };
    for (size_t i = 0; i <= text.size(); ++i) {
      if (i < text.size() && text[i] != U'\n') continue;
      const size_t end = i;  // the line is [line_start, end)
      const bool separator = end == line_start + 1 && text[line_start] == U'%';
      if (separator) {
        finish_entry();
      } else if (end > line_start || i < text.size()) {
        entry.insert(entry.end(), text.begin() + static_cast<std::ptrdiff_t>(line_start),
                     text.begin() + static_cast<std::ptrdiff_t>(end));
        entry.push_back(U'\n');
      }
      line_start = i + 1;
    }
    finish_entry();
  }
  c.val_entries = static_cast<int64_t>(val_entries.size());

  // Each entry followed by its "%" line, as in the files.
  std::set<char32_t> chars{U'%', U'\n'};
  for (const auto* set : {&train_entries, &val_entries})
    for (const auto& e : *set) chars.insert(e.begin(), e.end());
  c.vocab.assign(chars.begin(), chars.end());
  auto token = [&](char32_t ch) {
    return static_cast<int64_t>(std::lower_bound(c.vocab.begin(), c.vocab.end(), ch) - c.vocab.begin());
  };
  auto flatten = [&](const std::vector<std::vector<char32_t>>& entries, std::vector<int64_t>& out) {
    for (const auto& e : entries) {
      for (char32_t ch : e) out.push_back(token(ch));
      out.push_back(token(U'%'));
      out.push_back(token(U'\n'));
    }
  };
  flatten(train_entries, c.train);
  flatten(val_entries, c.val);
  return c;
}

std::string decode(const Corpus& c, const std::vector<int64_t>& tokens) {
  std::string s;
  for (int64_t t : tokens) s += encode_utf8(c.vocab.at(static_cast<size_t>(t)));
  return s;
}

// ---- batches ----

// x: [B, T] windows of `data` starting at the given offsets; y: the same shifted by one.
void make_batch(const std::vector<int64_t>& data, const std::vector<int64_t>& starts, int64_t t, Device device,
                Tensor& x, Tensor& y) {
  const auto b = static_cast<int64_t>(starts.size());
  std::vector<int64_t> xs(static_cast<size_t>(b * t)), ys(static_cast<size_t>(b * t));
  for (int64_t r = 0; r < b; ++r)
    for (int64_t j = 0; j < t; ++j) {
      xs[static_cast<size_t>(r * t + j)] = data[static_cast<size_t>(starts[static_cast<size_t>(r)] + j)];
      ys[static_cast<size_t>(r * t + j)] = data[static_cast<size_t>(starts[static_cast<size_t>(r)] + j + 1)];
    }
  x = Tensor::from_vector(xs, {b, t}, DType::i64).to(device);
  y = Tensor::from_vector(ys, {b, t}, DType::i64).to(device);
}

std::vector<int64_t> random_starts(std::mt19937_64& rng, int64_t count, int64_t data_size, int64_t t) {
  std::uniform_int_distribution<int64_t> pick(0, data_size - t - 1);
  std::vector<int64_t> s(static_cast<size_t>(count));
  for (auto& v : s) v = pick(rng);
  return s;
}

// Mean loss over `batches` batches of validation windows, the same windows every call (evenly
// spaced through the held-out text), in eval mode without history.
// `loss_of` is the model's mean loss on a batch (the model in eval mode where it has dropout).
double validation_loss(const std::function<double(const Tensor&, const Tensor&)>& loss_of,
                       const std::vector<int64_t>& val, int64_t batches, int64_t b, int64_t t, Device device) {
  NoGradGuard no_grad;
  const int64_t windows = batches * b;
  const int64_t span = static_cast<int64_t>(val.size()) - t - 1;
  double sum = 0;
  for (int64_t k = 0; k < batches; ++k) {
    std::vector<int64_t> starts(static_cast<size_t>(b));
    for (int64_t r = 0; r < b; ++r) starts[static_cast<size_t>(r)] = span * (k * b + r) / windows;
    Tensor x, y;
    make_batch(val, starts, t, device, x, y);
    sum += loss_of(x, y);
  }
  return sum / static_cast<double>(batches);
}

// ---- the training step on one device ----

// The step's BatchSplitter (--micro-batches N|auto): with a loss scaler (--precision f16) each
// micro-batch's loss is scaled; before the optimizer steps, clip(optimizer, max_norm) clips the
// gradients to a global norm of max_norm -- 1, or S under f16, whose gradients are S times the
// true ones (clipping before unscale_, so a retried optimizer step clips again harmlessly).
std::unique_ptr<optim::BatchSplitter> make_step_splitter(optim::Optimizer& optimizer, int64_t micro_batches,
                                                         nn::Module& model, optim::GradScaler* scaler,
                                                         nn::DistributedDataParallel* ddp, std::ostream* log,
                                                         std::function<void(optim::Optimizer&, double)> clip) {
  optim::BatchSplitter::Options options;
  options.log = log;
  options.ddp = ddp;
  options.scaler = scaler;
  options.optimizer_step = [scaler, clip = std::move(clip)](optim::Optimizer& o) {
    clip(o, scaler ? scaler->scale() : 1.0);
    if (!scaler) {
      o.step();
      return;
    }
    scaler->step(o);  // skipped when a gradient is inf or NaN
    scaler->update();
  };
  return std::make_unique<optim::BatchSplitter>(optimizer, micro_batches, &model, options);
}

// One optimizer step on the batch (x, y) through `splitter`: each micro-batch's forward under
// autocast (if given) and, with `offload`, with what it saves for backward on the host. Returns
// the batch's mean loss. The planner predicts this step, and the training loop runs it.
double one_device_step(nn::GPT& model, optim::BatchSplitter& splitter, const Tensor& x, const Tensor& y, Device device,
                       std::optional<DType> autocast, const std::optional<ActivationOffloadOptions>& offload) {
  AutocastCacheScope step_cache;  // each weight cast to 16 bits once per step, over all micro-batches
  return splitter
      .step(x, y,
            [&](const Tensor& xi, const Tensor& yi) {
              AutocastGuard amp(device, autocast.value_or(DType::f16), autocast.has_value());  // forward only
              std::optional<ActivationOffload> offloaded;  // --offload activations|all
              if (offload) offloaded.emplace(*offload);
              return optim::MicroBatchOutput{model.loss(xi, yi)};
            })
      .loss;
}

}  // namespace

int main(int argc, char** argv) {
  examples::TrainConfig cfg;  // device, seed, lr, batch size and the memory flags
  cfg.batch_size = 32;
  cfg.lr = 6e-3;
  int64_t steps = 600, block_size = 64, n_layer = 3, n_head = 4, n_embd = 96;
  int64_t eval_every = 200, eval_batches = 8, log_every = 25, sample_chars = 300, top_k = 20;
  double temperature = 0.8;
  std::string attention = "fused";
  std::string data_dir = kFortunesDir;

  examples::Flags flags("gpt_fortunes",
                        "Trains a character-level GPT on Debian's fortunes and prints a sample of what it learned.");
  flags.add("steps", &steps, "training steps (optimizer updates)", examples::at_least<int64_t>(1));
  flags.add("batch-size", &cfg.batch_size, "sequences per step", examples::at_least<int64_t>(1));
  flags.add("block-size", &block_size, "characters per sequence (the context length)", examples::at_least<int64_t>(2));
  flags.add("n-layer", &n_layer, "Transformer blocks", examples::at_least<int64_t>(1));
  flags.add("n-head", &n_head, "attention heads (must divide --n-embd)", examples::at_least<int64_t>(1));
  flags.add("n-embd", &n_embd, "model width", examples::at_least<int64_t>(1));
  flags.add("lr", &cfg.lr, "peak learning rate (AdamW; warm-up, then cosine to lr/10)", examples::positive());
  flags.add("attention", &attention, "naive (materialises T x T scores) or fused",
            examples::Flags::Check<std::string>([](const std::string& v) {
              return v == "naive" || v == "fused" ? std::string() : std::string("expected naive or fused");
            }));
  flags.add("seed", &cfg.seed, "seed of weight init, batches and sampling", examples::at_least<int64_t>(0));
  flags.add("device", &cfg.device, "cpu or cuda[:N]", examples::device_name());
  flags.add("data-dir", &data_dir, "folder of the fortune files (Debian package fortunes)");
  flags.add("eval-every", &eval_every, "validation loss every N steps (and at the end)",
            examples::at_least<int64_t>(1));
  flags.add("eval-batches", &eval_batches, "batches per validation loss", examples::at_least<int64_t>(1));
  flags.add("log-every", &log_every, "a training-loss line every N steps", examples::at_least<int64_t>(1));
  flags.add("sample-chars", &sample_chars, "characters to generate at the end (0: no sample)",
            examples::at_least<int64_t>(0));
  flags.add("temperature", &temperature, "sampling temperature", examples::positive());
  flags.add("top-k", &top_k, "sample among the k most likely characters (0: all)", examples::at_least<int64_t>(0));
  flags.add("lr-schedule", &cfg.lr_schedule,
            "cosine (a short linear warm-up, then decay to lr/10 over the run, per step) or constant",
            examples::lr_schedule_name());
  // --memory-limit, --memory-report, --precision, --save-every, --resume, --save-model, --checkpoint,
  // --memory-budget, --plan, --ddp, --zero, --leak-check, --offload and --micro-batches, as the
  // Fashion-MNIST examples take them (examples/common.h).
  examples::add_common_training_flags(flags, cfg);
  int64_t pipeline = 1, tensor_parallel = 1;
  std::string pipeline_schedule = "1f1b";
  flags.add("pipeline", &pipeline,
            "cut the blocks into K pipeline stages on devices 0..K-1 of --device's kind (cpu:0..cpu:K-1), each batch "
            "run as --micro-batches M micro-batches",
            examples::at_least<int64_t>(1));
  flags.add("schedule", &pipeline_schedule, "--pipeline's schedule: gpipe or 1f1b",
            examples::Flags::Check<std::string>([](const std::string& v) {
              return v == "gpipe" || v == "1f1b" ? std::string() : std::string("expected gpipe or 1f1b");
            }));
  flags.add("tensor-parallel", &tensor_parallel,
            "split every block's matrices over T devices 0..T-1 of --device's kind, one thread each",
            examples::at_least<int64_t>(1));
  if (auto code = flags.parse(argc, argv)) return *code;
  const bool model_parallel = pipeline > 1 || tensor_parallel > 1;
  const int64_t micro_batches = optim::parse_micro_batches(cfg.micro_batches, "--micro-batches");  // kAuto: auto
  {
    std::string refused;
    const char* no = " are not supported together";
    if (pipeline > 1 && tensor_parallel > 1) refused = str_cat("--pipeline and --tensor-parallel", no);
    else if (model_parallel && (cfg.ddp || cfg.zero > 0))
      refused = str_cat("--ddp or --zero and --pipeline or --tensor-parallel", no);
    else if (model_parallel && (cfg.save_every > 0 || !cfg.resume.empty()))
      refused = str_cat("--save-every or --resume and --pipeline or --tensor-parallel", no);
    else if (model_parallel && cfg.leak_check)
      refused = str_cat("--leak-check (it watches one device) and --pipeline or --tensor-parallel", no);
    else if (model_parallel && cfg.offload != "none")
      refused = str_cat("--offload and --pipeline or --tensor-parallel", no);
    else if (model_parallel && cfg.plan)
      refused = str_cat(
          "--plan (it plans one device; headroom-plan --pipeline/--tensor-parallel plans several) and "
          "--pipeline or --tensor-parallel",
          no);
    else if (model_parallel && cfg.precision != "f32")
      refused = str_cat("--precision ", cfg.precision, " and --pipeline or --tensor-parallel", no);
    else if (pipeline > 1 && micro_batches == optim::BatchSplitter::kAuto)
      refused = str_cat("--micro-batches auto (--pipeline takes a count) and --pipeline", no);
    else if (tensor_parallel > 1 && micro_batches != 1) refused = str_cat("--micro-batches and --tensor-parallel", no);
    else if (cfg.plan && (cfg.precision != "f32" || micro_batches != 1))
      refused = str_cat(
          "--plan (it chooses --attention and --checkpoint here, in f32 and without splitting) and "
          "--precision or --micro-batches",
          no);
    else if (tensor_parallel > 1 && n_head % tensor_parallel != 0)
      refused =
          str_cat("--tensor-parallel ", tensor_parallel, ": the ", n_head, " heads do not divide among the devices");
    else if (pipeline > n_layer)
      refused = str_cat("--pipeline ", pipeline, ": more stages than the ", n_layer, " blocks (each stage needs one)");
    if (!refused.empty()) {
      std::cerr << "gpt_fortunes: " << refused << " (see --help)\n";
      return 2;
    }
  }
  if (n_embd % n_head != 0) {
    std::cerr << "gpt_fortunes: --n-embd " << n_embd << " is not divisible by --n-head " << n_head << " (see --help)\n";
    return 2;
  }

  return examples::run_reporting_errors([&] {
    const Device device = Device::parse(cfg.device);
    manual_seed(static_cast<uint64_t>(cfg.seed));
    examples::Timer load_timer;
    const Corpus corpus = load_fortunes(data_dir);
    const auto vocab = static_cast<int64_t>(corpus.vocab.size());
    std::cout << "data: " << corpus.entries << " fortunes from " << corpus.files << " files in " << data_dir << ": "
              << corpus.train.size() << " training and " << corpus.val.size() << " validation characters ("
              << corpus.val_entries << " fortunes held out), vocabulary of " << vocab << " (" << std::fixed
              << std::setprecision(1) << load_timer.seconds() << " s)\n";
    HR_CHECK(static_cast<int64_t>(corpus.val.size()) > block_size + 1, ValueError, "gpt_fortunes: --block-size ",
             block_size, " is longer than the validation text");

    examples::DataParallel parallel(cfg, "gpt_fortunes");  // --ddp, --zero: under mpirun
    nn::GPTConfig gc;
    gc.vocab_size = vocab;
    gc.block_size = block_size;
    gc.n_layer = n_layer;
    gc.n_head = n_head;
    gc.n_embd = n_embd;
    // --memory-budget 64MiB --plan: attention and checkpointing chosen before the first step
    // (optim/plan.h), for the training step below.
    optim::PlanSpace space = optim::PlanSpace::for_batch(1);
    space.precisions = {DType::f32};
    const auto planned = examples::plan_techniques(
        cfg, device,
        // By value: the out-of-memory report calls this after the body's locals are gone.
        [gc, device, block_size, lr = cfg.lr](const optim::Mix& mix, int64_t batch) -> std::function<void()> {
          struct Training {
            std::shared_ptr<nn::GPT> model;
            std::unique_ptr<optim::AdamW> optimizer;
            std::unique_ptr<optim::BatchSplitter> splitter;
            Tensor x, y;
          };
          auto t = std::make_shared<Training>();
          nn::GPTConfig c = gc;
          c.attention = mix.attention;
          c.checkpoint = mix.checkpoint;
          t->model = std::make_shared<nn::GPT>(c);
          t->model->to(device);
          t->optimizer = std::make_unique<optim::AdamW>(t->model->parameters(), lr, 0.9, 0.99, 1e-8, 0.1);
          nn::GPT* m = t->model.get();
          t->splitter = make_step_splitter(
              *t->optimizer, mix.micro_batches, *m, nullptr, nullptr, nullptr,
              [m](optim::Optimizer&, double max_norm) { optim::clip_grad_norm_(m->parameters(), max_norm); });
          const TensorOptions idx = TensorOptions().dtype(DType::i64).device(device);
          t->x = Tensor::zeros({batch, block_size}, idx);
          t->y = Tensor::zeros({batch, block_size}, idx);
          return [t, device] {
            (void)one_device_step(*t->model, *t->splitter, t->x, t->y, device, std::nullopt, std::nullopt);
          };
        },
        space, &attention);
    manual_seed(static_cast<uint64_t>(cfg.seed));
    // Several devices write their report at the end, a folder per device (below).
    examples::TrainConfig one_device = cfg;
    if (model_parallel) one_device.memory_report.clear();
    examples::MemoryReporting memory(one_device, device, "GPT on fortunes");
    gc.attention = parse_attention_impl(attention);
    gc.checkpoint = nn::parse_checkpoint_mode(cfg.recompute, "--checkpoint");
    auto model = std::make_shared<nn::GPT>(gc);
    model->to(device);
    std::cout << "model: " << gc.str() << ", " << model->num_parameters() << " parameters\n";

    auto make_adamw = [&](std::vector<Tensor> ps) -> std::unique_ptr<optim::Optimizer> {
      if (examples::offload_optimizer(cfg))  // --offload optimizer|all: the state on the host
        return std::make_unique<optim::OffloadedAdamW>(std::move(ps), cfg.lr, 0.9, 0.99, 1e-8, /*weight_decay=*/0.1);
      return std::make_unique<optim::AdamW>(std::move(ps), cfg.lr, 0.9, 0.99, 1e-8, /*weight_decay=*/0.1);
    };
    const std::optional<ActivationOffloadOptions> offload = examples::activation_offload(cfg);
    // --lr-schedule constant: no warm-up, and a cosine from lr to lr, which stays lr.
    const bool constant_lr = cfg.lr_schedule == "constant";
    const int64_t warmup = constant_lr ? 0 : std::min<int64_t>(50, steps / 10);
    const double final_lr = constant_lr ? cfg.lr : cfg.lr / 10;
    // Model parallelism: the devices, the parts of the model, and an optimizer per part.
    std::vector<Device> devices;
    std::vector<std::shared_ptr<nn::GPTStage>> stages;
    std::unique_ptr<nn::Pipeline> pipe;
    std::vector<std::unique_ptr<dist::ProcessGroup>> groups;
    std::vector<std::shared_ptr<nn::TensorParallelGPT>> ranks;
    std::vector<std::unique_ptr<optim::Optimizer>> rank_optimizers;
    std::vector<std::unique_ptr<optim::CosineWithWarmup>> rank_schedules;
    std::shared_ptr<nn::GPT> eval_model = model_parallel ? nullptr : model;  // the sample, --save-model: a whole GPT
    std::unique_ptr<optim::Optimizer> optimizer_ptr;
    if (model_parallel) {
      const int64_t n = std::max(pipeline, tensor_parallel);
      HR_CHECK(device_count(device.type) >= n, ValueError, "gpt_fortunes: ", n, " devices asked for, but ",
               device_type_name(device.type), " has ", device_count(device.type),
               device.is_cpu() ? " (more cpu devices: HEADROOM_CPU_DEVICES=N, up to 8)" : "");
      for (int64_t k = 0; k < n; ++k)
        devices.push_back(device.is_cpu() ? Device::cpu(static_cast<int>(k)) : Device::cuda(static_cast<int>(k)));
      if (!cfg.memory_limit.empty())
        for (const Device& d : devices)
          caching_allocator(d).set_memory_limit(parse_memory_size(cfg.memory_limit, "--memory-limit"));
      if (pipeline > 1) {
        stages = nn::GPTStage::split(*model, devices);
        nn::PipelineOptions po;
        po.schedule = nn::parse_pipeline_schedule(pipeline_schedule, "--schedule");
        pipe = std::make_unique<nn::Pipeline>(nn::GPTStage::pipeline_stages(stages), po);
        optimizer_ptr = make_adamw(pipe->parameters());
        std::cout << "pipeline: " << pipeline << " stages (";
        for (size_t k = 0; k < stages.size(); ++k)
          std::cout << (k ? ", " : "") << stages[k]->name() << " on " << devices[k].str();
        std::cout << "), " << micro_batches << " micro-batches, " << pipeline_schedule << "\n";
      } else {
        groups = dist::make_local_groups(devices);
        for (int64_t r = 0; r < tensor_parallel; ++r) {
          ranks.push_back(
              nn::TensorParallelGPT::from(*model, *groups[static_cast<size_t>(r)], devices[static_cast<size_t>(r)]));
          rank_optimizers.push_back(make_adamw(ranks.back()->parameters()));
          // Note [agreed failure]: every rank commits its step, or none.
          rank_optimizers.back()->set_step_agreement(
              dist::step_agreement(*groups[static_cast<size_t>(r)], devices[static_cast<size_t>(r)]));
          if (r > 0)  // rank 0's is `schedule`, below
            rank_schedules.push_back(
                std::make_unique<optim::CosineWithWarmup>(*rank_optimizers.back(), warmup, steps, final_lr));
        }
        std::cout << "tensor parallel: every block split over " << tensor_parallel << " devices (" << devices[0].str()
                  << ".." << devices.back().str() << "), " << ranks[0]->num_parameters() << " parameters on each\n";
        model.reset();  // the ranks hold their own copies
      }
      for (const Device& d : devices) {
        caching_allocator(d).reset_peak_stats();  // the peaks are the parts'
        if (!cfg.memory_report.empty()) {
          caching_allocator(d).clear_trace();
          caching_allocator(d).set_trace_enabled(true);
        }
      }
    }
    // --ddp: every rank draws the same windows and trains on its share of them (the hooks of the
    // DistributedDataParallel average the gradients; GPT::loss is called on the model itself).
    std::shared_ptr<nn::Module> trained = model_parallel ? nullptr : parallel.wrap(model);
    if (!model_parallel) optimizer_ptr = parallel.make_optimizer(make_adamw, *trained);
    optim::Optimizer& optimizer = tensor_parallel > 1 ? *rank_optimizers[0] : *optimizer_ptr;
    optim::CosineWithWarmup schedule(optimizer, warmup, steps, final_lr);
    // One device: every step through a BatchSplitter (--micro-batches), the forward under
    // autocast (--precision), f16's losses scaled.
    examples::Precision precision = examples::make_precision(cfg);
    std::unique_ptr<optim::BatchSplitter> splitter;
    if (!model_parallel)
      splitter = make_step_splitter(
          optimizer, micro_batches, *trained, precision.scaler.get(), parallel.ddp(), &std::cout,
          [&](optim::Optimizer& o, double max_norm) { parallel.clip_grad_norm_(o, model->parameters(), max_norm); });
    // After training: the parts' values joined into a whole GPT on device 0, for the sample and
    // --save-model (made only then, so that the peaks per device are the training's).
    bool joined = !model_parallel;
    auto join_parts = [&] {
      if (joined) return;
      joined = true;
      manual_seed(static_cast<uint64_t>(cfg.seed));
      eval_model = std::make_shared<nn::GPT>(gc);
      eval_model->to(devices[0]);
      if (pipeline > 1) eval_model->load_state_dict(nn::GPTStage::state_dict_on(stages, devices[0]));
      else eval_model->load_state_dict(nn::TensorParallelGPT::unsplit_state_dict(ranks, devices[0]));
    };
    // The validation loss of a batch, through the parts: the stages in turn, or every rank.
    auto eval_loss = [&](const Tensor& x, const Tensor& y) -> double {
      if (pipeline > 1) {
        Tensor h = x;
        for (const auto& st : stages) h = st->forward(h.to(st->device));
        return stages.back()->loss(h, y.to(stages.back()->device)).item<double>();
      }
      if (tensor_parallel > 1) {
        std::vector<double> losses(ranks.size());
        dist::run_on_groups(groups, [&](int r, dist::ProcessGroup&) {
          NoGradGuard no_grad;  // a thread of its own: grad mode is per thread
          const Device d = devices[static_cast<size_t>(r)];
          losses[static_cast<size_t>(r)] = ranks[static_cast<size_t>(r)]->loss(x.to(d), y.to(d)).item<double>();
        });
        return losses[0];
      }
      model->eval();
      const double l = model->loss(x, y).item<double>();
      model->train();
      return l;
    };
    // One training step on the batch; returns its mean loss (over the ranks under --ddp).
    auto train_step = [&](const Tensor& x, const Tensor& y) -> double {
      if (pipeline > 1) {
        optimizer.zero_grad();
        const double loss = pipe->run(x, y, micro_batches, nn::GPTStage::loss_fn(stages));
        nn::GPTStage::tie_gradients(stages);
        optim::clip_grad_norm_(stages, 1.0);
        optimizer.step();
        schedule.step();
        return loss;
      }
      if (tensor_parallel > 1) {
        std::vector<double> losses(ranks.size());
        dist::run_on_groups(groups, [&](int r, dist::ProcessGroup& g) {
          const Device d = devices[static_cast<size_t>(r)];
          optim::Optimizer& o = *rank_optimizers[static_cast<size_t>(r)];
          o.zero_grad();
          Tensor loss = ranks[static_cast<size_t>(r)]->loss(x.to(d), y.to(d));
          loss.backward();
          optim::clip_grad_norm_(*ranks[static_cast<size_t>(r)], 1.0, g);
          o.step();
          if (r > 0) rank_schedules[static_cast<size_t>(r - 1)]->step();
          losses[static_cast<size_t>(r)] = loss.item<double>();
        });
        schedule.step();  // rank 0's
        return losses[0];
      }
      const double loss =
          one_device_step(*model, *splitter, parallel.shard(x), parallel.shard(y), device, precision.autocast, offload);
      schedule.step();
      return parallel.sum({loss})[0] / parallel.size();  // every rank's share is equal
    };
    std::mt19937_64 rng(static_cast<uint64_t>(cfg.seed));
    const int64_t tokens_per_step = cfg.batch_size * block_size;
    std::cout << "training: " << steps << " steps of " << cfg.batch_size << " x " << block_size << " = "
              << tokens_per_step << " tokens, AdamW lr " << std::defaultfloat << cfg.lr << ", " << attention
              << " attention on " << device.str() << "\n";

    examples::LeakChecking leaks(cfg.leak_check && !model_parallel, device);  // --leak-check (one device)
    examples::Timer total, interval;
    double loss_sum = 0;
    int64_t in_interval = 0;
    double val_loss = std::nan("");
    // Training checkpoints (optim/checkpoint.h): the batch sampler's generator is this loop's
    // data order, kept as its text form in the checkpoint's extra tensors.
    optim::TrainingState ckpt{.model = model.get(),
                              .optimizer = &optimizer,
                              .scaler = precision.scaler.get(),
                              .splitter = splitter.get(),
                              .schedule = &schedule};
    auto text_tensor = [](const std::string& text) {
      std::vector<uint8_t> bytes(text.begin(), text.end());
      return Tensor::from_vector(bytes, {static_cast<int64_t>(bytes.size())}, DType::u8);
    };
    int64_t first_step = 1;
    if (!cfg.resume.empty()) {
      optim::load_training_checkpoint(cfg.resume, ckpt);
      HR_CHECK(ckpt.extra.count("batch_rng") && ckpt.extra.count("loss_sum") && ckpt.extra.count("val_loss"),
               ValueError, "gpt_fortunes: '", cfg.resume, "' was not written by gpt_fortunes --save-every");
      const std::vector<uint8_t> bytes = ckpt.extra.at("batch_rng").to_vector<uint8_t>();
      std::istringstream(std::string(bytes.begin(), bytes.end())) >> rng;
      loss_sum = ckpt.extra.at("loss_sum").item<double>();
      in_interval = ckpt.extra.at("in_interval").item<int64_t>();
      val_loss = ckpt.extra.at("val_loss").item<double>();
      first_step = ckpt.step + 1;
      std::cout << "resumed from " << cfg.resume << " after step " << ckpt.step << "\n";
    }
    for (int64_t step = first_step; step <= steps; ++step) {
      Tensor x, y;
      make_batch(corpus.train,
                 random_starts(rng, cfg.batch_size, static_cast<int64_t>(corpus.train.size()), block_size), block_size,
                 device, x, y);
      loss_sum += train_step(x, y);
      ++in_interval;
      x = Tensor();
      y = Tensor();
      leaks.step();  // a step boundary: the batch and the step's graph are gone
      if (step % log_every == 0 || step == steps) {
        const double secs = interval.seconds();
        std::cout << "step " << step << "/" << steps << " loss " << std::fixed << std::setprecision(4)
                  << loss_sum / static_cast<double>(in_interval) << " lr " << std::scientific << std::setprecision(2)
                  << schedule.last_lr() << std::fixed << " " << std::setprecision(0)
                  << (secs > 0 ? static_cast<double>(in_interval * tokens_per_step) / secs : 0.0) << " tok/s\n"
                  << std::flush;
        loss_sum = 0;
        in_interval = 0;
      }
      if (step % eval_every == 0 || step == steps) {
        examples::Timer eval_timer;
        val_loss = validation_loss(eval_loss, corpus.val, eval_batches, cfg.batch_size, block_size, device);
        std::cout << "step " << step << ": validation loss " << std::fixed << std::setprecision(4) << val_loss << " ("
                  << std::setprecision(1) << eval_timer.seconds() << " s)\n"
                  << std::flush;
      }
      if (step % log_every == 0) interval.reset();  // after the evaluation, so tok/s is training only
      if (cfg.save_every > 0 && step % cfg.save_every == 0) {
        ckpt.step = step;
        std::ostringstream rng_text;
        rng_text << rng;
        ckpt.extra["batch_rng"] = text_tensor(rng_text.str());
        ckpt.extra["loss_sum"] = Tensor::scalar(loss_sum, DType::f64);
        ckpt.extra["in_interval"] = Tensor::from_vector(std::vector<int64_t>{in_interval}, {}, DType::i64);
        ckpt.extra["val_loss"] = Tensor::scalar(val_loss, DType::f64);
        optim::save_training_checkpoint(cfg.checkpoint_file, ckpt);
        std::cout << "checkpoint: step " << step << " saved to " << cfg.checkpoint_file << "\n" << std::flush;
      }
    }
    if (!cfg.save_model.empty()) {
      join_parts();
      eval_model->save(cfg.save_model);
    }
    std::cout << "training time: " << std::fixed << std::setprecision(1) << total.seconds() << " s ("
              << std::setprecision(0) << static_cast<double>(steps * tokens_per_step) / total.seconds()
              << " tok/s overall)\n";
    if (model_parallel) {
      // Each device's own allocator: what the split put where.
      std::cout << "peak memory per device:\n";
      for (const Device& d : devices) {
        const MemoryStats st = caching_allocator(d).stats();
        std::cout << "  " << d.str() << ": allocated " << format_bytes(st.allocated_bytes.peak) << " (parameter "
                  << format_bytes(st.category(MemoryCategory::parameter).peak) << ", gradient "
                  << format_bytes(st.category(MemoryCategory::gradient).peak) << ", optimizer state "
                  << format_bytes(st.category(MemoryCategory::optimizer_state).peak) << ", activation "
                  << format_bytes(st.category(MemoryCategory::activation).peak) << "), reserved "
                  << format_bytes(st.reserved_bytes.peak) << "\n";
      }
      if (!cfg.memory_report.empty()) {
        write_memory_report(
            cfg.memory_report, devices,
            str_cat("GPT on fortunes, ", pipeline > 1 ? str_cat(pipeline, " pipeline stages")
                                                      : str_cat("tensor parallel over ", tensor_parallel)));
        std::cout << "memory report: " << cfg.memory_report << "/index.html (a folder per device)\n";
      }
      if (pipe) {
        const nn::PipelineStats& ps = pipe->last_stats();
        std::cout << "pipeline, last step: bubble " << std::setprecision(1) << 100 * ps.bubble_fraction()
                  << "% of the stages' time (GPipe's (K-1)/(M+K-1) = " << std::setprecision(1)
                  << 100.0 * static_cast<double>(pipeline - 1) / static_cast<double>(micro_batches + pipeline - 1)
                  << "% for stages of equal cost), micro-batches in flight per stage:";
        for (int64_t f : ps.most_in_flight) std::cout << " " << f;
        std::cout << "\n";
      }
    } else {
      memory.print_peaks();
    }
    leaks.print_summary();
    parallel.print_per_rank_memory(device);
    parallel.print_communication();
    if (!model_parallel) examples::print_plan_check(planned, device);
    if (splitter) examples::print_batch_splitting(cfg, *splitter);
    examples::print_precision(cfg, precision);

    if (sample_chars > 0) {
      join_parts();
      // Start where a fortune starts: after a "%" line.
      const auto pct = std::lower_bound(corpus.vocab.begin(), corpus.vocab.end(), U'%') - corpus.vocab.begin();
      const auto nl = std::lower_bound(corpus.vocab.begin(), corpus.vocab.end(), U'\n') - corpus.vocab.begin();
      Tensor prompt = Tensor::from_vector(std::vector<int64_t>{pct, nl}, {1, 2}, DType::i64).to(device);
      Tensor out = eval_model->generate(prompt.to(eval_model->wte->weight.device()), sample_chars, temperature, top_k);
      std::vector<int64_t> tokens = out.to(Device::cpu()).to_vector<int64_t>();
      tokens.erase(tokens.begin(), tokens.begin() + 2);
      std::cout << "sample (" << sample_chars << " characters, temperature " << std::setprecision(2) << temperature
                << ", top_k " << top_k << "):\n"
                << "----\n"
                << decode(corpus, tokens) << "\n----\n";
    }
    std::cout << "final validation loss: " << std::fixed << std::setprecision(4) << val_loss << "\n";
    return 0;
  });
}
