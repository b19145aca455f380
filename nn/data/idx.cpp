// IDX over gzip: a small RAII reader around zlib's gzFile that turns every failure into an
// IOError naming the file, then the IDX header checks. The data is read in chunks into a
// buffer that grows as bytes arrive (not allocated from the header's claim up front), so a
// corrupt header declaring terabytes fails as a truncation, not as an allocation.
#include "nn/data/idx.h"

#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>
#include <limits>

#include "engine/error.h"

namespace headroom::data {

namespace {

constexpr size_t kChunk = size_t{1} << 24;                    // 16 MiB a gzread call
constexpr uint64_t kMaxDataBytes = uint64_t{1} << 40;         // no IDX file is a terabyte

void check_readable(const std::string& path, const char* op) {
  std::error_code ec;
  auto status = std::filesystem::status(path, ec);
  HR_CHECK(std::filesystem::exists(status), IOError, op, ": file not found: ", path);
  HR_CHECK(!std::filesystem::is_directory(status), IOError, op, ": ", path, " is a folder, not a file");
}

class GzReader {
 public:
  GzReader(const std::string& path, const char* op) : path_(path), op_(op) {
    check_readable(path, op);
    file_ = gzopen(path.c_str(), "rb");
    HR_CHECK(file_ != nullptr, IOError, op, ": cannot open ", path, ": ", std::strerror(errno));
    gzbuffer(file_, 1 << 17);
  }
  ~GzReader() {
    if (file_) gzclose_r(file_);
  }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  // Reads up to n bytes; fewer only at the end of the data. Throws on a corrupt stream.
  size_t read(void* dst, size_t n) {
    size_t got = 0;
    auto* out = static_cast<uint8_t*>(dst);
    while (got < n) {
      unsigned ask = static_cast<unsigned>(std::min(n - got, kChunk));
      int r = gzread(file_, out + got, ask);
      if (r < 0) {
        int errnum = 0;
        std::string msg = gzerror(file_, &errnum);
        if (msg.starts_with(path_ + ": ")) msg.erase(0, path_.size() + 2);  // zlib prefixes the path
        throw IOError(str_cat(op_, ": ", path_, ": corrupt gzip stream (zlib: ", msg, ") after ", offset_ + got,
                              " decompressed bytes were read"));
      }
      if (r == 0) break;
      got += static_cast<size_t>(r);
    }
    offset_ += got;
    return got;
  }

  // After a short read: whether the gzip stream itself was cut off (rather than a complete
  // stream whose content is short).
  bool stream_cut() {
    int errnum = Z_OK;
    gzerror(file_, &errnum);
    return errnum == Z_BUF_ERROR;
  }
  uint64_t offset() const { return offset_; }

 private:
  std::string path_;
  const char* op_;
  gzFile file_ = nullptr;
  uint64_t offset_ = 0;  // decompressed bytes consumed
};

struct IdxType {
  uint8_t code;
  DType dtype;
};
constexpr IdxType kIdxTypes[] = {{0x08, DType::u8}, {0x0C, DType::i32}, {0x0D, DType::f32}, {0x0E, DType::f64}};

const char* idx_type_name(uint8_t code) {
  switch (code) {
    case 0x08: return "u8";
    case 0x09: return "i8";
    case 0x0B: return "i16";
    case 0x0C: return "i32";
    case 0x0D: return "f32";
    case 0x0E: return "f64";
    default: return "unknown";
  }
}

std::string hex_byte(uint8_t b) {
  const char* digits = "0123456789abcdef";
  return std::string("0x") + digits[b >> 4] + digits[b & 15];
}

uint32_t load_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// IDX stores multi-byte elements big-endian; flip them in place on a little-endian host.
void swap_to_host(uint8_t* data, size_t nbytes, size_t elem) {
  if (elem == 1 || std::endian::native == std::endian::big) return;
  for (size_t i = 0; i + elem <= nbytes; i += elem) std::reverse(data + i, data + i + elem);
}

std::string truncation_message(const std::string& path, uint64_t ran_out_at, uint64_t expected,
                               const std::string& what, bool stream_cut) {
  return str_cat("read_idx_gz: ", path, " is truncated: data ran out at byte offset ", ran_out_at, ", expected ",
                 expected, " bytes (", what, ")",
                 stream_cut ? "; the gzip stream itself ends early (an incomplete download?)" : "");
}

}  // namespace

std::vector<uint8_t> read_gz(const std::string& path) {
  GzReader in(path, "read_gz");
  std::vector<uint8_t> bytes;
  for (;;) {
    size_t old = bytes.size();
    bytes.resize(old + kChunk);
    size_t got = in.read(bytes.data() + old, kChunk);
    bytes.resize(old + got);
    if (got < kChunk) break;
  }
  HR_CHECK(!in.stream_cut(), IOError, "read_gz: ", path, ": the gzip stream ends early at decompressed byte offset ",
           in.offset(), " (a truncated file?)");
  return bytes;
}

void write_gz(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  HR_CHECK(f != nullptr, IOError, "write_gz: cannot create ", path, ": ", std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    unsigned n = static_cast<unsigned>(std::min(bytes.size() - done, kChunk));
    int w = gzwrite(f, bytes.data() + done, n);
    if (w <= 0) {
      int errnum = 0;
      std::string msg = gzerror(f, &errnum);
      gzclose_w(f);
      throw IOError(str_cat("write_gz: writing ", path, " failed at byte ", done, ": ", msg));
    }
    done += static_cast<size_t>(w);
  }
  HR_CHECK(gzclose_w(f) == Z_OK, IOError, "write_gz: closing ", path, " failed (disk full?)");
}

Tensor read_idx_gz(const std::string& path) {
  GzReader in(path, "read_idx_gz");

  // Magic: 0x00 0x00 <type> <ndim>.
  uint8_t magic[4];
  size_t got = in.read(magic, 4);
  if (got < 4) throw IOError(truncation_message(path, got, 4, "the 4-byte IDX magic", in.stream_cut()));
  HR_CHECK(magic[0] == 0 && magic[1] == 0, IOError, "read_idx_gz: ", path, " is not an IDX file: bad magic ",
           hex_byte(magic[0]), " ", hex_byte(magic[1]), " ", hex_byte(magic[2]), " ", hex_byte(magic[3]),
           " (expected two zero bytes, a type byte and a dims byte)");
  const IdxType* type = nullptr;
  for (const IdxType& t : kIdxTypes)
    if (t.code == magic[2]) type = &t;
  HR_CHECK(type != nullptr, IOError, "read_idx_gz: ", path, ": unsupported IDX element type ", hex_byte(magic[2]),
           " (", idx_type_name(magic[2]), "); supported: 0x08 u8, 0x0c i32, 0x0d f32, 0x0e f64");
  const size_t ndim = magic[3];
  HR_CHECK(ndim > 0, IOError, "read_idx_gz: ", path, ": the header declares 0 dims");

  // Dims: big-endian u32 each.
  const uint64_t header_bytes = 4 + 4 * ndim;
  std::vector<uint8_t> dim_bytes(4 * ndim);
  got = in.read(dim_bytes.data(), dim_bytes.size());
  if (got < dim_bytes.size())
    throw IOError(truncation_message(path, 4 + got, header_bytes,
                                     str_cat("a header with ", ndim, " dims"), in.stream_cut()));
  Shape shape(ndim);
  const size_t elem = dtype_size(type->dtype);
  uint64_t data_bytes = elem;
  for (size_t d = 0; d < ndim; ++d) {
    shape[d] = load_be32(&dim_bytes[4 * d]);
    if (shape[d] != 0 && data_bytes > kMaxDataBytes / static_cast<uint64_t>(shape[d])) data_bytes = kMaxDataBytes + 1;
    else data_bytes *= static_cast<uint64_t>(shape[d]);
  }
  HR_CHECK(data_bytes <= kMaxDataBytes, IOError, "read_idx_gz: ", path, ": the header declares an implausible size ",
           shape_str(shape), " of ", dtype_name(type->dtype), " (over 1 TiB)");

  // Data: grow the buffer as bytes arrive, so a lying header cannot make us allocate its claim.
  std::vector<uint8_t> bytes;
  while (bytes.size() < data_bytes) {
    size_t old = bytes.size();
    size_t step = std::clamp(old, size_t{1} << 20, 4 * kChunk);  // 1 MiB, doubling, at most 64 MiB
    size_t want = static_cast<size_t>(std::min<uint64_t>(data_bytes - old, step));
    bytes.resize(old + want);
    got = in.read(bytes.data() + old, want);
    bytes.resize(old + got);
    if (got < want)
      throw IOError(truncation_message(
          path, header_bytes + bytes.size(), header_bytes + data_bytes,
          str_cat("a ", header_bytes, "-byte header and ", data_bytes, " bytes of ", dtype_name(type->dtype), " ",
                  shape_str(shape)),
          in.stream_cut()));
  }
  // Nothing may follow; reading to the end also makes zlib verify the gzip checksum.
  uint8_t extra[256];
  got = in.read(extra, sizeof extra);
  HR_CHECK(got == 0, IOError, "read_idx_gz: ", path, ": unexpected bytes after the data at byte offset ",
           header_bytes + data_bytes, ": the header declares ", shape_str(shape), " of ", dtype_name(type->dtype),
           " but the file holds more");
  HR_CHECK(!in.stream_cut(), IOError, "read_idx_gz: ", path,
           ": the gzip stream ends early (no gzip trailer; a truncated file?) after byte offset ",
           header_bytes + data_bytes);

  swap_to_host(bytes.data(), bytes.size(), elem);
  Tensor out = Tensor::empty_host(shape, type->dtype);  // file data: host memory, not the device's
  if (!bytes.empty()) std::memcpy(out.raw_data(), bytes.data(), bytes.size());
  return out;
}

void write_idx_gz(const std::string& path, const Tensor& t) {
  HR_CHECK(t.defined(), ValueError, "write_idx_gz: undefined tensor for ", path);
  const IdxType* type = nullptr;
  for (const IdxType& it : kIdxTypes)
    if (it.dtype == t.dtype()) type = &it;
  HR_CHECK(type != nullptr, DTypeError, "write_idx_gz: IDX cannot hold ", describe(t), " (", path,
           "); use u8, i32, f32 or f64");
  HR_CHECK(t.dim() >= 1 && t.dim() <= 255, ShapeError, "write_idx_gz: IDX needs 1 to 255 dims, got ", describe(t));
  for (int64_t s : t.shape())
    HR_CHECK(s <= static_cast<int64_t>(std::numeric_limits<uint32_t>::max()), ShapeError,
             "write_idx_gz: dim of ", describe(t), " does not fit IDX's u32");

  Tensor host = Tensor::empty(t.shape(), t.dtype());
  copy_tensor(host, t);  // contiguous, on the CPU
  std::vector<uint8_t> bytes{0, 0, type->code, static_cast<uint8_t>(t.dim())};
  for (int64_t s : t.shape())
    for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back(static_cast<uint8_t>(static_cast<uint64_t>(s) >> shift));
  size_t header = bytes.size();
  bytes.resize(header + host.nbytes());
  if (host.nbytes() > 0) std::memcpy(bytes.data() + header, host.raw_data(), host.nbytes());
  swap_to_host(bytes.data() + header, host.nbytes(), dtype_size(t.dtype()));  // host -> big-endian: the same flip
  write_gz(path, bytes);
}

}  // namespace headroom::data
