// Knowledge distillation on Fashion-MNIST (nn/distill.h, docs/smaller-models.md): a small CNN
// student learns from a trained CNN teacher's softened outputs as well as from the labels, and is
// compared with the same student -- same initial weights, same batches -- trained from the labels
// alone.
//
//   teacher: cnn_fashion_mnist's CNN (16, 32 channels, linear 1568 -> 128): 207 k parameters,
//            trained here for --teacher-epochs or loaded from cnn_fashion_mnist --save-model
//   student: the same layout at --student-channels 4 and --student-hidden 32: 13 k parameters
//   loss:    alpha T^2 KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) CE(student, labels)
//
// The teacher runs under InferenceGuard: no graph, no activations saved for backward, so the
// distillation step's activation peak is the student's (printed for both students at the end).
//
//   ./distill_fashion_mnist                                    # trains the teacher first
//   ./cnn_fashion_mnist --save-model cnn.hrsd && ./distill_fashion_mnist --teacher-model cnn.hrsd
//   ./distill_fashion_mnist --temperature 2 --alpha 0.5 --student-channels 8
#include "examples/common.h"
#include "examples/small_models.h"

using namespace headroom;

namespace {

struct Distillation {
  double temperature = 4.0;
  double alpha = 0.9;
};

// One epoch of the student: Adam on cross-entropy (teacher == nullptr) or on the distillation
// loss with the teacher's logits computed under InferenceGuard.
examples::EpochStats student_epoch(nn::Module& student, nn::Module* teacher, const Distillation& d,
                                   optim::Optimizer& optimizer, optim::LRScheduler& schedule, data::BatchLoader& loader,
                                   Device device, int64_t epoch, int64_t epochs) {
  student.train();
  loader.start_epoch(epoch);
  examples::ProgressBar progress(epoch + 1, epochs, loader.num_batches());
  examples::Timer timer;
  double loss_sum = 0;
  int64_t correct = 0, seen = 0, batches = 0;
  Tensor images, labels;
  while (loader.next(images, labels)) {
    images = images.to(device);
    labels = labels.to(device);
    Tensor teacher_logits;
    if (teacher) {
      InferenceGuard inference;  // forward only: nothing of the teacher is kept for backward
      teacher_logits = (*teacher)(images);
    }
    optimizer.zero_grad();
    Tensor logits = student(images);
    Tensor loss = teacher ? nn::distillation_loss(logits, teacher_logits, labels, d.temperature, d.alpha)
                          : cross_entropy(logits, labels);
    loss.backward();
    optimizer.step();
    schedule.step();
    const int64_t b = labels.size(0);
    loss_sum += loss.item<double>() * static_cast<double>(b);
    correct += examples::count_correct(logits, labels);
    seen += b;
    ++batches;
    progress.update(batches, seen, loss_sum / static_cast<double>(seen),
                    static_cast<double>(correct) / static_cast<double>(seen));
  }
  examples::EpochStats s = examples::EpochStats::of(seen, loss_sum, correct, timer.seconds());
  progress.finish(batches, seen, s.loss, s.accuracy);
  return s;
}

struct StudentRun {
  std::vector<examples::EpochStats> history;
  double accuracy = 0;
  int64_t activation_peak = 0;  // over the training epochs, as the allocator measured it
  int64_t parameters = 0;
};

// Trains a fresh student (seeded, so both runs start from the same weights and see the same
// batches) from the labels alone or from the teacher.
StudentRun train_student(const examples::TrainConfig& cfg, int64_t channels, int64_t hidden, nn::Module* teacher,
                         const Distillation& d, const examples::FashionMnistSplits& data, Device device) {
  manual_seed(static_cast<uint64_t>(cfg.seed));
  auto student = examples::make_fashion_cnn(channels, hidden);
  student->to(device);
  optim::Adam adam(student->parameters(), cfg.lr);
  data::BatchLoader loader(data.train, cfg.batch_size, /*shuffle=*/true, static_cast<uint64_t>(cfg.seed));
  optim::CosineWithWarmup schedule(adam, /*warmup_steps=*/0, cfg.epochs * loader.num_batches());
  StudentRun run;
  run.parameters = student->num_parameters();
  CachingAllocator& allocator = caching_allocator(device);
  allocator.reset_peak_stats();
  for (int64_t e = 0; e < cfg.epochs; ++e)
    run.history.push_back(student_epoch(*student, teacher, d, adam, schedule, loader, device, e, cfg.epochs));
  run.activation_peak = allocator.stats().category(MemoryCategory::activation).peak;
  run.accuracy = examples::evaluate(*student, data.test, /*batch_size=*/500, device);
  return run;
}

}  // namespace

int main(int argc, char** argv) {
  examples::TrainConfig cfg;
  cfg.epochs = 3;
  cfg.lr = 4e-3;
  int64_t teacher_channels = 16, teacher_epochs = 3, student_channels = 4, student_hidden = 32;
  std::string teacher_model;
  std::string students = "both";
  Distillation d;
  examples::Flags flags("distill_fashion_mnist",
                        "Distils a CNN teacher into a smaller CNN student on Fashion-MNIST, and compares it with the "
                        "same student trained from the labels alone.");
  flags.add("epochs", &cfg.epochs, "passes over the training set for each student", examples::at_least<int64_t>(1));
  flags.add("batch-size", &cfg.batch_size, "images per step", examples::at_least<int64_t>(1));
  flags.add("lr", &cfg.lr, "the students' Adam learning rate (cosine to 0)", examples::positive());
  flags.add("seed", &cfg.seed, "seed of weight init and shuffling", examples::at_least<int64_t>(0));
  flags.add("device", &cfg.device, "cpu or cuda[:N]", examples::device_name());
  flags.add("data-dir", &cfg.data_dir, "folder of the Fashion-MNIST IDX .gz files");
  flags.add("train-limit", &cfg.train_limit, "use only the first N training images (0: all)",
            examples::at_least<int64_t>(0));
  flags.add("teacher-model", &teacher_model,
            "the teacher's state dict, from cnn_fashion_mnist --save-model (with --channels = --teacher-channels); "
            "without it the teacher is trained first");
  flags.add("teacher-channels", &teacher_channels, "the teacher CNN's first conv width",
            examples::at_least<int64_t>(1));
  flags.add("teacher-epochs", &teacher_epochs, "epochs to train the teacher when --teacher-model is not given",
            examples::at_least<int64_t>(1));
  flags.add("student-channels", &student_channels, "the student CNN's first conv width (the second is twice it)",
            examples::at_least<int64_t>(1));
  flags.add("student-hidden", &student_hidden, "the student's hidden linear width", examples::at_least<int64_t>(1));
  flags.add("temperature", &d.temperature, "softmax temperature T of the soft targets", examples::positive());
  flags.add("alpha", &d.alpha, "weight of the soft (teacher) term; 1 - alpha weighs the labels' cross-entropy",
            examples::Flags::Check<double>(
                [](const double& v) { return v >= 0 && v <= 1 ? std::string() : std::string("must be in [0, 1]"); }));
  flags.add("students", &students, "both (distilled and labels-only, compared), distilled, or labels",
            examples::Flags::Check<std::string>([](const std::string& v) {
              return v == "both" || v == "distilled" || v == "labels"
                         ? std::string()
                         : std::string("expected both, distilled or labels");
            }));
  if (auto code = flags.parse(argc, argv)) return *code;

  return examples::run_reporting_errors([&] {
    const Device device = Device::parse(cfg.device);
    const examples::FashionMnistSplits data = examples::load_data(cfg);

    // The teacher: loaded, or trained here with cross-entropy like cnn_fashion_mnist.
    manual_seed(static_cast<uint64_t>(cfg.seed));
    auto teacher = examples::make_fashion_cnn(teacher_channels);
    if (!teacher_model.empty()) {
      teacher->load(teacher_model);
      teacher->to(device);
      std::cout << "teacher: " << teacher->num_parameters() << " parameters, loaded from " << teacher_model << "\n";
    } else if (students != "labels") {
      teacher->to(device);
      std::cout << "teacher: " << teacher->num_parameters() << " parameters, training for " << teacher_epochs
                << (teacher_epochs == 1 ? " epoch" : " epochs") << "\n";
      examples::TrainConfig tcfg = cfg;
      tcfg.epochs = teacher_epochs;
      optim::Adam adam(teacher->parameters(), 4e-3);
      data::BatchLoader loader(data.train, cfg.batch_size, /*shuffle=*/true, static_cast<uint64_t>(cfg.seed));
      auto schedule = examples::make_schedule(tcfg, adam, loader.num_batches());
      auto splitter = examples::make_splitter(tcfg, adam, *teacher);
      for (int64_t e = 0; e < teacher_epochs; ++e)
        examples::train_one_epoch(*teacher, *splitter, schedule.get(), loader, device, e, teacher_epochs);
    }
    const bool with_teacher = students != "labels";
    if (with_teacher) {
      teacher->eval();
      std::cout << std::fixed << std::setprecision(4) << "teacher: test accuracy "
                << examples::evaluate(*teacher, data.test, 500, device) << "\n";
    }

    std::optional<StudentRun> labels_only, distilled;
    if (students != "distilled") {
      std::cout << "student from the labels alone:\n";
      labels_only = train_student(cfg, student_channels, student_hidden, nullptr, d, data, device);
    }
    if (with_teacher) {
      std::cout << "student distilled (T " << d.temperature << ", alpha " << d.alpha << "):\n";
      distilled = train_student(cfg, student_channels, student_hidden, teacher.get(), d, data, device);
    }
    const StudentRun& last = distilled ? *distilled : *labels_only;
    std::cout << "student: " << last.parameters << " parameters (teacher " << teacher->num_parameters() << ")\n";
    std::cout << std::fixed << std::setprecision(4);
    if (labels_only)
      std::cout << "labels only: test accuracy " << labels_only->accuracy << ", activation peak while training "
                << format_bytes(labels_only->activation_peak) << "\n";
    if (distilled)
      std::cout << "distilled:   test accuracy " << distilled->accuracy << ", activation peak while training "
                << format_bytes(distilled->activation_peak) << " (the teacher's forward saved nothing)\n";
    if (labels_only && distilled)
      std::cout << std::showpos << std::setprecision(2)
                << "distillation gain: " << 100.0 * (distilled->accuracy - labels_only->accuracy) << " points\n"
                << std::noshowpos;
    examples::print_results(last.history, last.accuracy);
    return 0;
  });
}
