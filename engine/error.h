// Errors are exceptions. Library code never exits or aborts: it throws a headroom::Error (or a
// subclass) whose message names what was wrong -- the op, the shapes, the dtypes, the device,
// the file and offset -- so that a program can report it and go on.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace headroom {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Shapes that do not fit together: broadcasting, matmul, reshape, state dict loading.
class ShapeError : public Error {
 public:
  using Error::Error;
};

// An op that does not accept a dtype, or two dtypes that do not combine.
class DTypeError : public Error {
 public:
  using Error::Error;
};

// Tensors on different devices, or a device without a backend.
class DeviceError : public Error {
 public:
  using Error::Error;
};

// Bad files: missing, truncated, corrupt, wrong format version or checksum.
class IOError : public Error {
 public:
  using Error::Error;
};

// A value out of range: a dim, an index, a probability.
class ValueError : public Error {
 public:
  using Error::Error;
};

// Autograd misuse: backward through a freed graph, an in-place change of a saved tensor.
class AutogradError : public Error {
 public:
  using Error::Error;
};

// The caching allocator could not satisfy a request even after freeing its cache. The message
// is the full report (what was asked, the limit, use by category, fragmentation, remedies);
// the fields let a program react (e.g. halve its micro-batch). Catching it leaves the process
// usable: nothing was allocated by the failed request.
class OutOfMemoryError : public Error {
 public:
  OutOfMemoryError(const std::string& report, size_t requested_bytes, size_t limit_bytes)
      : Error(report), requested_bytes_(requested_bytes), limit_bytes_(limit_bytes) {}
  size_t requested_bytes() const { return requested_bytes_; }
  size_t limit_bytes() const { return limit_bytes_; }

 private:
  size_t requested_bytes_;
  size_t limit_bytes_;
};

// Concatenates anything that has operator<< into one string: str_cat("got ", 3, " dims").
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

}  // namespace headroom

// HR_CHECK(cond, ErrorType, message parts...): throws ErrorType(str_cat(parts...)) when cond fails.
#define HR_CHECK(cond, ErrorType, ...)                              \
  do {                                                              \
    if (!(cond)) throw ErrorType(::headroom::str_cat(__VA_ARGS__)); \
  } while (0)
