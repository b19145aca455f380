// Where a tensor lives: one of the host's cpu devices (cpu:N) or one GPU (cuda:N).
//
// Note [cpu devices]: cpu:0, cpu:1, ... are separate devices of one process, so that a laptop
// behaves like a node of several small GPUs (issue 15's model, pipeline and tensor
// parallelism): each has its own CachingAllocator -- its own limit, statistics and
// out-of-memory report -- while all share the host's memory and cores. A tensor on cpu:1 is not
// on cpu:0: an op that mixes them is a DeviceError, and Tensor::to copies between them, the bytes
// counted on both. There are 8 of them unless HEADROOM_CPU_DEVICES says otherwise
// (device_count(DeviceType::cpu)). cpu:0 prints as "cpu", as it always did.
#pragma once

#include <ostream>
#include <string>

namespace headroom {

enum class DeviceType : uint8_t { cpu, cuda };
inline constexpr int kNumDeviceTypes = 2;
// "cpu", "cuda".
inline const char* device_type_name(DeviceType type) { return type == DeviceType::cpu ? "cpu" : "cuda"; }

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static Device cpu(int index = 0) { return {DeviceType::cpu, index}; }
  static Device cuda(int index = 0) { return {DeviceType::cuda, index}; }
  // "cpu", "cpu:2", "cuda", "cuda:1"; throws DeviceError on anything else. (Whether the device
  // exists is decided where it is used: allocator_for, device_count.)
  static Device parse(const std::string& text);

  bool is_cpu() const { return type == DeviceType::cpu; }
  bool is_cuda() const { return type == DeviceType::cuda; }
  std::string str() const;
  bool operator==(const Device&) const = default;
};

inline std::ostream& operator<<(std::ostream& os, const Device& d) { return os << d.str(); }

}  // namespace headroom
