// The state-dict file: round trips of every dtype and shape, and each way a file can be bad.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "nn/serialize.h"
#include "test_util.h"

namespace headroom {
namespace {

using testing::all_close;

class SerializeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = (std::filesystem::temp_directory_path() /
             ("headroom_serialize_" + std::to_string(::getpid()) + "_" +
              ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".hrsd"))
                .string();
  }
  void TearDown() override { std::filesystem::remove(path_); }

  std::vector<char> bytes() const {
    std::ifstream in(path_, std::ios::binary);
    return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  void write(const std::vector<char>& b) const {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out.write(b.data(), static_cast<std::streamsize>(b.size()));
  }
  // Rewrites the trailing checksum so that only the structural checks can object.
  void write_with_fixed_checksum(std::vector<char> b) const {
    uint64_t h = nn::fnv1a64(b.data(), b.size() - 8);
    std::memcpy(b.data() + b.size() - 8, &h, 8);
    write(b);
  }
  // One small entry: "w", f32 (2, 3).
  void save_small() const { nn::save_tensors({{"w", Tensor::arange(6).reshape({2, 3})}}, path_); }

  std::string path_;
};

// Offsets in the one-entry file of save_small (layout in serialize.h).
constexpr size_t kVersionAt = 8, kCountAt = 12, kNameLenAt = 20, kDtypeAt = 25, kNdimAt = 26, kDimsAt = 27,
                 kDataLenAt = 43, kDataAt = 51, kFileSize = 51 + 24 + 8;

TEST(Serialize, Fnv1aKnownValues) {
  EXPECT_EQ(nn::fnv1a64("", 0), 0xcbf29ce484222325ull);
  EXPECT_EQ(nn::fnv1a64("a", 1), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(nn::fnv1a64("foobar", 6), 0x85944171f73967e8ull);
  EXPECT_EQ(nn::fnv1a64("bar", 3, nn::fnv1a64("foo", 3)), 0x85944171f73967e8ull);  // continues
}

TEST_F(SerializeTest, RoundTripsEveryDtypeAndShape) {
  std::map<std::string, Tensor> in;
  for (DType d : {DType::f32, DType::f64, DType::f16, DType::bf16})
    in[std::string("rand_") + dtype_name(d)] = Tensor::randn({3, 5}).to(d);
  in["i32"] = Tensor::from_vector({-7, 0, 2147483647}, {3}, DType::i32);
  in["i64"] = Tensor::from_vector<int64_t>({-(int64_t(1) << 40), 5}, {2, 1}, DType::i64);
  in["u8"] = Tensor::from_vector({0, 255, 17}, {1, 3}, DType::u8);
  in["bool"] = Tensor::from_vector({1, 0, 1, 1}, {2, 2}, DType::boolean);
  in["scalar"] = Tensor::scalar(3.5);
  in["empty"] = Tensor::zeros({0, 4});
  in["view.transposed"] = Tensor::arange(12).reshape({3, 4}).t();  // non-contiguous
  in["view.sliced"] = Tensor::arange(20).slice(0, 3, 17, 4);
  nn::save_tensors(in, path_);
  auto out = nn::load_tensors(path_);
  ASSERT_EQ(out.size(), in.size());
  for (const auto& [name, t] : in) {
    ASSERT_TRUE(out.count(name)) << name;
    const Tensor& u = out.at(name);
    EXPECT_EQ(u.dtype(), t.dtype()) << name;
    EXPECT_EQ(u.shape(), t.shape()) << name;
    EXPECT_TRUE(u.device().is_cpu());
    EXPECT_EQ(u.to_vector<double>(), t.to_vector<double>()) << name;  // bit-exact values
  }
  EXPECT_EQ(out.at("view.transposed").to_vector<float>(), (std::vector<float>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
}

TEST_F(SerializeTest, LayoutMatchesTheDocumentedOffsets) {
  save_small();
  auto b = bytes();
  ASSERT_EQ(b.size(), kFileSize);
  EXPECT_EQ(std::string(b.data(), 8), "HRSTDICT");
  uint32_t version;
  std::memcpy(&version, b.data() + kVersionAt, 4);
  EXPECT_EQ(version, nn::kSerializeVersion);
  uint64_t count, nbytes;
  std::memcpy(&count, b.data() + kCountAt, 8);
  std::memcpy(&nbytes, b.data() + kDataLenAt, 8);
  EXPECT_EQ(count, 1u);
  EXPECT_EQ(nbytes, 24u);
  EXPECT_EQ(b[kNameLenAt], 1);
  EXPECT_EQ(b[kNameLenAt + 4], 'w');
  EXPECT_EQ(b[kDtypeAt], 0);  // f32
  EXPECT_EQ(b[kNdimAt], 2);
  int64_t d1;
  std::memcpy(&d1, b.data() + kDimsAt + 8, 8);
  EXPECT_EQ(d1, 3);
  float f5;
  std::memcpy(&f5, b.data() + kDataAt + 20, 4);
  EXPECT_EQ(f5, 5.0f);
}

TEST_F(SerializeTest, MissingFileIsNamed) {
  EXPECT_THROW_WITH(nn::load_tensors(path_), IOError, "no such file '" + path_ + "'");
}

TEST_F(SerializeTest, WrongMagic) {
  save_small();
  auto b = bytes();
  b[0] = 'X';
  write(b);
  EXPECT_THROW_WITH(nn::load_tensors(path_), IOError, "wrong magic bytes");
}

TEST_F(SerializeTest, UnsupportedVersionNamesBoth) {
  save_small();
  auto b = bytes();
  uint32_t v = 7;
  std::memcpy(b.data() + kVersionAt, &v, 4);
  write_with_fixed_checksum(b);
  EXPECT_THROW_WITH(nn::load_tensors(path_), IOError, "has format version 7; this build reads version 1");
}

TEST_F(SerializeTest, TruncationAtEveryFieldNamesFileOffsetAndField) {
  save_small();
  const auto full = bytes();
  const std::vector<std::pair<size_t, std::string>> cuts = {
      {0, "reading the magic bytes needs 8 bytes at offset 0, but the file ends at byte 0"},
      {5, "reading the magic bytes needs 8 bytes at offset 0, but the file ends at byte 5"},
      {10, "reading the format version needs 4 bytes at offset 8"},
      {kCountAt + 3, "reading the entry count needs 8 bytes at offset 12"},
      {kNameLenAt + 2, "reading the name length of entry 0 needs 4 bytes at offset 20, but the file ends at byte 22"},
      {kNameLenAt + 4, "reading the name of entry 0 needs 1 bytes at offset 24"},
      {kDtypeAt, "reading the dtype of entry 'w' needs 1 bytes at offset 25, but the file ends at byte 25"},
      {kDimsAt + 12, "reading dim 1 of entry 'w' needs 8 bytes at offset 35"},
      {kDataLenAt + 1, "reading the data length of entry 'w' needs 8 bytes at offset 43"},
      {kDataAt + 10, "reading the data of entry 'w' needs 24 bytes at offset 51, but the file ends at byte 61"},
      {kFileSize - 3, "reading the checksum needs 8 bytes at offset 75, but the file ends at byte 80"},
  };
  for (const auto& [cut, message] : cuts) {
    write(std::vector<char>(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(cut)));
    SCOPED_TRACE("cut at " + std::to_string(cut));
    EXPECT_THROW_WITH(nn::load_tensors(path_), IOError, message);
    EXPECT_THROW_WITH(nn::load_tensors(path_), IOError, path_);
  }
}

TEST_F(SerializeTest, FlippedBytesFailTheChecksum) {
  save_small();
  const auto full = bytes();
  for (size_t at : {kDataAt, kDataAt + 23, kNameLenAt + 4, kFileSize - 1}) {
    auto b = full;
    b[at] = static_cast<char>(b[at] ^ 0x10);
    write(b);
    SCOPED_TRACE("flipped byte " + std::to_string(at));
    EXPECT_THROW_WITH(nn::load_tensors(path_), IOError, "checksum mismatch in '" + path_ + "'");
  }
}

TEST_F(SerializeTest, ImplausibleSizesAreRefusedBeforeAllocating) {
  save_small();
  const auto full = bytes();
  auto patched = [&](size_t at, const void* value, size_t n) {
    auto b = full;
    std::memcpy(b.data() + at, value, n);
    write_with_fixed_checksum(b);
  };
  const uint64_t huge_count = uint64_t(1) << 60;
  patched(kCountAt, &huge_count, 8);
  EXPECT_THROW_WITH(nn::load_tensors(path_), IOError, "claims 1152921504606846976 entries");
  const uint32_t long_name = 1u << 30;
  patched(kNameLenAt, &long_name, 4);
  EXPECT_THROW_WITH(nn::load_tensors(path_), IOError, "implausible name length 1073741824");
  const uint8_t rank = 200;
  patched(kNdimAt, &rank, 1);
  EXPECT_THROW_WITH(nn::load_tensors(path_), IOError, "implausible rank 200");
  const uint8_t dtype = 9;
  patched(kDtypeAt, &dtype, 1);
  EXPECT_THROW_WITH(nn::load_tensors(path_), IOError, "unknown dtype code 9");
  const int64_t negative = -3;
  patched(kDimsAt, &negative, 8);
  EXPECT_THROW_WITH(nn::load_tensors(path_), IOError, "negative dim -3");
  const int64_t big_dim = int64_t(1) << 40;
  patched(kDimsAt, &big_dim, 8);
  EXPECT_THROW_WITH(nn::load_tensors(path_), IOError, "stores 24 bytes at offset 43 but f32 (1099511627776, 3) needs");
  const uint64_t len = 1u << 30;
  patched(kDataLenAt, &len, 8);
  EXPECT_THROW_WITH(nn::load_tensors(path_), IOError, "stores 1073741824 bytes");
  // Trailing bytes after the checksum.
  auto b = full;
  b.push_back(0);
  write(b);
  EXPECT_THROW_WITH(nn::load_tensors(path_), IOError, "1 unexpected bytes after the checksum");
}

TEST_F(SerializeTest, DuplicateNamesAreRefused) {
  nn::save_tensors({{"a", Tensor::ones({1})}, {"b", Tensor::ones({1})}}, path_);
  auto b = bytes();
  // Second entry's name: after the first entry (4 + 1 + 1 + 1 + 8 + 8 + 4 = 27 bytes) from 20.
  ASSERT_EQ(b[20 + 27 + 4], 'b');
  b[20 + 27 + 4] = 'a';
  write_with_fixed_checksum(b);
  EXPECT_THROW_WITH(nn::load_tensors(path_), IOError, "entry 'a' appears twice (offset 47)");
}

TEST_F(SerializeTest, SaveRefusesWhatTheFormatCannotHold) {
  EXPECT_THROW_WITH(nn::save_tensors({{"", Tensor::ones({1})}}, path_), ValueError, "entry name");
  EXPECT_THROW_WITH(nn::save_tensors({{"u", Tensor()}}, path_), ValueError, "undefined tensor");
  EXPECT_FALSE(std::filesystem::exists(path_ + ".tmp"));
  EXPECT_THROW_WITH(nn::save_tensors({{"w", Tensor::ones({1})}}, "/nonexistent_dir/x.hrsd"), IOError,
                    "/nonexistent_dir/x.hrsd");
}

TEST_F(SerializeTest, AZeroDimDoesNotHideAnImplausibleShape) {
  // The review's case: dims (0, 2^62, 2^62) have no elements, so the element count did not
  // overflow, but their strides would; it was a ShapeError naming no file.
  nn::save_tensors({{"e", Tensor::zeros({0, 3, 4})}}, path_);
  auto b = bytes();
  const int64_t big = int64_t{1} << 62;
  std::memcpy(b.data() + kDimsAt + 8, &big, 8);
  std::memcpy(b.data() + kDimsAt + 16, &big, 8);
  write_with_fixed_checksum(b);
  EXPECT_THROW_WITH(nn::load_tensors(path_), IOError,
                    "load_tensors: '" + path_ +
                        "': entry 'e' has an implausible shape (0, 4611686018427387904, "
                        "4611686018427387904) in its dims at offset 27");
  EXPECT_THROW_WITH(nn::load_tensors(path_), IOError, "a zero dim does not excuse the others");
  // A zero dim beside plausible ones is an empty tensor, as saved.
  nn::save_tensors({{"e", Tensor::zeros({0, 3, 4})}}, path_);
  EXPECT_EQ(nn::load_tensors(path_).at("e").shape(), (Shape{0, 3, 4}));
}

TEST_F(SerializeTest, BoolBytesOtherThanZeroAndOneAreRefused) {
  nn::save_tensors({{"m", Tensor::from_vector({1, 0, 1}, {3}, DType::boolean)}}, path_);
  auto b = bytes();
  const size_t data_at = 20 + 4 + 1 + 1 + 1 + 8 + 8;
  ASSERT_EQ(b[data_at + 2], 1);
  b[data_at + 2] = 2;
  write_with_fixed_checksum(b);
  EXPECT_THROW_WITH(nn::load_tensors(path_), IOError,
                    "entry 'm' holds the bool byte 0x02 at offset " + std::to_string(data_at + 2));
}

TEST_F(SerializeTest, BuffersLoadLikeFiles) {
  nn::save_tensors({{"w", Tensor::arange(6).reshape({2, 3})}, {"n", Tensor::ones({4}, DType::i64)}}, path_);
  const auto b = bytes();
  auto loaded = nn::load_tensors_from_buffer(b.data(), b.size(), "in-memory checkpoint");
  ASSERT_EQ(loaded.size(), 2u);
  EXPECT_TRUE(all_close(loaded.at("w"), Tensor::arange(6).reshape({2, 3})));
  EXPECT_EQ(loaded.at("n").to_vector<int64_t>(), (std::vector<int64_t>{1, 1, 1, 1}));
  // The same checks, naming the buffer as the caller named it.
  EXPECT_THROW_WITH(nn::load_tensors_from_buffer(b.data(), b.size() - 1, "cut"), IOError, "'cut' is truncated");
  EXPECT_THROW_WITH(nn::load_tensors_from_buffer(nullptr, 0, "empty"), IOError,
                    "'empty' is truncated: reading the magic bytes needs 8 bytes at offset 0");
  auto flipped = b;
  flipped[kDataAt] ^= 1;
  EXPECT_THROW_WITH(nn::load_tensors_from_buffer(flipped.data(), flipped.size(), "flipped"), IOError,
                    "checksum mismatch in 'flipped'");
}

// Note [atomic save] in serialize.cpp: a failed save leaves the old file as it was and no
// temporary file behind, and says which file it could not write.
TEST_F(SerializeTest, AFailedRenameLeavesNoTemporaryFile) {
  // A folder where the file should go: the data is written, the rename over it fails.
  std::filesystem::create_directory(path_);
  EXPECT_THROW_WITH(nn::save_tensors({{"w", Tensor::ones({2})}}, path_), IOError, "'" + path_ + "'");
  EXPECT_FALSE(std::filesystem::exists(path_ + ".tmp"));
  EXPECT_TRUE(std::filesystem::is_directory(path_));
  std::filesystem::remove(path_);
}

TEST_F(SerializeTest, AFullDiskKeepsTheOldFileAndNamesTheNewOne) {
  if (!std::filesystem::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  save_small();
  const auto before = bytes();
  // The temporary file leads to /dev/full: every write fails with ENOSPC (at the latest at fflush).
  std::filesystem::create_symlink("/dev/full", path_ + ".tmp");
  EXPECT_THROW_WITH(nn::save_tensors({{"w", Tensor::ones({1000})}}, path_), IOError, "'" + path_ + "'");
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::symlink_status(path_ + ".tmp")));
  EXPECT_EQ(bytes(), before);
  EXPECT_NO_THROW(nn::load_tensors(path_));
}

TEST_F(SerializeTest, SavingReplacesTheFileWhole) {
  save_small();
  nn::save_tensors({{"v", Tensor::ones({3}, DType::f64)}}, path_);
  auto loaded = nn::load_tensors(path_);
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(loaded.at("v").to_vector<double>(), (std::vector<double>{1, 1, 1}));
  EXPECT_FALSE(std::filesystem::exists(path_ + ".tmp"));
  // A file name without a folder saves into the current one (its folder is synced as ".").
  const auto cwd = std::filesystem::current_path();
  std::filesystem::current_path(std::filesystem::path(path_).parent_path());
  const std::string bare = std::filesystem::path(path_).filename().string();
  EXPECT_NO_THROW(nn::save_tensors({{"w", Tensor::ones({1})}}, bare));
  std::filesystem::current_path(cwd);
  EXPECT_EQ(nn::load_tensors(path_).count("w"), 1u);
}

}  // namespace
}  // namespace headroom
