// Events over the backends' event methods (engine/event.h).
#include "engine/event.h"

#include <utility>

#include "engine/backend.h"
#include "engine/error.h"

namespace headroom {

Event::~Event() { release(); }

Event::Event(Event&& other) noexcept
    : timing_(other.timing_),
      recorded_(other.recorded_),
      device_(other.device_),
      handle_(other.handle_),
      host_time_(other.host_time_) {
  other.handle_ = 0;
  other.recorded_ = false;
}

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    release();
    timing_ = other.timing_;
    recorded_ = other.recorded_;
    device_ = other.device_;
    handle_ = other.handle_;
    host_time_ = other.host_time_;
    other.handle_ = 0;
    other.recorded_ = false;
  }
  return *this;
}

void Event::release() noexcept {
  if (handle_ == 0) return;
  try {
    backend_for(device_).event_destroy(device_, handle_);
  } catch (...) {
    // A destructor cannot throw; at exit the runtime may be gone, and the event with it.
  }
  handle_ = 0;
}

void Event::record(Stream stream) {
  if (recorded_ || handle_ != 0)
    HR_CHECK(stream.device == device_, DeviceError, "Event: recorded on ", device_.str(),
             " before; cannot record it on ", stream.device.str());
  Backend& backend = backend_for(stream.device);
  if (!stream.device.is_cpu() && handle_ == 0) handle_ = backend.event_create(stream.device, timing_);
  device_ = stream.device;
  if (stream.device.is_cpu()) {
    host_time_ = std::chrono::steady_clock::now();
  } else {
    backend.event_record(handle_, stream);
  }
  recorded_ = true;
}

void Event::wait(Stream stream) const {
  if (!recorded_ || device_.is_cpu()) return;
  HR_CHECK(stream.device == device_, DeviceError, "Event: recorded on ", device_.str(), "; a stream of ",
           stream.device.str(), " cannot wait for it");
  backend_for(device_).event_wait(handle_, stream);
}

void Event::synchronize() const {
  if (recorded_ && !device_.is_cpu()) backend_for(device_).event_synchronize(handle_);
}

bool Event::query() const { return !recorded_ || device_.is_cpu() || backend_for(device_).event_query(handle_); }

double Event::elapsed_ms(const Event& end) const {
  HR_CHECK(timing_ && end.timing_, ValueError, "Event::elapsed_ms: both events must be made with Event(true)");
  HR_CHECK(recorded_ && end.recorded_, ValueError, "Event::elapsed_ms: both events must be recorded first");
  HR_CHECK(device_ == end.device_, DeviceError, "Event::elapsed_ms: events on ", device_.str(), " and ",
           end.device_.str());
  if (device_.is_cpu()) return std::chrono::duration<double, std::milli>(end.host_time_ - host_time_).count();
  return backend_for(device_).event_elapsed_ms(handle_, end.handle_);
}

void synchronize(Stream stream) { backend_for(stream.device).synchronize(stream); }
void synchronize(Device device) { backend_for(device).synchronize_device(device); }

}  // namespace headroom
