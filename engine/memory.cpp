#include "engine/memory.h"

#include <map>

namespace headroom {

const char* category_name(MemoryCategory c) {
  static const char* names[] = {"parameter", "gradient",  "optimizer_state", "activation",
                                "temporary", "workspace", "communication"};
  int i = static_cast<int>(c);
  return i >= 0 && i < kNumMemoryCategories ? names[i] : "invalid";
}

namespace {
thread_local MemoryCategory t_category = MemoryCategory::temporary;
// Current stream per (device type, index); absent means the default stream 0.
thread_local std::map<std::pair<int, int>, int64_t> t_streams;
std::pair<int, int> key(Device d) { return {static_cast<int>(d.type), d.index}; }
}  // namespace

MemoryCategory current_category() { return t_category; }
CategoryScope::CategoryScope(MemoryCategory category) : prev_(t_category) { t_category = category; }
CategoryScope::~CategoryScope() { t_category = prev_; }

Stream current_stream(Device device) {
  auto it = t_streams.find(key(device));
  return {device, it == t_streams.end() ? 0 : it->second};
}

StreamGuard::StreamGuard(Stream stream) : prev_(current_stream(stream.device)) {
  t_streams[key(stream.device)] = stream.id;
}
StreamGuard::~StreamGuard() { t_streams[key(prev_.device)] = prev_.id; }

}  // namespace headroom
