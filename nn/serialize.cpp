// The state-dict file format (layout in serialize.h). Writing and reading both stream, with
// the checksum updated as bytes pass, so neither needs the whole file in memory. The reader
// checks every size against what is left of the file before it allocates or reads, so a
// damaged file gives a message with the byte offset instead of a huge allocation or a crash.
#include "nn/serialize.h"

#include <algorithm>
#include <bit>
#include <cstdio>
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

class Writer {
 public:
  Writer(const std::string& path, const std::string& final_path)
      : out_(path, std::ios::binary | std::ios::trunc), path_(final_path) {
    HR_CHECK(out_.is_open(), IOError, "save_tensors: cannot open '", path, "' for writing");
  }
  void write(const void* p, size_t n) {
    out_.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
    HR_CHECK(out_.good(), IOError, "save_tensors: writing '", path_, "' failed at byte ", pos_,
             " (disk full or not writable?)");
    hash_ = fnv1a64(p, n, hash_);
    pos_ += n;
  }
  template <typename T> void put(T v) { write(&v, sizeof v); }
  void finish() {
    uint64_t h = hash_;
    out_.write(reinterpret_cast<const char*>(&h), sizeof h);
    out_.close();
    HR_CHECK(!out_.fail(), IOError, "save_tensors: writing '", path_, "' failed at byte ", pos_,
             " (disk full or not writable?)");
  }

 private:
  std::ofstream out_;
  std::string path_;
  uint64_t hash_ = fnv1a64(nullptr, 0);
  uint64_t pos_ = 0;
};

class Reader {
 public:
  Reader(const std::string& path, uint64_t size) : in_(path, std::ios::binary), path_(path), size_(size) {
    HR_CHECK(in_.is_open(), IOError, "load_tensors: cannot open '", path, "' for reading");
  }
  uint64_t pos() const { return pos_; }
  uint64_t size() const { return size_; }
  uint64_t remaining() const { return size_ - pos_; }
  const std::string& path() const { return path_; }
  // Throws the truncation error unless n more bytes are there.
  void need(uint64_t n, const std::string& what) const {
    HR_CHECK(n <= remaining(), IOError, "load_tensors: '", path_, "' is truncated: reading ", what,
             " needs ", n, " bytes at offset ", pos_, ", but the file ends at byte ", size_);
  }
  void read(void* dst, uint64_t n, const std::string& what, bool hashed = true) {
    need(n, what);
    in_.read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
    HR_CHECK(static_cast<uint64_t>(in_.gcount()) == n, IOError, "load_tensors: reading ", what,
             " from '", path_, "' at offset ", pos_, " failed");
    if (hashed) hash_ = fnv1a64(dst, n, hash_);
    pos_ += n;
  }
  template <typename T> T get(const std::string& what) {
    T v;
    read(&v, sizeof v, what);
    return v;
  }
  uint64_t hash() const { return hash_; }

 private:
  std::ifstream in_;
  std::string path_;
  uint64_t size_;
  uint64_t pos_ = 0;
  uint64_t hash_ = fnv1a64(nullptr, 0);
};

}  // namespace

void save_tensors(const std::map<std::string, Tensor>& tensors, const std::string& path) {
  const std::string tmp = path + ".tmp";
  try {
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
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  HR_CHECK(!ec, IOError, "save_tensors: cannot rename '", tmp, "' to '", path, "': ", ec.message());
}

std::map<std::string, Tensor> load_tensors(const std::string& path) {
  std::error_code ec;
  HR_CHECK(std::filesystem::exists(path, ec), IOError, "load_tensors: no such file '", path, "'");
  HR_CHECK(std::filesystem::is_regular_file(path, ec), IOError, "load_tensors: '", path, "' is not a regular file");
  const uint64_t size = std::filesystem::file_size(path, ec);
  HR_CHECK(!ec, IOError, "load_tensors: cannot read the size of '", path, "': ", ec.message());
  Reader r(path, size);

  char magic[sizeof kSerializeMagic];
  r.read(magic, sizeof magic, "the magic bytes");
  HR_CHECK(std::equal(magic, magic + sizeof magic, kSerializeMagic), IOError, "load_tensors: '", path,
           "' is not a headroom state-dict file (wrong magic bytes; expected \"HRSTDICT\")");
  const auto version = r.get<uint32_t>("the format version");
  HR_CHECK(version == kSerializeVersion, IOError, "load_tensors: '", path, "' has format version ", version,
           "; this build reads version ", kSerializeVersion);
  const auto count = r.get<uint64_t>("the entry count");
  // The smallest entry (name length, a one-byte name, dtype, ndim, data length) takes 15 bytes,
  // so no file can hold more than size / 15 entries. (A count that merely exceeds what is left
  // is reported as truncation when the entries run out, with the offset.)
  constexpr uint64_t kMinEntryBytes = 4 + 1 + 1 + 1 + 8;
  HR_CHECK(count <= size / kMinEntryBytes, IOError, "load_tensors: '", path, "' claims ", count,
           " entries at offset 12, implausible for a file of ", size, " bytes (truncated or corrupt header?)");

  std::map<std::string, Tensor> out;
  for (uint64_t e = 0; e < count; ++e) {
    const std::string where = str_cat("entry ", e);
    const uint64_t entry_at = r.pos();
    const auto name_len = r.get<uint32_t>(str_cat("the name length of ", where));
    HR_CHECK(name_len >= 1 && name_len <= kMaxNameBytes, IOError, "load_tensors: '", path, "': ", where,
             " at offset ", entry_at, " has an implausible name length ", name_len, " (1 to ", kMaxNameBytes,
             " allowed)");
    std::string name(name_len, '\0');
    r.read(name.data(), name_len, str_cat("the name of ", where));
    const std::string what = str_cat("entry '", name, "'");
    const auto code = r.get<uint8_t>(str_cat("the dtype of ", what));
    HR_CHECK(code < kNumDTypeCodes, IOError, "load_tensors: '", path, "': ", what, " has an unknown dtype code ",
             static_cast<int>(code), " at offset ", r.pos() - 1);
    const DType dtype = dtype_from_code(code);
    const auto ndim = r.get<uint8_t>(str_cat("the rank of ", what));
    HR_CHECK(ndim <= kMaxDims, IOError, "load_tensors: '", path, "': ", what, " has an implausible rank ",
             static_cast<int>(ndim), " at offset ", r.pos() - 1, " (at most ", kMaxDims, ")");
    Shape shape(ndim);
    uint64_t numel = 1;
    for (int d = 0; d < ndim; ++d) {
      shape[d] = r.get<int64_t>(str_cat("dim ", d, " of ", what));
      HR_CHECK(shape[d] >= 0, IOError, "load_tensors: '", path, "': ", what, " has a negative dim ", shape[d],
               " at offset ", r.pos() - 8);
      HR_CHECK(!__builtin_mul_overflow(numel, static_cast<uint64_t>(shape[d]), &numel) && numel <= (1ull << 56),
               IOError, "load_tensors: '", path, "': ", what, " has an implausible shape (element count overflows)");
    }
    const auto nbytes = r.get<uint64_t>(str_cat("the data length of ", what));
    HR_CHECK(nbytes == numel * dtype_size(dtype), IOError, "load_tensors: '", path, "': ", what, " stores ", nbytes,
             " bytes at offset ", r.pos() - 8, " but ", dtype_name(dtype), " ", shape_str(shape), " needs ",
             numel * dtype_size(dtype));
    HR_CHECK(!out.count(name), IOError, "load_tensors: '", path, "': ", what, " appears twice (offset ", entry_at, ")");
    r.need(nbytes, str_cat("the data of ", what));  // before allocating
    Tensor t = Tensor::empty(shape, TensorOptions().dtype(dtype));
    if (nbytes > 0) r.read(t.raw_data(), nbytes, str_cat("the data of ", what));
    out.emplace(name, std::move(t));
  }

  const uint64_t computed = r.hash();
  uint64_t stored = 0;
  r.read(&stored, sizeof stored, "the checksum", /*hashed=*/false);
  HR_CHECK(r.remaining() == 0, IOError, "load_tensors: '", path, "' has ", r.remaining(),
           " unexpected bytes after the checksum at offset ", r.pos() - 8);
  HR_CHECK(stored == computed, IOError, "load_tensors: checksum mismatch in '", path,
           "': the file is corrupt (stored ", stored, ", computed ", computed, ")");
  return out;
}

}  // namespace headroom::nn
