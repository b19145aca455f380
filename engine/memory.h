// What memory is for (categories), which stream it is used on, and the scopes that set both.
//
// Every allocation carries a MemoryCategory, taken from the innermost CategoryScope of the
// allocating thread (temporary when there is none). Autograd retags what it saves for backward
// as activation and allocates backward's results as gradient; modules allocate parameters as
// parameter, optimizers their state as optimizer_state. The allocator keeps current and peak
// bytes per category, which is how every technique in headroom is measured.
#pragma once

#include <array>
#include <cstdint>

#include "engine/device.h"

namespace headroom {

enum class MemoryCategory : uint8_t {
  parameter,
  gradient,
  optimizer_state,
  activation,
  temporary,
  workspace,
  communication,
  kCount
};
inline constexpr int kNumMemoryCategories = static_cast<int>(MemoryCategory::kCount);
static_assert(kNumMemoryCategories == 7, "update category_name");
const char* category_name(MemoryCategory c);

MemoryCategory current_category();

// Allocations made by this thread inside the scope are tagged `category`.
class CategoryScope {
 public:
  explicit CategoryScope(MemoryCategory category);
  ~CategoryScope();
  CategoryScope(const CategoryScope&) = delete;
  CategoryScope& operator=(const CategoryScope&) = delete;

 private:
  MemoryCategory prev_;
};

// A queue of work on a device. Stream 0 is the default stream; the CPU runs everything in
// order on stream 0, but the allocator's per-stream rules are tested with other ids there too.
struct Stream {
  Device device = Device::cpu();
  int64_t id = 0;
  bool operator==(const Stream&) const = default;
};

Stream current_stream(Device device);

// Makes `stream` current for its device on this thread within the scope.
class StreamGuard {
 public:
  explicit StreamGuard(Stream stream);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  Stream prev_;
};

}  // namespace headroom
