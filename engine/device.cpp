#include "engine/device.h"

#include <cstdlib>

#include "engine/error.h"

namespace headroom {

Device Device::parse(const std::string& text) {
  if (text == "cpu") return cpu();
  if (text == "cuda") return cuda(0);
  for (DeviceType type : {DeviceType::cpu, DeviceType::cuda}) {
    const std::string prefix = str_cat(device_type_name(type), ":");
    if (text.rfind(prefix, 0) != 0 || text.size() == prefix.size()) continue;
    const std::string digits = text.substr(prefix.size());
    if (digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 6) break;
    return Device{type, std::atoi(digits.c_str())};
  }
  throw DeviceError(str_cat("unknown device '", text, "' (expected cpu, cpu:N, cuda or cuda:N)"));
}

std::string Device::str() const {
  if (type == DeviceType::cpu) return index == 0 ? "cpu" : str_cat("cpu:", index);  // Note [cpu devices]
  return str_cat("cuda:", index);
}

}  // namespace headroom
