// IDX over gzip. Reading goes through one decoder whatever the bytes come from: a ByteInput
// (a file read in chunks, or a buffer in memory) feeds GzipDecoder, which inflates gzip members
// with zlib or passes plain bytes through, and turns every failure into an IOError naming the
// file. Then the IDX header checks. The data is read in chunks into a buffer that grows as
// bytes arrive (not allocated from the header's claim up front), so a corrupt header declaring
// terabytes fails as a truncation, not as an allocation.
//
// Note [gzread compatibility]: GzipDecoder reads what zlib's gzread read before it: input that
// does not start with the gzip magic (1f 8b) is passed through as it is; gzip members that
// follow each other are one stream (gzip -c a b); bytes after a member that are not another
// member are ignored. It differs in one way: an input ending inside a member is reported by
// stream_cut(), which is what the truncation messages use.
#include "nn/data/idx.h"

#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>

#include "engine/error.h"

namespace headroom::data {

namespace {

constexpr size_t kChunk = size_t{1} << 24;             // 16 MiB a gzread call
constexpr size_t kInputChunk = size_t{1} << 17;        // compressed bytes read at a time
constexpr uint64_t kMaxDataBytes = uint64_t{1} << 40;  // no IDX file is a terabyte

void check_readable(const std::string& path, const char* op) {
  std::error_code ec;
  auto status = std::filesystem::status(path, ec);
  HR_CHECK(std::filesystem::exists(status), IOError, op, ": file not found: ", path);
  HR_CHECK(!std::filesystem::is_directory(status), IOError, op, ": ", path, " is a folder, not a file");
}

// Where the (compressed) bytes come from.
class ByteInput {
 public:
  virtual ~ByteInput() = default;
  // Copies up to n bytes into dst; fewer only at the end of the input.
  virtual size_t read(uint8_t* dst, size_t n) = 0;
  // How many bytes the decoder's input buffer needs at most (the whole input when it is small).
  virtual size_t chunk() const { return kInputChunk; }
};

class FileInput final : public ByteInput {
 public:
  FileInput(const std::string& path, const char* op) : path_(path), op_(op) {
    check_readable(path, op);
    file_ = std::fopen(path.c_str(), "rb");
    HR_CHECK(file_ != nullptr, IOError, op, ": cannot open ", path, ": ", std::strerror(errno));
  }
  ~FileInput() override { std::fclose(file_); }
  FileInput(const FileInput&) = delete;
  FileInput& operator=(const FileInput&) = delete;
  size_t read(uint8_t* dst, size_t n) override {
    const size_t got = std::fread(dst, 1, n, file_);
    HR_CHECK(got == n || !std::ferror(file_), IOError, op_, ": cannot read ", path_, " at byte offset ", offset_ + got,
             ": ", std::strerror(errno));
    offset_ += got;
    return got;
  }

 private:
  std::string path_;
  const char* op_;
  std::FILE* file_ = nullptr;
  uint64_t offset_ = 0;
};

class BufferInput final : public ByteInput {
 public:
  BufferInput(const void* data, size_t nbytes) : data_(static_cast<const uint8_t*>(data)), left_(nbytes) {}
  size_t read(uint8_t* dst, size_t n) override {
    n = std::min(n, left_);
    if (n > 0) std::memcpy(dst, data_, n);
    data_ += n;
    left_ -= n;
    return n;
  }
  size_t chunk() const override { return std::clamp<size_t>(left_, 2, kInputChunk); }

 private:
  const uint8_t* data_;
  size_t left_;
};

// Decompressed bytes out of a ByteInput (Note [gzread compatibility]).
class GzipDecoder {
 public:
  GzipDecoder(ByteInput& input, std::string name, const char* op)
      : input_(input), name_(std::move(name)), op_(op), in_(input.chunk()) {}
  ~GzipDecoder() {
    if (inflating_) inflateEnd(&strm_);
  }
  GzipDecoder(const GzipDecoder&) = delete;
  GzipDecoder& operator=(const GzipDecoder&) = delete;

  // Reads up to n bytes; fewer only at the end of the data. Throws on a corrupt stream.
  size_t read(void* dst, size_t n) {
    auto* out = static_cast<uint8_t*>(dst);
    size_t got = 0;
    while (got < n && mode_ != Mode::done) {
      if (mode_ == Mode::look) {
        look();
      } else if (mode_ == Mode::plain) {
        if (avail_ == 0 && refill() == 0) {
          mode_ = Mode::done;
          break;
        }
        const size_t k = std::min(n - got, avail_);
        std::memcpy(out + got, next_, k);
        next_ += k;
        avail_ -= k;
        got += k;
      } else {  // Mode::gzip
        if (avail_ == 0 && refill() == 0) {
          cut_ = true;  // the input ended inside a member
          mode_ = Mode::done;
          break;
        }
        strm_.next_in = const_cast<Bytef*>(next_);
        strm_.avail_in = static_cast<uInt>(avail_);
        strm_.next_out = out + got;
        strm_.avail_out = static_cast<uInt>(std::min<size_t>(n - got, UINT_MAX));
        const int ret = inflate(&strm_, Z_NO_FLUSH);
        got += static_cast<size_t>(strm_.next_out - (out + got));
        next_ = strm_.next_in;
        avail_ = strm_.avail_in;
        if (ret == Z_STREAM_END) {
          mode_ = Mode::look;  // another member may follow
        } else if (ret == Z_MEM_ERROR) {
          throw IOError(str_cat(op_, ": ", name_, ": out of memory while decompressing"));
        } else if (ret != Z_OK) {  // Z_DATA_ERROR, Z_NEED_DICT; Z_BUF_ERROR (no progress) would loop forever
          corrupt(got, ret == Z_NEED_DICT ? "a preset dictionary is needed" : strm_.msg ? strm_.msg : "no progress");
        }
      }
    }
    offset_ += got;
    return got;
  }

  // After a short read: whether the gzip stream itself was cut off (rather than a complete
  // stream whose content is short).
  bool stream_cut() const { return cut_; }
  uint64_t offset() const { return offset_; }

 private:
  enum class Mode { look, plain, gzip, done };

  // Moves what is left of the input to the front of the buffer and reads more after it.
  size_t refill() {
    if (avail_ > 0 && next_ != in_.data()) std::memmove(in_.data(), next_, avail_);
    next_ = in_.data();
    const size_t got = input_.read(in_.data() + avail_, in_.size() - avail_);
    avail_ += got;
    return got;
  }

  // At the start or after a member: gzip, plain bytes, or the end.
  void look() {
    while (avail_ < 2 && refill() > 0) {
    }
    const bool magic = avail_ >= 2 && next_[0] == 0x1f && next_[1] == 0x8b;
    if (magic) {
      if (!inflating_) {
        std::memset(&strm_, 0, sizeof strm_);
        HR_CHECK(inflateInit2(&strm_, 16 + MAX_WBITS) == Z_OK, IOError, op_, ": ", name_,
                 ": cannot start zlib's decoder (out of memory?)");
        inflating_ = true;
      } else {
        inflateReset(&strm_);
      }
      mode_ = Mode::gzip;
      seen_gzip_ = true;
    } else {
      mode_ = seen_gzip_ || avail_ == 0 ? Mode::done : Mode::plain;  // trailing bytes after gzip: ignored
    }
  }

  [[noreturn]] void corrupt(size_t got_now, const char* msg) const {
    throw IOError(str_cat(op_, ": ", name_, ": corrupt gzip stream (zlib: ", msg, ") after ", offset_ + got_now,
                          " decompressed bytes were read"));
  }

  ByteInput& input_;
  std::string name_;
  const char* op_;
  std::vector<uint8_t> in_;
  const uint8_t* next_ = nullptr;
  size_t avail_ = 0;
  z_stream strm_{};
  bool inflating_ = false;
  bool seen_gzip_ = false;
  bool cut_ = false;
  Mode mode_ = Mode::look;
  uint64_t offset_ = 0;  // decompressed bytes handed out
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

std::string truncation_message(const char* op, const std::string& name, uint64_t ran_out_at, uint64_t expected,
                               const std::string& what, bool stream_cut) {
  return str_cat(op, ": ", name, " is truncated: data ran out at byte offset ", ran_out_at, ", expected ", expected,
                 " bytes (", what, ")",
                 stream_cut ? "; the gzip stream itself ends early (an incomplete download?)" : "");
}

// The IDX header and data, from a decoder over a file or a buffer; `name` and `op` word the
// errors.
Tensor parse_idx(GzipDecoder& in, const std::string& name, const char* op) {
  // Magic: 0x00 0x00 <type> <ndim>.
  uint8_t magic[4];
  size_t got = in.read(magic, 4);
  if (got < 4) throw IOError(truncation_message(op, name, got, 4, "the 4-byte IDX magic", in.stream_cut()));
  HR_CHECK(magic[0] == 0 && magic[1] == 0, IOError, op, ": ", name, " is not an IDX file: bad magic ",
           hex_byte(magic[0]), " ", hex_byte(magic[1]), " ", hex_byte(magic[2]), " ", hex_byte(magic[3]),
           " (expected two zero bytes, a type byte and a dims byte)");
  const IdxType* type = nullptr;
  for (const IdxType& t : kIdxTypes)
    if (t.code == magic[2]) type = &t;
  HR_CHECK(type != nullptr, IOError, op, ": ", name, ": unsupported IDX element type ", hex_byte(magic[2]), " (",
           idx_type_name(magic[2]), ") at byte offset 2; supported: 0x08 u8, 0x0c i32, 0x0d f32, 0x0e f64");
  const size_t ndim = magic[3];
  HR_CHECK(ndim > 0, IOError, op, ": ", name, ": the header declares 0 dims (byte offset 3)");

  // Dims: big-endian u32 each.
  const uint64_t header_bytes = 4 + 4 * ndim;
  std::vector<uint8_t> dim_bytes(4 * ndim);
  got = in.read(dim_bytes.data(), dim_bytes.size());
  if (got < dim_bytes.size())
    throw IOError(
        truncation_message(op, name, 4 + got, header_bytes, str_cat("a header with ", ndim, " dims"), in.stream_cut()));
  Shape shape(ndim);
  const size_t elem = dtype_size(type->dtype);
  // Bytes counting only the non-zero dims (Note [shape arithmetic]), capped before they overflow.
  uint64_t nonzero_bytes = elem;
  bool has_zero = false;
  for (size_t d = 0; d < ndim; ++d) {
    shape[d] = load_be32(&dim_bytes[4 * d]);
    if (shape[d] == 0) has_zero = true;
    else if (nonzero_bytes > kMaxDataBytes / static_cast<uint64_t>(shape[d])) nonzero_bytes = kMaxDataBytes + 1;
    else nonzero_bytes *= static_cast<uint64_t>(shape[d]);
  }
  HR_CHECK(nonzero_bytes <= kMaxDataBytes, IOError, op, ": ", name,
           ": the dims at byte offset 4 declare an implausible size ", shape_str(shape), " of ",
           dtype_name(type->dtype), " (over 1 TiB",
           has_zero ? " counting the non-zero dims: a zero dim does not excuse the others" : "", ")");
  const uint64_t data_bytes = has_zero ? 0 : nonzero_bytes;

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
      throw IOError(truncation_message(op, name, header_bytes + bytes.size(), header_bytes + data_bytes,
                                       str_cat("a ", header_bytes, "-byte header and ", data_bytes, " bytes of ",
                                               dtype_name(type->dtype), " ", shape_str(shape)),
                                       in.stream_cut()));
  }
  // Nothing may follow; reading to the end also makes zlib verify the gzip checksum.
  uint8_t extra[256];
  got = in.read(extra, sizeof extra);
  HR_CHECK(got == 0, IOError, op, ": ", name, ": unexpected bytes after the data at byte offset ",
           header_bytes + data_bytes, ": the header declares ", shape_str(shape), " of ", dtype_name(type->dtype),
           " but the file holds more");
  HR_CHECK(!in.stream_cut(), IOError, op, ": ", name,
           ": the gzip stream ends early (no gzip trailer; a truncated file?) after byte offset ",
           header_bytes + data_bytes);

  swap_to_host(bytes.data(), bytes.size(), elem);
  Tensor out = Tensor::empty_host(shape, type->dtype);  // file data: host memory, not the device's
  if (!bytes.empty()) std::memcpy(out.raw_data(), bytes.data(), bytes.size());
  return out;
}

}  // namespace

std::vector<uint8_t> read_gz(const std::string& path) {
  FileInput file(path, "read_gz");
  GzipDecoder in(file, path, "read_gz");
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
  FileInput file(path, "read_idx_gz");
  GzipDecoder in(file, path, "read_idx_gz");
  return parse_idx(in, path, "read_idx_gz");
}

Tensor read_idx_from_buffer(const void* data, size_t nbytes, const std::string& name) {
  HR_CHECK(data != nullptr || nbytes == 0, ValueError, "read_idx_from_buffer: ", name, ": no data but ", nbytes,
           " bytes");
  BufferInput buffer(data, nbytes);
  GzipDecoder in(buffer, name, "read_idx_from_buffer");
  return parse_idx(in, name, "read_idx_from_buffer");
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
    HR_CHECK(s <= static_cast<int64_t>(std::numeric_limits<uint32_t>::max()), ShapeError, "write_idx_gz: dim of ",
             describe(t), " does not fit IDX's u32");

  Tensor host = Tensor::empty(t.shape(), t.dtype());
  copy_tensor(host, t);  // contiguous, on the CPU
  std::vector<uint8_t> bytes{0, 0, type->code, static_cast<uint8_t>(t.dim())};
  for (int64_t s : t.shape())
    for (int shift = 24; shift >= 0; shift -= 8)
      bytes.push_back(static_cast<uint8_t>(static_cast<uint64_t>(s) >> shift));
  size_t header = bytes.size();
  bytes.resize(header + host.nbytes());
  if (host.nbytes() > 0) std::memcpy(bytes.data() + header, host.raw_data(), host.nbytes());
  swap_to_host(bytes.data() + header, host.nbytes(), dtype_size(t.dtype()));  // host -> big-endian: the same flip
  write_gz(path, bytes);
}

}  // namespace headroom::data
