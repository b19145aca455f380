// Tests of nn/data: IDX files written and read back through zlib, every malformed-file case
// with the message it must give, the Fashion-MNIST cross-checks on small fake files, the real
// files when the Debian package is installed, and the loader's shuffling.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <set>

#include "nn/data/data.h"
#include "test_util.h"

namespace headroom {
namespace {

namespace fs = std::filesystem;
using data::Dataset;

// A fresh temporary folder per test, removed afterwards.
class DataFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("headroom_data_test_") + info->name() + "_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  static std::vector<uint8_t> raw_file(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }
  static void write_raw(const std::string& p, const std::vector<uint8_t>& bytes) {
    std::ofstream out(p, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  // A gzip IDX file of u8 [n, 28, 28] images whose pixel values are (i + k) % 256.
  void write_images(const std::string& name, int64_t n) const {
    Tensor t = Tensor::empty({n, 28, 28}, DType::u8);
    uint8_t* p = t.data<uint8_t>();
    for (int64_t k = 0; k < t.numel(); ++k) p[k] = static_cast<uint8_t>(k * 7 % 256);
    data::write_idx_gz(path(name), t);
  }
  void write_labels(const std::string& name, const std::vector<int>& labels) const {
    std::vector<uint8_t> v(labels.begin(), labels.end());
    data::write_idx_gz(path(name), Tensor::from_vector(v, {static_cast<int64_t>(v.size())}, DType::u8));
  }

  fs::path dir_;
};

TEST_F(DataFiles, IdxRoundTripsEveryDtype) {
  Tensor u8 =
      Tensor::from_vector(std::vector<uint8_t>{0, 1, 2, 127, 128, 200, 254, 255, 9, 8, 7, 6}, {2, 3, 2}, DType::u8);
  Tensor i32 = Tensor::from_vector(std::vector<int32_t>{-70000, 0, 1, 2147483647, -2147483647 - 1}, {5}, DType::i32);
  Tensor f32 = Tensor::from_vector({-1.5, 0.0, 3.25, 1e-20, 6.5e30, -0.0}, {2, 3}, DType::f32);
  Tensor f64 = Tensor::from_vector({0.1, -2.0, 1e300, 4.0}, {2, 1, 2}, DType::f64);
  for (const Tensor& t : {u8, i32, f32, f64}) {
    const std::string p = path(std::string("t.") + dtype_name(t.dtype()) + ".gz");
    data::write_idx_gz(p, t);
    Tensor back = data::read_idx_gz(p);
    EXPECT_EQ(back.dtype(), t.dtype());
    EXPECT_EQ(back.shape(), t.shape());
    EXPECT_EQ(back.to_vector<double>(), t.to_vector<double>()) << dtype_name(t.dtype());
  }
  // The file is gzip, and inside it the IDX header is big-endian as the format says.
  std::vector<uint8_t> raw = raw_file(path("t.i32.gz"));
  ASSERT_GE(raw.size(), 2u);
  EXPECT_EQ(raw[0], 0x1f);
  EXPECT_EQ(raw[1], 0x8b);
  std::vector<uint8_t> inner = data::read_gz(path("t.i32.gz"));
  ASSERT_EQ(inner.size(), 8u + 5 * 4);
  EXPECT_EQ(std::vector<uint8_t>(inner.begin(), inner.begin() + 12),
            (std::vector<uint8_t>{0, 0, 0x0c, 1, 0, 0, 0, 5, 0xff, 0xfe, 0xee, 0x90}));
  // Non-contiguous input is written in logical order.
  data::write_idx_gz(path("t.t.gz"), f32.t());
  EXPECT_EQ(data::read_idx_gz(path("t.t.gz")).to_vector<float>(), f32.t().contiguous().to_vector<float>());
}

TEST_F(DataFiles, PlainIdxIsReadToo) {
  write_raw(path("plain.idx"), {0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 2, 10, 20, 30, 40});
  Tensor t = data::read_idx_gz(path("plain.idx"));
  EXPECT_EQ(t.shape(), (Shape{2, 2}));
  EXPECT_EQ(t.to_vector<int>(), (std::vector<int>{10, 20, 30, 40}));
}

TEST_F(DataFiles, WriteRefusesWhatIdxCannotHold) {
  EXPECT_THROW_WITH(data::write_idx_gz(path("x.gz"), Tensor::zeros({2}, DType::i64)), DTypeError, "i64");
  EXPECT_THROW_WITH(data::write_idx_gz(path("x.gz"), Tensor::scalar(1.0)), ShapeError, "1 to 255 dims");
  EXPECT_THROW_WITH(data::write_idx_gz((dir_ / "no" / "such" / "x.gz").string(), Tensor::zeros({2})), IOError,
                    "cannot create");
}

TEST_F(DataFiles, MissingFileOrFolderIsNamed) {
  const std::string missing = path("nope-idx1-ubyte.gz");
  EXPECT_THROW_WITH(data::read_idx_gz(missing), IOError, "file not found: " + missing);
  EXPECT_THROW_WITH(data::read_idx_gz(dir_.string()), IOError, "is a folder");
  EXPECT_THROW_WITH(data::read_gz(missing), IOError, missing);
}

TEST_F(DataFiles, BadHeadersAreNamed) {
  const std::string p = path("bad.gz");
  data::write_gz(p, {0x08, 0x03, 0x08, 0x01, 0, 0, 0, 1, 5});
  EXPECT_THROW_WITH(data::read_idx_gz(p), IOError, p + " is not an IDX file: bad magic 0x08 0x03 0x08 0x01");
  data::write_gz(p, {0, 0, 0x09, 1, 0, 0, 0, 1, 5});
  EXPECT_THROW_WITH(data::read_idx_gz(p), IOError, p + ": unsupported IDX element type 0x09 (i8)");
  data::write_gz(p, {0, 0, 0x42, 1, 0, 0, 0, 1, 5});
  EXPECT_THROW_WITH(data::read_idx_gz(p), IOError, "unsupported IDX element type 0x42 (unknown)");
  data::write_gz(p, {0, 0, 0x08, 0});
  EXPECT_THROW_WITH(data::read_idx_gz(p), IOError, p + ": the header declares 0 dims");
  data::write_gz(p, {0, 0, 0x08, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff});
  EXPECT_THROW_WITH(data::read_idx_gz(p), IOError, "implausible size (4294967295, 4294967295, 4294967295)");
  EXPECT_THROW_WITH(data::read_idx_gz(p), IOError, "byte offset 4");
}

TEST_F(DataFiles, AZeroDimDoesNotHideAnImplausibleSize) {
  // The review's case: dims (2^32-1, 2^32-1, 0) gave a ShapeError from Tensor::empty_host that
  // named no file; the header itself is what is wrong (Note [shape arithmetic]).
  const std::string p = path("zero.gz");
  const std::vector<std::vector<uint8_t>> headers = {
      {0, 0, 0x08, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0},
      {0, 0, 0x08, 3, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
      {0, 0, 0x0e, 3, 0, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0x80, 0}};  // f64 (0, 2^24, 2^15): 2^42 bytes
  for (const auto& h : headers) {
    data::write_gz(p, h);
    EXPECT_THROW_WITH(data::read_idx_gz(p), IOError, p + ": the dims at byte offset 4 declare an implausible size (");
    EXPECT_THROW_WITH(data::read_idx_gz(p), IOError, "a zero dim does not excuse the others");
  }
  // Zero dims with plausible others: an empty tensor of that shape.
  data::write_gz(p, {0, 0, 0x0d, 2, 0, 0, 0, 0, 0, 1, 0, 0});
  Tensor t = data::read_idx_gz(p);
  EXPECT_EQ(t.shape(), (Shape{0, 65536}));
  EXPECT_EQ(t.dtype(), DType::f32);
}

TEST_F(DataFiles, BuffersAreReadLikeFiles) {
  Tensor t = Tensor::from_vector({1.5, -2.0, 3.25, 0.0, 7.0, 8.0}, {3, 2}, DType::f32);
  data::write_idx_gz(path("t.gz"), t);
  const std::vector<uint8_t> gz = raw_file(path("t.gz"));
  Tensor back = data::read_idx_from_buffer(gz.data(), gz.size(), "t in memory");
  EXPECT_EQ(back.shape(), t.shape());
  EXPECT_EQ(back.to_vector<float>(), t.to_vector<float>());
  // Plain (uncompressed) bytes too, and two gzip members one after the other, as gzip -c a b.
  const std::vector<uint8_t> plain = data::read_gz(path("t.gz"));
  EXPECT_EQ(data::read_idx_from_buffer(plain.data(), plain.size(), "plain").to_vector<float>(), t.to_vector<float>());
  data::write_gz(path("a.gz"), std::vector<uint8_t>(plain.begin(), plain.begin() + 13));
  data::write_gz(path("b.gz"), std::vector<uint8_t>(plain.begin() + 13, plain.end()));
  std::vector<uint8_t> two = raw_file(path("a.gz")), b = raw_file(path("b.gz"));
  two.insert(two.end(), b.begin(), b.end());
  EXPECT_EQ(data::read_idx_from_buffer(two.data(), two.size(), "two").to_vector<float>(), t.to_vector<float>());
  write_raw(path("two.gz"), two);
  EXPECT_EQ(data::read_idx_gz(path("two.gz")).to_vector<float>(), t.to_vector<float>());
  // Errors name what the caller called the buffer, with the same offsets as for a file.
  const std::vector<uint8_t> cut(gz.begin(), gz.begin() + static_cast<int64_t>(gz.size() / 2));
  EXPECT_THROW_WITH(data::read_idx_from_buffer(cut.data(), cut.size(), "half of t"), IOError,
                    "half of t is truncated: data ran out at byte offset ");
  EXPECT_THROW_WITH(data::read_idx_from_buffer(nullptr, 0, "nothing"), IOError,
                    "nothing is truncated: data ran out at byte offset 0, expected 4 bytes");
}

TEST_F(DataFiles, TruncationNamesOffsetAndExpectedBytes) {
  const std::string p = path("short.gz");
  data::write_gz(p, {0, 0});
  EXPECT_THROW_WITH(data::read_idx_gz(p), IOError,
                    p + " is truncated: data ran out at byte offset 2, expected 4 bytes");
  data::write_gz(p, {0, 0, 0x08, 2, 0, 0, 0});  // a 2-d header needs 12 bytes
  EXPECT_THROW_WITH(data::read_idx_gz(p), IOError, "data ran out at byte offset 7, expected 12 bytes");
  // [10] u8 declared, 6 given: the data runs out 8 + 6 bytes in, of 18.
  data::write_gz(p, {0, 0, 0x08, 1, 0, 0, 0, 10, 1, 2, 3, 4, 5, 6});
  EXPECT_THROW_WITH(data::read_idx_gz(p), IOError,
                    p + " is truncated: data ran out at byte offset 14, expected 18 bytes (a 8-byte header and 10 "
                        "bytes of u8 (10,))");
  // f32 [3, 4]: 48 data bytes, 47 given.
  std::vector<uint8_t> f{0, 0, 0x0d, 2, 0, 0, 0, 3, 0, 0, 0, 4};
  f.resize(12 + 47, 0);
  data::write_gz(p, f);
  EXPECT_THROW_WITH(data::read_idx_gz(p), IOError, "data ran out at byte offset 59, expected 60 bytes");
  // A header claiming 4 billion elements over a tiny file is a truncation, not an allocation.
  data::write_gz(p, {0, 0, 0x08, 1, 0xf0, 0, 0, 0, 1, 2, 3});
  EXPECT_THROW_WITH(data::read_idx_gz(p), IOError, "data ran out at byte offset 11, expected 4026531848 bytes");
  // More bytes than declared.
  data::write_gz(p, {0, 0, 0x08, 1, 0, 0, 0, 2, 1, 2, 3});
  EXPECT_THROW_WITH(data::read_idx_gz(p), IOError, p + ": unexpected bytes after the data at byte offset 10");
}

TEST_F(DataFiles, CorruptOrCutGzipStreamIsNamed) {
  const std::string good = path("good.gz"), bad = path("bad.gz");
  Tensor t = Tensor::empty({50, 40}, DType::u8);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<uint8_t>()[i] = static_cast<uint8_t>((i * i) % 251);
  data::write_idx_gz(good, t);
  const std::vector<uint8_t> raw = raw_file(good);
  ASSERT_GT(raw.size(), 40u);
  // A reserved block type (BTYPE 11) right after the 10-byte gzip header.
  std::vector<uint8_t> r = raw;
  r[10] = 0xff;
  write_raw(bad, r);
  EXPECT_THROW_WITH(data::read_idx_gz(bad), IOError, bad + ": corrupt gzip stream (zlib: ");
  EXPECT_THROW_WITH(data::read_gz(bad), IOError, "corrupt gzip stream");
  // A wrong CRC-32 in the trailer: the data decompresses but fails its check at the end.
  r = raw;
  r[r.size() - 8] ^= 0x55;
  write_raw(bad, r);
  EXPECT_THROW_WITH(data::read_idx_gz(bad), IOError, bad + ": corrupt gzip stream (zlib: incorrect data check)");
  // The compressed file cut in half: truncated, and the message says the stream itself ends early.
  r.assign(raw.begin(), raw.begin() + static_cast<int64_t>(raw.size() / 2));
  write_raw(bad, r);
  EXPECT_THROW_WITH(data::read_idx_gz(bad), IOError, "the gzip stream itself ends early");
  EXPECT_THROW_WITH(data::read_idx_gz(bad), IOError, bad + " is truncated: data ran out at byte offset ");
  EXPECT_THROW_WITH(data::read_gz(bad), IOError, "ends early");
  // Cut just before the 8-byte trailer: every data byte is there, the trailer is not.
  r.assign(raw.begin(), raw.end() - 8);
  write_raw(bad, r);
  EXPECT_THROW_WITH(data::read_idx_gz(bad), IOError, bad + ": the gzip stream ends early (no gzip trailer");
}

TEST_F(DataFiles, FashionMnistMissingFolderGivesThePackageHint) {
  const std::string missing = path("not-installed");
  EXPECT_THROW_WITH(data::load_fashion_mnist(missing, true), IOError,
                    "install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)");
  EXPECT_THROW_WITH(data::load_fashion_mnist(missing, true), IOError, "folder " + missing + " not found");
}

TEST_F(DataFiles, FashionMnistMissingFileIsNamed) {
  write_labels("t10k-labels-idx1-ubyte.gz", {1, 2});
  EXPECT_THROW_WITH(data::load_fashion_mnist(dir_.string(), false), IOError,
                    "file not found: " + path("t10k-images-idx3-ubyte.gz"));
  write_images("t10k-images-idx3-ubyte.gz", 2);
  EXPECT_THROW_WITH(data::load_fashion_mnist(dir_.string(), true), IOError,
                    "file not found: " + path("train-images-idx3-ubyte.gz"));
}

TEST_F(DataFiles, FashionMnistSmallFilesLoadAndConvert) {
  write_images("train-images-idx3-ubyte.gz", 3);
  write_labels("train-labels-idx1-ubyte.gz", {9, 0, 4});
  Dataset d = data::load_fashion_mnist(dir_.string(), true);
  EXPECT_EQ(d.size(), 3);
  EXPECT_EQ(d.images.shape(), (Shape{3, 1, 28, 28}));
  EXPECT_EQ(d.images.dtype(), DType::f32);
  EXPECT_EQ(d.labels.dtype(), DType::i64);
  EXPECT_EQ(d.labels.to_vector<int64_t>(), (std::vector<int64_t>{9, 0, 4}));
  std::vector<float> px = d.images.to_vector<float>();
  for (size_t k : {size_t{0}, size_t{1}, size_t{37}, size_t{2000}})
    EXPECT_EQ(px[k], static_cast<float>(k * 7 % 256) / 255.0f) << k;
  EXPECT_EQ(data::fashion_mnist_class_name(9), std::string("Ankle boot"));
  EXPECT_THROW_WITH(data::fashion_mnist_class_name(10), ValueError, "10");
}

TEST_F(DataFiles, FashionMnistMismatchesAreNamed) {
  const std::string images = path("train-images-idx3-ubyte.gz"), labels = path("train-labels-idx1-ubyte.gz");
  write_images("train-images-idx3-ubyte.gz", 3);
  write_labels("train-labels-idx1-ubyte.gz", {1, 2, 3, 4});
  EXPECT_THROW_WITH(data::load_fashion_mnist(dir_.string(), true), IOError,
                    images + " holds 3 images but " + labels + " holds 4 labels");
  write_labels("train-labels-idx1-ubyte.gz", {1, 10, 3});
  EXPECT_THROW_WITH(data::load_fashion_mnist(dir_.string(), true), IOError,
                    labels + ": label 10 of sample 1 is not in 0..9");
  data::write_idx_gz(labels, Tensor::zeros({3, 1}, DType::u8));
  EXPECT_THROW_WITH(data::load_fashion_mnist(dir_.string(), true), IOError, "expected u8 labels [N]");
  data::write_idx_gz(images, Tensor::zeros({3, 784}, DType::u8));
  EXPECT_THROW_WITH(data::load_fashion_mnist(dir_.string(), true), IOError, images + " holds u8 (3, 784)");
  // A broken file inside the set is reported with its own name.
  data::write_gz(images, {0, 0, 0x08, 3, 0, 0, 0, 3});
  EXPECT_THROW_WITH(data::load_fashion_mnist(dir_.string(), true), IOError, images + " is truncated");
}

TEST(FashionMnist, RealFilesLoadWithExpectedShapes) {
  if (!fs::is_directory(data::kFashionMnistDir))
    GTEST_SKIP() << data::kFashionMnistDir << " not found (apt-get install dataset-fashion-mnist)";
  for (bool train : {true, false}) {
    Dataset d = data::load_fashion_mnist(data::kFashionMnistDir, train);
    const int64_t n = train ? 60000 : 10000;
    EXPECT_EQ(d.images.shape(), (Shape{n, 1, 28, 28}));
    EXPECT_EQ(d.labels.shape(), (Shape{n}));
    // Balanced classes: n / 10 of each label 0..9.
    std::map<int64_t, int64_t> counts;
    for (int64_t l : d.labels.to_vector<int64_t>()) ++counts[l];
    ASSERT_EQ(counts.size(), 10u);
    EXPECT_EQ(counts.begin()->first, 0);
    EXPECT_EQ(counts.rbegin()->first, 9);
    for (auto [label, c] : counts) EXPECT_EQ(c, n / 10) << "label " << label;
    const float* px = d.images.data<float>();
    float lo = 1, hi = 0;
    double total = 0;
    for (int64_t i = 0; i < d.images.numel(); ++i) {
      lo = std::min(lo, px[i]);
      hi = std::max(hi, px[i]);
      total += px[i];
    }
    EXPECT_EQ(lo, 0.0f);
    EXPECT_EQ(hi, 1.0f);
    const double mean_px = total / static_cast<double>(d.images.numel());
    EXPECT_GT(mean_px, 0.2);  // Fashion-MNIST's mean pixel is about 0.286
    EXPECT_LT(mean_px, 0.4);
  }
}

// ---- shuffling and batching ----

TEST(Shuffle, PermutationIsReproducibleAndDiffersAcrossEpochsAndSeeds) {
  const int64_t n = 1000;
  std::vector<int64_t> a = data::shuffled_indices(n, 42, 0);
  EXPECT_EQ(a, data::shuffled_indices(n, 42, 0));
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> iota(n);
  std::iota(iota.begin(), iota.end(), 0);
  EXPECT_EQ(sorted, iota);  // a permutation
  EXPECT_NE(a, iota);
  EXPECT_NE(a, data::shuffled_indices(n, 42, 1));
  EXPECT_NE(a, data::shuffled_indices(n, 43, 0));
  EXPECT_TRUE(data::shuffled_indices(0, 1, 0).empty());
  EXPECT_EQ(data::shuffled_indices(1, 1, 5), (std::vector<int64_t>{0}));
  EXPECT_THROW_WITH(data::shuffled_indices(-1, 1, 0), ValueError, "n -1");
}

TEST(Shuffle, EveryPositionIsUniform) {
  // 3 elements, 6 orders; 12000 epochs should give each about 2000 times (sd ~ 41). The
  // classic swap-with-any-index mistake makes 27 equally likely paths, so orders come 4 or 5
  // times in 27 (about 1778 or 2222) and fails the bounds.
  std::map<std::vector<int64_t>, int> counts;
  for (int64_t e = 0; e < 12000; ++e) ++counts[data::shuffled_indices(3, 7, e)];
  ASSERT_EQ(counts.size(), 6u);
  for (auto& [order, c] : counts) {
    EXPECT_GT(c, 1850);
    EXPECT_LT(c, 2150);
  }
}

// Images whose every value is the sample's index, labels equal to the index.
Dataset indexed_dataset(int64_t n) {
  Tensor images = Tensor::empty({n, 1, 2, 3});
  float* p = images.data<float>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < 6; ++k) p[i * 6 + k] = static_cast<float>(i);
  return {images, Tensor::arange(0, static_cast<double>(n), 1, DType::i64)};
}

// All batches of one epoch: their sizes and the sample indices in order, checking that each
// image row matches its label.
std::pair<std::vector<int64_t>, std::vector<int64_t>> drain(data::BatchLoader& loader) {
  std::vector<int64_t> sizes, seen;
  Tensor x, y;
  while (loader.next(x, y)) {
    EXPECT_TRUE(x.is_contiguous());
    EXPECT_EQ(x.dim(), 4);
    EXPECT_EQ(x.size(0), y.size(0));
    EXPECT_EQ(y.dtype(), DType::i64);
    sizes.push_back(y.size(0));
    std::vector<int64_t> labels = y.to_vector<int64_t>();
    std::vector<float> px = x.to_vector<float>();
    for (size_t i = 0; i < labels.size(); ++i) {
      for (size_t k = 0; k < 6; ++k) EXPECT_EQ(px[i * 6 + k], static_cast<float>(labels[i]));
      seen.push_back(labels[i]);
    }
  }
  return {sizes, seen};
}

TEST(BatchLoader, CoversEverySampleOnceAndKeepsThePartialBatch) {
  Dataset d = indexed_dataset(10);
  data::BatchLoader loader(d, 4, /*shuffle=*/true, /*seed=*/3);
  EXPECT_EQ(loader.num_batches(), 3);
  auto [sizes, seen] = drain(loader);
  EXPECT_EQ(sizes, (std::vector<int64_t>{4, 4, 2}));
  EXPECT_EQ(seen, data::shuffled_indices(10, 3, 0));
  EXPECT_EQ(seen, loader.order());
  std::vector<int64_t> sorted = seen;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  // Exhausted: next says so and leaves its arguments alone.
  Tensor x, y;
  EXPECT_FALSE(loader.next(x, y));
  EXPECT_FALSE(x.defined());

  data::BatchLoader dropping(d, 4, true, 3, /*drop_last=*/true);
  EXPECT_EQ(dropping.num_batches(), 2);
  EXPECT_EQ(drain(dropping).first, (std::vector<int64_t>{4, 4}));
  data::BatchLoader big(d, 64, true, 3, true);
  EXPECT_EQ(big.num_batches(), 0);
  EXPECT_FALSE(big.next(x, y));
}

TEST(BatchLoader, ShufflingIsReproducibleAndChangesEachEpoch) {
  Dataset d = indexed_dataset(50);
  data::BatchLoader a(d, 8, true, 11), b(d, 8, true, 11), c(d, 8, true, 12);
  std::vector<std::vector<int64_t>> epochs_a;
  for (int64_t e = 0; e < 3; ++e) {
    a.start_epoch(e);
    b.start_epoch(e);
    c.start_epoch(e);
    auto seen_a = drain(a).second;
    EXPECT_EQ(seen_a, drain(b).second) << "epoch " << e;
    EXPECT_NE(seen_a, drain(c).second) << "epoch " << e;
    std::set<int64_t> unique(seen_a.begin(), seen_a.end());
    EXPECT_EQ(unique.size(), 50u);
    epochs_a.push_back(seen_a);
  }
  EXPECT_NE(epochs_a[0], epochs_a[1]);
  EXPECT_NE(epochs_a[1], epochs_a[2]);
  // Restarting an epoch replays it exactly.
  a.start_epoch(1);
  EXPECT_EQ(drain(a).second, epochs_a[1]);
}

TEST(BatchLoader, WithoutShuffleKeepsFileOrder) {
  Dataset d = indexed_dataset(7);
  data::BatchLoader loader(d, 3, /*shuffle=*/false, 0);
  for (int64_t e = 0; e < 2; ++e) {
    loader.start_epoch(e);
    auto [sizes, seen] = drain(loader);
    EXPECT_EQ(sizes, (std::vector<int64_t>{3, 3, 1}));
    EXPECT_EQ(seen, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6}));
  }
}

TEST(BatchLoader, AcceptsViewsAndSubsets) {
  // A non-contiguous image tensor (a transposed view) is gathered in logical order.
  Dataset d = indexed_dataset(6);
  Dataset strided{Tensor::arange(0, 12, 1).reshape({2, 6}).t().unsqueeze(1), Tensor::arange(0, 6, 1, DType::i64)};
  ASSERT_FALSE(strided.images.is_contiguous());
  data::BatchLoader loader(strided, 4, false, 0);
  Tensor x, y;
  ASSERT_TRUE(loader.next(x, y));
  EXPECT_EQ(x.shape(), (Shape{4, 1, 2}));
  EXPECT_EQ(x.to_vector<float>(), (std::vector<float>{0, 6, 1, 7, 2, 8, 3, 9}));
  // subset keeps the first n samples.
  Dataset head = data::subset(d, 0, 4);
  EXPECT_EQ(head.size(), 4);
  data::BatchLoader sub(head, 3, true, 5);
  auto seen = drain(sub).second;
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_THROW_WITH(data::subset(d, 2, 7), ValueError, "[2, 7) is not within a data set of 6 samples");
}

TEST(BatchLoader, RejectsBadArguments) {
  Dataset d = indexed_dataset(5);
  EXPECT_THROW_WITH(data::BatchLoader(d, 0, true, 1), ValueError, "batch_size must be positive, got 0");
  Dataset mismatched{d.images, Tensor::zeros({4}, DType::i64)};
  EXPECT_THROW_WITH(data::BatchLoader(mismatched, 2, true, 1), ShapeError, "differ in their number of samples");
  EXPECT_THROW_WITH(data::BatchLoader(Dataset{}, 2, true, 1), ValueError, "no images");
  data::BatchLoader ok(d, 2, true, 1);
  EXPECT_THROW_WITH(ok.start_epoch(-1), ValueError, "epoch must be >= 0");
}

}  // namespace
}  // namespace headroom
