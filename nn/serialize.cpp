// The state-dict file format (layout in serialize.h). Writing and reading both stream, with
// the checksum updated as bytes pass, so neither needs the whole file in memory. The reader
// checks every size against what is left of the file before it allocates or reads, so a
// damaged file gives a message with the byte offset instead of a huge allocation or a crash.
#include "nn/serialize.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

namespace headroom::nn {

static_assert(std::endian::native == std::endian::little,
              "serialize.cpp writes host bytes as little-endian; add byte swapping for this host");

uint64_t fnv1a64(const void* data, size_t nbytes, uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < nbytes; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

namespace {

// Codes fixed by the format, independent of the order of the DType enum.
uint8_t dtype_code(DType d) {
  switch (d) {
    case DType::f32: return 0;
    case DType::f64: return 1;
    case DType::f16: return 2;
    case DType::bf16: return 3;
    case DType::i32: return 4;
    case DType::i64: return 5;
    case DType::u8: return 6;
    case DType::boolean: return 7;
  }
  throw DTypeError("save_tensors: invalid dtype");
}
constexpr int kNumDTypeCodes = 8;
DType dtype_from_code(uint8_t code) {
  static constexpr DType kTable[kNumDTypeCodes] = {DType::f32, DType::f64, DType::f16, DType::bf16,
                                                   DType::i32, DType::i64, DType::u8,  DType::boolean};
  return kTable[code];
}

// Note [atomic save]: save_tensors writes "<path>.tmp", flushes it (fflush) and makes it
// durable (fsync), renames it over path (atomic on POSIX: a reader sees the old file or the new
// one, never half of one), then fsyncs the folder so that the rename itself survives a power
// cut. On any failure the temporary file is removed and an IOError names the file; the old
// file, if there was one, is left as it was. (A checkpoint written every N steps must never be
// the thing a crash destroys.)
class Writer {
 public:
  Writer(std::string tmp_path, std::string final_path) : tmp_(std::move(tmp_path)), path_(std::move(final_path)) {
    file_ = std::fopen(tmp_.c_str(), "wb");
    HR_CHECK(file_ != nullptr, IOError, "save_tensors: cannot open '", tmp_, "' for writing (to save '", path_,
             "'): ", std::strerror(errno));
  }
  ~Writer() {
    if (file_) std::fclose(file_);  // only after a failure; the error is already on its way
  }
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  void write(const void* p, size_t n) {
    if (n > 0 && std::fwrite(p, 1, n, file_) != n) fail("writing");
    hash_ = fnv1a64(p, n, hash_);
    pos_ += n;
  }
  template <typename T>
  void put(T v) {
    write(&v, sizeof v);
  }
  // The checksum, then everything onto the disk before the rename.
  void finish() {
    uint64_t h = hash_;
    if (std::fwrite(&h, 1, sizeof h, file_) != sizeof h) fail("writing the checksum of");
    pos_ += sizeof h;
    if (std::fflush(file_) != 0) fail("flushing");
    if (::fsync(::fileno(file_)) != 0) fail("syncing (fsync)");
    std::FILE* f = file_;
    file_ = nullptr;
    if (std::fclose(f) != 0) fail("closing");
  }

 private:
  [[noreturn]] void fail(const char* doing) const {
    throw IOError(str_cat("save_tensors: ", doing, " '", tmp_, "' (to save '", path_, "') failed at byte ", pos_, ": ",
                          std::strerror(errno)));
  }

  std::string tmp_, path_;
  std::FILE* file_ = nullptr;
  uint64_t hash_ = fnv1a64(nullptr, 0);
  uint64_t pos_ = 0;
};

// fsync of the folder that holds path, so that a rename into it is durable.
void sync_parent_folder(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  HR_CHECK(fd >= 0, IOError, "save_tensors: saved '", path, "' but cannot open its folder '", dir,
           "' to sync the rename: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  HR_CHECK(rc == 0, IOError, "save_tensors: saved '", path, "' but syncing its folder '", dir,
           "' failed (the rename may not survive a crash): ", std::strerror(err));
}

// Where a state dict's bytes come from: a file or a buffer in memory. One Reader and one
// parser (load_from) serve both, so the fuzz target (tests/fuzz/state_dict_fuzz.cpp) tests
// what load_tensors runs.
class Source {
 public:
  virtual ~Source() = default;
  // Reads exactly n bytes (the Reader checked that they are there); false on an I/O error.
  virtual bool read(void* dst, uint64_t n) = 0;
};

class FileSource final : public Source {
 public:
  explicit FileSource(const std::string& path) : in_(path, std::ios::binary) {
    HR_CHECK(in_.is_open(), IOError, "load_tensors: cannot open '", path, "' for reading");
  }
  bool read(void* dst, uint64_t n) override {
    in_.read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
    return static_cast<uint64_t>(in_.gcount()) == n;
  }

 private:
  std::ifstream in_;
};

class BufferSource final : public Source {
 public:
  explicit BufferSource(const void* data) : p_(static_cast<const char*>(data)) {}
  bool read(void* dst, uint64_t n) override {
    if (n > 0) std::memcpy(dst, p_, n);
    p_ += n;
    return true;
  }

 private:
  const char* p_;
};

class Reader {
 public:
  Reader(Source& source, const char* op, std::string name, uint64_t size)
      : source_(source), op_(op), name_(std::move(name)), size_(size) {}
  uint64_t pos() const { return pos_; }
  uint64_t size() const { return size_; }
  uint64_t remaining() const { return size_ - pos_; }
  // Throws the truncation error unless n more bytes are there.
  void need(uint64_t n, const std::string& what) const {
    HR_CHECK(n <= remaining(), IOError, op_, ": '", name_, "' is truncated: reading ", what, " needs ", n,
             " bytes at offset ", pos_, ", but the file ends at byte ", size_);
  }
  void read(void* dst, uint64_t n, const std::string& what, bool hashed = true) {
    need(n, what);
    HR_CHECK(source_.read(dst, n), IOError, op_, ": reading ", what, " from '", name_, "' at offset ", pos_, " failed");
    if (hashed) hash_ = fnv1a64(dst, n, hash_);
    pos_ += n;
  }
  template <typename T>
  T get(const std::string& what) {
    T v;
    read(&v, sizeof v, what);
    return v;
  }
  uint64_t hash() const { return hash_; }

 private:
  Source& source_;
  const char* op_;
  std::string name_;
  uint64_t size_;
  uint64_t pos_ = 0;
  uint64_t hash_ = fnv1a64(nullptr, 0);
};

// A tensor's bytes may be at most 2^56 (64 PiB): far beyond any file, well inside int64.
constexpr uint64_t kMaxTensorBytes = uint64_t{1} << 56;

// The whole file format's reader, for load_tensors and load_tensors_from_buffer.
std::map<std::string, Tensor> load_from(Reader& r, const char* op, const std::string& path) {
  const uint64_t size = r.size();
  char magic[sizeof kSerializeMagic];
  r.read(magic, sizeof magic, "the magic bytes");
  HR_CHECK(std::equal(magic, magic + sizeof magic, kSerializeMagic), IOError, op, ": '", path,
           "' is not a headroom state-dict file (wrong magic bytes; expected \"HRSTDICT\")");
  const auto version = r.get<uint32_t>("the format version");
  HR_CHECK(version == kSerializeVersion, IOError, op, ": '", path, "' has format version ", version,
           "; this build reads version ", kSerializeVersion);
  const auto count = r.get<uint64_t>("the entry count");
  // The smallest entry (name length, a one-byte name, dtype, ndim, data length) takes 15 bytes,
  // so no file can hold more than size / 15 entries. (A count that merely exceeds what is left
  // is reported as truncation when the entries run out, with the offset.)
  constexpr uint64_t kMinEntryBytes = 4 + 1 + 1 + 1 + 8;
  HR_CHECK(count <= size / kMinEntryBytes, IOError, op, ": '", path, "' claims ", count,
           " entries at offset 12, implausible for a file of ", size, " bytes (truncated or corrupt header?)");

  std::map<std::string, Tensor> out;
  for (uint64_t e = 0; e < count; ++e) {
    const std::string where = str_cat("entry ", e);
    const uint64_t entry_at = r.pos();
    const auto name_len = r.get<uint32_t>(str_cat("the name length of ", where));
    HR_CHECK(name_len >= 1 && name_len <= kMaxNameBytes, IOError, op, ": '", path, "': ", where, " at offset ",
             entry_at, " has an implausible name length ", name_len, " (1 to ", kMaxNameBytes, " allowed)");
    std::string name(name_len, '\0');
    r.read(name.data(), name_len, str_cat("the name of ", where));
    const std::string what = str_cat("entry '", name, "'");
    const auto code = r.get<uint8_t>(str_cat("the dtype of ", what));
    HR_CHECK(code < kNumDTypeCodes, IOError, op, ": '", path, "': ", what, " has an unknown dtype code ",
             static_cast<int>(code), " at offset ", r.pos() - 1);
    const DType dtype = dtype_from_code(code);
    const auto ndim = r.get<uint8_t>(str_cat("the rank of ", what));
    HR_CHECK(ndim <= kMaxDims, IOError, op, ": '", path, "': ", what, " has an implausible rank ",
             static_cast<int>(ndim), " at offset ", r.pos() - 1, " (at most ", kMaxDims, ")");
    const uint64_t dims_at = r.pos();
    Shape shape(ndim);
    // Bytes counting only the non-zero dims (Note [shape arithmetic] in engine/shape.h: a zero
    // dim must not hide dims whose strides overflow), capped before they can overflow.
    uint64_t nonzero_bytes = dtype_size(dtype);
    bool has_zero = false;
    for (int d = 0; d < ndim; ++d) {
      shape[d] = r.get<int64_t>(str_cat("dim ", d, " of ", what));
      HR_CHECK(shape[d] >= 0, IOError, op, ": '", path, "': ", what, " has a negative dim ", shape[d], " at offset ",
               r.pos() - 8);
      if (shape[d] == 0) has_zero = true;
      else if (nonzero_bytes > kMaxTensorBytes / static_cast<uint64_t>(shape[d])) nonzero_bytes = kMaxTensorBytes + 1;
      else nonzero_bytes *= static_cast<uint64_t>(shape[d]);
    }
    HR_CHECK(nonzero_bytes <= kMaxTensorBytes, IOError, op, ": '", path, "': ", what, " has an implausible shape ",
             shape_str(shape), " in its dims at offset ", dims_at, ": ", dtype_name(dtype), " of that shape ",
             has_zero ? "counting only the non-zero dims (a zero dim does not excuse the others) " : "",
             "would take over 2^56 bytes");
    const uint64_t expected = has_zero ? 0 : nonzero_bytes;
    const auto nbytes = r.get<uint64_t>(str_cat("the data length of ", what));
    HR_CHECK(nbytes == expected, IOError, op, ": '", path, "': ", what, " stores ", nbytes, " bytes at offset ",
             r.pos() - 8, " but ", dtype_name(dtype), " ", shape_str(shape), " needs ", expected);
    HR_CHECK(!out.count(name), IOError, op, ": '", path, "': ", what, " appears twice (offset ", entry_at, ")");
    r.need(nbytes, str_cat("the data of ", what));  // before allocating
    const uint64_t data_at = r.pos();
    Tensor t = Tensor::empty(shape, TensorOptions().dtype(dtype));
    if (nbytes > 0) r.read(t.raw_data(), nbytes, str_cat("the data of ", what));
    if (dtype == DType::boolean) {
      // Any other byte is not a bool: reading it as one is undefined behaviour.
      const auto* b = static_cast<const uint8_t*>(t.raw_data());
      for (uint64_t i = 0; i < nbytes; ++i)
        HR_CHECK(b[i] <= 1, IOError, op, ": '", path, "': ", what, " holds the bool byte 0x",
                 "0123456789abcdef"[b[i] >> 4], "0123456789abcdef"[b[i] & 15], " at offset ", data_at + i,
                 " (bools are 0 or 1)");
    }
    out.emplace(name, std::move(t));
  }

  const uint64_t computed = r.hash();
  uint64_t stored = 0;
  r.read(&stored, sizeof stored, "the checksum", /*hashed=*/false);
  HR_CHECK(r.remaining() == 0, IOError, op, ": '", path, "' has ", r.remaining(),
           " unexpected bytes after the checksum at offset ", r.pos() - 8);
  HR_CHECK(stored == computed, IOError, op, ": checksum mismatch in '", path, "': the file is corrupt (stored ", stored,
           ", computed ", computed, ")");
  return out;
}

}  // namespace

void save_tensors(const std::map<std::string, Tensor>& tensors, const std::string& path) {
  const std::string tmp = path + ".tmp";
  // Note [atomic save].
  try {
    {
      Writer w(tmp, path);
      w.write(kSerializeMagic, sizeof kSerializeMagic);
      w.put<uint32_t>(kSerializeVersion);
      w.put<uint64_t>(tensors.size());
      for (const auto& [name, t] : tensors) {
        HR_CHECK(t.defined(), ValueError, "save_tensors: entry '", name, "' is an undefined tensor");
        HR_CHECK(!name.empty() && name.size() <= kMaxNameBytes, ValueError, "save_tensors: entry name '", name,
                 "' must have 1 to ", kMaxNameBytes, " bytes");
        HR_CHECK(t.dim() <= static_cast<int64_t>(kMaxDims), ValueError, "save_tensors: entry '", name, "' has ",
                 t.dim(), " dims; the format allows ", kMaxDims);
        w.put<uint32_t>(static_cast<uint32_t>(name.size()));
        w.write(name.data(), name.size());
        w.put<uint8_t>(dtype_code(t.dtype()));
        w.put<uint8_t>(static_cast<uint8_t>(t.dim()));
        for (int64_t d : t.shape()) w.put<int64_t>(d);
        w.put<uint64_t>(t.nbytes());
        if (t.numel() == 0) continue;
        // Host, contiguous bytes: the tensor itself when it already is, else a copy (a GPU
        // tensor, a view) made one tensor at a time.
        Tensor host = t;
        if (!t.device().is_cpu() || !t.is_contiguous()) {
          host = Tensor::empty(t.shape(), TensorOptions().dtype(t.dtype()));
          copy_tensor(host, t);
        }
        w.write(host.raw_data(), host.nbytes());
      }
      w.finish();
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    HR_CHECK(!ec, IOError, "save_tensors: cannot rename '", tmp, "' to '", path, "': ", ec.message());
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
  sync_parent_folder(path);  // the file is in place; only the rename's durability is at stake
}

std::map<std::string, Tensor> load_tensors(const std::string& path) {
  std::error_code ec;
  HR_CHECK(std::filesystem::exists(path, ec), IOError, "load_tensors: no such file '", path, "'");
  HR_CHECK(std::filesystem::is_regular_file(path, ec), IOError, "load_tensors: '", path, "' is not a regular file");
  const uint64_t size = std::filesystem::file_size(path, ec);
  HR_CHECK(!ec, IOError, "load_tensors: cannot read the size of '", path, "': ", ec.message());
  FileSource source(path);
  Reader r(source, "load_tensors", path, size);
  return load_from(r, "load_tensors", path);
}

std::map<std::string, Tensor> load_tensors_from_buffer(const void* data, size_t nbytes, const std::string& name) {
  HR_CHECK(data != nullptr || nbytes == 0, ValueError, "load_tensors_from_buffer: '", name, "': no data but ", nbytes,
           " bytes");
  BufferSource source(data);
  Reader r(source, "load_tensors", name, nbytes);
  return load_from(r, "load_tensors", name);
}

}  // namespace headroom::nn
