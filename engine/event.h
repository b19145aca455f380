// Events and synchronisation: ordering work across streams, and timing it.
//
// A GPU runs the work queued on each stream in order, and streams run concurrently; an Event
// marks a point in one stream's queue. Another stream can wait for it (wait: the host does
// not), the host can wait for it (synchronize), and two timing events give the device time
// between them -- the right way to time GPU work, since a kernel launch returns at once.
// On the CPU everything runs in order as it is called: waits return at once and timing events
// read the host clock, so code written for both runs everywhere.
//
//   Stream copy_stream{Device::cuda(0), 1};
//   Event ready;
//   { StreamGuard g(copy_stream); next = batch.to(Device::cuda(0), true); ready.record(); }
//   ready.wait(current_stream(Device::cuda(0)));  // compute waits for the copy, host does not
//
//   Event start(true), stop(true);
//   start.record(stream); step(); stop.record(stream); stop.synchronize();
//   double ms = start.elapsed_ms(stop);
#pragma once

#include <chrono>
#include <cstdint>

#include "engine/device.h"
#include "engine/memory.h"

namespace headroom {

class Event {
 public:
  explicit Event(bool timing = false) : timing_(timing) {}
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  Event(Event&& other) noexcept;
  Event& operator=(Event&& other) noexcept;

  // Marks the work queued on `stream` so far. An event is tied to the device of its first
  // record; recording it on another device throws DeviceError.
  void record(Stream stream);
  void record(Device device) { record(current_stream(device)); }
  // Work queued on `stream` from now on waits until the recorded point is reached.
  void wait(Stream stream) const;
  void synchronize() const;  // the host waits
  bool query() const;        // reached? (true when never recorded)
  // Milliseconds from this event to `end`; both timing events, both recorded and completed
  // (synchronize `end` first). Throws ValueError otherwise.
  double elapsed_ms(const Event& end) const;
  bool recorded() const { return recorded_; }
  Device device() const { return device_; }

 private:
  void release() noexcept;
  bool timing_;
  bool recorded_ = false;
  Device device_ = Device::cpu();
  uint64_t handle_ = 0;                              // the backend's event (cuda), 0 on the cpu
  std::chrono::steady_clock::time_point host_time_;  // cpu timing
};

// The host waits for the work queued on a stream, or on every stream of a device.
void synchronize(Stream stream);
void synchronize(Device device);

}  // namespace headroom
