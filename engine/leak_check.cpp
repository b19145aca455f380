// The leak check (Note [leak check] in engine/leak_check.h).
#include "engine/leak_check.h"

#include <algorithm>
#include <map>
#include <sstream>

#include "engine/allocator.h"
#include "engine/error.h"

namespace headroom {

std::string LeakReport::str() const {
  if (!leaking) return "";
  std::ostringstream os;
  os << "leak check: memory grew " << growing_steps << " steps in a row, by " << format_bytes(growth_bytes) << " (now "
     << format_bytes(allocated_bytes) << "); still alive from those steps:";
  size_t shown = 0;
  for (const LeakGroup& g : groups) {
    if (shown++ == 8) {
      os << "\n  ... and " << groups.size() - 8 << " more";
      break;
    }
    os << "\n  " << category_name(g.category) << " " << format_bytes(g.bytes) << " in " << g.blocks
       << (g.blocks == 1 ? " block" : " blocks") << " from " << g.site;
  }
  os << "\n";
  return os.str();
}

LeakCheck::LeakCheck(Device device, LeakCheckOptions options)
    : device_(device), options_(options), allocator_(caching_allocator(device)) {
  HR_CHECK(options_.warmup_steps >= 0 && options_.patience >= 1 && options_.min_growth_bytes >= 1, ValueError,
           "LeakCheck: warmup_steps must be >= 0, patience >= 1 and min_growth_bytes >= 1, got ", options_.warmup_steps,
           ", ", options_.patience, " and ", options_.min_growth_bytes);
  was_recording_ = allocator_.site_recording();
  allocator_.set_site_recording(true);
  set_allocation_sites_wanted(true);
  last_allocated_ = allocator_.stats().allocated_bytes.current;
  last_serial_ = allocator_.next_serial();
}

LeakCheck::~LeakCheck() {
  set_allocation_sites_wanted(false);
  allocator_.set_site_recording(was_recording_);
}

LeakReport LeakCheck::step() {
  ++steps_;
  LeakReport r;
  r.step = steps_;
  r.allocated_bytes = allocator_.stats().allocated_bytes.current;
  const uint64_t serial_now = allocator_.next_serial();
  const bool judged = steps_ > options_.warmup_steps;
  if (judged && r.allocated_bytes - last_allocated_ >= options_.min_growth_bytes) {
    if (growing_ == 0) {
      run_start_allocated_ = last_allocated_;
      run_start_serial_ = last_serial_;
    }
    ++growing_;
  } else {
    growing_ = 0;
  }
  r.growing_steps = growing_;
  if (growing_ >= options_.patience) {
    r.leaking = true;
    r.growth_bytes = r.allocated_bytes - run_start_allocated_;
    // What the run's steps but the last allocated and still hold (Note [leak check]).
    std::map<std::pair<int, std::string>, LeakGroup> by;
    for (const SegmentInfo& seg : allocator_.snapshot())
      for (const BlockInfo& b : seg.blocks) {
        if (b.state != "allocated" || b.serial < run_start_serial_ || b.serial >= last_serial_) continue;
        const std::string site = b.site ? b.site : "(no autograd op)";
        LeakGroup& g = by[{static_cast<int>(b.category), site}];
        g.category = b.category;
        g.site = site;
        g.bytes += b.size;
        g.blocks += 1;
      }
    for (auto& [key, g] : by) r.groups.push_back(g);
    std::sort(r.groups.begin(), r.groups.end(), [](const LeakGroup& a, const LeakGroup& b) {
      return a.bytes != b.bytes ? a.bytes > b.bytes : a.site < b.site;
    });
  }
  last_allocated_ = r.allocated_bytes;
  last_serial_ = serial_now;
  return r;
}

}  // namespace headroom
