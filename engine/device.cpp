#include "engine/device.h"

#include <cstdlib>

#include "engine/error.h"

namespace headroom {

Device Device::parse(const std::string& text) {
  if (text == "cpu") return cpu();
  if (text == "cuda") return cuda(0);
  if (text.rfind("cuda:", 0) == 0 && text.size() > 5) {
    char* end = nullptr;
    long idx = std::strtol(text.c_str() + 5, &end, 10);
    if (end && *end == '\0' && idx >= 0) return cuda(static_cast<int>(idx));
  }
  throw DeviceError(str_cat("unknown device '", text, "' (expected cpu, cuda or cuda:N)"));
}

std::string Device::str() const {
  if (type == DeviceType::cpu) return "cpu";
  return str_cat("cuda:", index);
}

}  // namespace headroom
