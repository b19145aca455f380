#include "engine/caching_allocator.h"

#include <algorithm>
#include <charconv>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <iomanip>
#include <sstream>

#include "engine/error.h"

namespace headroom {

struct CachingAllocator::Segment {
  char* ptr = nullptr;
  size_t size = 0;
  uint64_t serial = 0;  // the order segments were obtained in (Note [placement order])
  int64_t stream = 0;
  bool small = false;
  Block* head = nullptr;
};

struct CachingAllocator::Block {
  char* ptr = nullptr;
  size_t size = 0;
  size_t requested = 0;
  int64_t stream = 0;
  bool allocated = false;
  bool pending = false;  // freed, waiting for events on other streams
  MemoryCategory category = MemoryCategory::temporary;
  uint64_t serial = 0;         // this allocation's number (Note [allocation sites])
  const char* site = nullptr;  // the op whose output it holds, while sites are recorded
  Segment* segment = nullptr;
  Block* prev = nullptr;
  Block* next = nullptr;
  // Streams other than its own it was used on; for the pinned host pool these are GPU streams
  // (Note [host pool]), so the device is kept with the id.
  std::vector<Stream> stream_uses;
  std::vector<uint64_t> events;

  bool is_split() const { return prev != nullptr || next != nullptr; }
  bool is_free() const { return !allocated && !pending; }
};

size_t CachingAllocator::round_size(size_t nbytes) {
  return nbytes <= kRound ? kRound : (nbytes + kRound - 1) / kRound * kRound;
}

// Note [placement order]: among free blocks of one size, the one in the oldest segment wins, and
// within a segment the one at the lower offset -- never the lower address across segments. The
// host and cudaMalloc hand out addresses in an order nobody chooses, and a placement that
// depended on them would make reserved bytes (fragmentation) differ from run to run and from
// what meta execution predicts over its own address ranges (Note [meta execution]).
bool CachingAllocator::BlockLess::operator()(const Block* a, const Block* b) const {
  if (a->stream != b->stream) return a->stream < b->stream;
  if (a->size != b->size) return a->size < b->size;
  if (a->segment != b->segment) {
    if (!a->segment || !b->segment) return !a->segment;  // a search key (no segment) comes first
    return a->segment->serial < b->segment->serial;
  }
  return a->ptr < b->ptr;
}

// ---- Stat ----

void Stat::add(int64_t n) {
  current += n;
  allocated += n;
  peak = std::max(peak, current);
}
void Stat::sub(int64_t n) {
  current -= n;
  freed += n;
}

const char* trace_kind_name(TraceKind k) {
  switch (k) {
    case TraceKind::alloc: return "alloc";
    case TraceKind::free: return "free";
    case TraceKind::segment_alloc: return "segment_alloc";
    case TraceKind::segment_free: return "segment_free";
    case TraceKind::oom: return "oom";
  }
  return "invalid";
}

// ---- host backend ----

void* HostMemoryBackend::raw_alloc(size_t nbytes) {
  size_t rounded = (nbytes + 511) / 512 * 512;
  return std::aligned_alloc(512, rounded == 0 ? 512 : rounded);
}
void HostMemoryBackend::raw_free(void* ptr, size_t) { std::free(ptr); }

// ---- allocator ----

CachingAllocator::CachingAllocator(std::unique_ptr<DeviceMemoryBackend> backend)
    : backend_(std::move(backend)), start_(std::chrono::steady_clock::now()) {}

CachingAllocator::~CachingAllocator() {
  // Segments still holding live blocks belong to tensors that outlive the allocator (static
  // destruction order); leave them to the process.
  std::lock_guard<std::recursive_mutex> lock(mu_);
  for (auto& seg : segments_) {
    if (seg->head && !seg->head->next && seg->head->is_free()) {
      backend_->raw_free(seg->ptr, seg->size);
      delete seg->head;
      seg->head = nullptr;
    }
  }
}

Device CachingAllocator::device() const { return backend_->device(); }
bool CachingAllocator::is_meta() const { return backend_->is_meta(); }
bool CachingAllocator::is_host_pool() const { return backend_->is_host_pool(); }
std::string CachingAllocator::name() const { return is_host_pool() ? "the pinned host pool" : device().str(); }

size_t CachingAllocator::bytes_in_use() const {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return static_cast<size_t>(stats_.allocated_bytes.current);
}
size_t CachingAllocator::peak_bytes_in_use() const {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return static_cast<size_t>(stats_.allocated_bytes.peak);
}

CachingAllocator::Pool& CachingAllocator::pool_of(const Block* b) {
  return b->segment->small ? small_pool_ : large_pool_;
}

void CachingAllocator::update_inactive_split(Block* b, int sign) {
  if (!b->is_free() || !b->is_split()) return;
  if (sign > 0) {
    stats_.inactive_split_bytes.add(static_cast<int64_t>(b->size));
    stats_.inactive_split.add(1);
  } else {
    stats_.inactive_split_bytes.sub(static_cast<int64_t>(b->size));
    stats_.inactive_split.sub(1);
  }
}

void CachingAllocator::record(TraceKind kind, uint64_t address, int64_t bytes, MemoryCategory category, int64_t stream,
                              int64_t requested) {
  if (!trace_enabled_) return;
  TraceEvent e;
  e.time_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start_).count();
  e.kind = kind;
  e.address = address;
  e.bytes = bytes;
  e.requested = requested;
  e.category = category;
  e.stream = stream;
  e.allocated_after = stats_.allocated_bytes.current;
  e.reserved_after = stats_.reserved_bytes.current;
  for (int c = 0; c < kNumMemoryCategories; ++c)
    e.category_after[static_cast<size_t>(c)] = stats_.category_bytes[static_cast<size_t>(c)].current;
  trace_.push_back(e);
}

CachingAllocator::Block* CachingAllocator::find_free_block(Pool& pool, size_t size, int64_t stream) {
  Block key;
  key.stream = stream;
  key.size = size;
  key.ptr = nullptr;
  auto it = pool.lower_bound(&key);
  if (it == pool.end() || (*it)->stream != stream) return nullptr;
  return *it;
}

CachingAllocator::Block* CachingAllocator::new_segment(size_t size, bool small, int64_t stream, bool& over_limit) {
  if (limit_ > 0 && static_cast<size_t>(stats_.reserved_bytes.current) + size > limit_) {
    over_limit = true;
    return nullptr;
  }
  void* p = backend_->raw_alloc(size);
  if (!p) return nullptr;
  auto seg = std::make_unique<Segment>();
  seg->ptr = static_cast<char*>(p);
  seg->size = size;
  seg->serial = next_segment_serial_++;
  seg->stream = stream;
  seg->small = small;
  auto* b = new Block();
  b->ptr = seg->ptr;
  b->size = size;
  b->stream = stream;
  b->segment = seg.get();
  seg->head = b;
  segments_.push_back(std::move(seg));
  stats_.reserved_bytes.add(static_cast<int64_t>(size));
  reserved_high_water_ = std::max(reserved_high_water_, stats_.reserved_bytes.current);
  stats_.segment.add(1);
  ++stats_.num_device_alloc;
  record(TraceKind::segment_alloc, reinterpret_cast<uint64_t>(p), static_cast<int64_t>(size), current_category(),
         stream);
  return b;
}

void CachingAllocator::split_block(Block* b, size_t size) {
  size_t remaining = b->size - size;
  bool worth = b->segment->small ? remaining >= kRound : remaining > kSmallRequest;
  if (!worth) return;
  auto* rest = new Block();
  rest->ptr = b->ptr + size;
  rest->size = remaining;
  rest->stream = b->stream;
  rest->segment = b->segment;
  rest->prev = b;
  rest->next = b->next;
  if (b->next) b->next->prev = rest;
  b->next = rest;
  b->size = size;
  pool_of(rest).insert(rest);
  update_inactive_split(rest, +1);
}

Allocation CachingAllocator::allocate(size_t nbytes) {
  return allocate(nbytes, current_stream(device()), current_category());
}

namespace {
thread_local const char* t_no_allocation = nullptr;
}  // namespace
NoAllocationScope::NoAllocationScope(const char* what) : prev_(t_no_allocation) { t_no_allocation = what; }
NoAllocationScope::~NoAllocationScope() { t_no_allocation = prev_; }
const char* NoAllocationScope::active() { return t_no_allocation; }

Allocation CachingAllocator::allocate(size_t nbytes, Stream stream, MemoryCategory category) {
  HR_CHECK(t_no_allocation == nullptr, Error, "CachingAllocator: ", t_no_allocation, " must not allocate, but asked ",
           device().str(), " for ", nbytes, " bytes (", category_name(category), ")");
  std::lock_guard<std::recursive_mutex> lock(mu_);
  process_pending_events();
  HR_CHECK(nbytes <= (size_t{1} << 62), ValueError, "CachingAllocator: a request of ", nbytes, " bytes on ",
           device().str(), " is beyond any device");
  const size_t rounded = round_size(nbytes);
  const bool small = rounded <= kSmallRequest;
  // Note [fault injection]: the allocation and limit kinds count every call.
  bool fail_segment = false;
  if (fault_.kind != FaultKind::none && !fault_.fired) {
    if (fault_.kind == FaultKind::allocation || fault_.kind == FaultKind::limit) {
      if (++fault_.seen == fault_.at) {
        fault_.fired = true;
        if (fault_.kind == FaultKind::allocation) {
          ++stats_.num_allocs;
          ++stats_.num_ooms;
          record(TraceKind::oom, 0, static_cast<int64_t>(rounded), category, stream.id, static_cast<int64_t>(nbytes));
          throw OutOfMemoryError(str_cat("injected failure (", fault_kind_name(fault_.kind), " #", fault_.at,
                                         " since inject_fault or HEADROOM_FAIL_ALLOC)\n",
                                         oom_report_locked(nbytes, rounded, /*injected=*/true)),
                                 nbytes, limit_);
        }
        limit_before_fault_ = limit_;
        limit_ = static_cast<size_t>(std::max<int64_t>(stats_.reserved_bytes.current, 1));
      }
    }
  }
  Pool& pool = small ? small_pool_ : large_pool_;
  Block* b = find_free_block(pool, rounded, stream.id);
  ++stats_.num_allocs;
  if (b) {
    ++stats_.num_cache_hits;
    update_inactive_split(b, -1);
    pool.erase(b);
  } else {
    // A small request gets a 2 MiB small-pool segment; a large one a segment of its own size,
    // rounded to the backend's granularity (the remainder, when over 1 MiB, is split off and
    // cached for other large requests).
    const size_t grain = std::max<size_t>(backend_->granularity(), kRound);
    const size_t segment_size = small ? kSmallSegment : (rounded + grain - 1) / grain * grain;
    bool over_limit = false;
    // Note [release on miss]: no cached block fits, so whole-free cached segments could not
    // serve this request; release some before asking for a new segment, or they would sit on top
    // of it at the peak (replay_bench: peak reserved / peak allocated for a CNN step, 1.48
    // without this, 1.10 with it). Only as many as keep the reservation within its high-water
    // mark (the largest first, the request's own pool first), and none where the request is for
    // a segment of a size an earlier miss handed back: a loop whose working set needs them all
    // would otherwise trade the same segments back and forth every step. Releasing every
    // whole-free segment on every miss did that: resnet18-cpu-f32 asked the C library for 8
    // segments a step and the kernel for 230 fresh pages; mlp-cpu-f32 took 21.3 ms a step at 1
    // thread and 14.8 at 2, now 14.1 and 8.6; resnet18 at 2 threads 39.9 -> 35.0 ms (2-core AMD
    // EPYC, 2026-12-07, medians of 3 paired runs). The price is some reserve: ResNet-18 quarter
    // width reserves 31.38 MiB at its peak instead of 30.25 (27.29 allocated), the MLP 16.12
    // instead of 14.12; without any release on miss, 32.52 and 16.12. On a GPU each trade would
    // have been a cudaFree, which waits for the device.
    if (release_on_miss_) release_for_miss(segment_size, small);
    if (fault_.kind == FaultKind::segment && !fault_.fired && ++fault_.seen == fault_.at) {
      fault_.fired = true;
      fail_segment = true;  // both tries below fail, as on a full device
    }
    for (int attempt = 0; attempt < 2 && !b; ++attempt) {
      if (attempt == 1) {
        ++stats_.num_alloc_retries;
        backend_->synchronize();
        process_pending_events();
        release_cached_segments();
      }
      if (!fail_segment) b = new_segment(segment_size, small, stream.id, over_limit);
    }
    if (!b) {
      ++stats_.num_ooms;
      record(TraceKind::oom, 0, static_cast<int64_t>(rounded), category, stream.id, static_cast<int64_t>(nbytes));
      std::string report = oom_report_locked(nbytes, rounded, fail_segment);
      if (fail_segment)
        report = str_cat("injected failure (segment request #", fault_.at,
                         " since inject_fault or HEADROOM_FAIL_ALLOC)\n", report);
      else if (fault_.kind == FaultKind::limit && fault_.fired)
        report = str_cat("injected failure (the limit was lowered to the ", format_bytes(static_cast<int64_t>(limit_)),
                         " reserved at allocation #", fault_.at, " by inject_fault or HEADROOM_FAIL_ALLOC)\n", report);
      throw OutOfMemoryError(report, nbytes, limit_);
    }
  }
  split_block(b, rounded);
  b->allocated = true;
  b->requested = nbytes;
  b->category = category;
  b->serial = next_serial_++;
  b->site = nullptr;
  b->stream_uses.clear();
  const auto size = static_cast<int64_t>(b->size);
  stats_.allocated_bytes.add(size);
  stats_.requested_bytes.add(static_cast<int64_t>(nbytes));
  stats_.active_bytes.add(size);
  stats_.allocation.add(1);
  stats_.active.add(1);
  stats_.category_bytes[static_cast<size_t>(category)].add(size);
  record(TraceKind::alloc, reinterpret_cast<uint64_t>(b->ptr), size, category, stream.id, static_cast<int64_t>(nbytes));
  return {b->ptr, nbytes, b};
}

void CachingAllocator::deallocate(const Allocation& a) {
  if (!a.context) return;
  std::lock_guard<std::recursive_mutex> lock(mu_);
  auto* b = static_cast<Block*>(a.context);
  HR_CHECK(b->allocated, Error, "CachingAllocator: double free of the block at ", static_cast<void*>(b->ptr));
  const auto size = static_cast<int64_t>(b->size);
  b->allocated = false;
  stats_.allocated_bytes.sub(size);
  stats_.requested_bytes.sub(static_cast<int64_t>(b->requested));
  stats_.allocation.sub(1);
  stats_.category_bytes[static_cast<size_t>(b->category)].sub(size);
  record(TraceKind::free, reinterpret_cast<uint64_t>(b->ptr), size, b->category, b->stream);
  if (!b->stream_uses.empty()) {
    // Note [stream reuse]: wait for the other streams before anyone reuses this block.
    for (const Stream& s : b->stream_uses) b->events.push_back(backend_->record_event(s));
    b->pending = true;
    pending_.push_back(b);
    return;
  }
  free_block(b);
}

void CachingAllocator::free_block(Block* b) {
  stats_.active_bytes.sub(static_cast<int64_t>(b->size));
  stats_.active.sub(1);
  b->pending = false;
  b->stream_uses.clear();
  // Coalesce with free neighbours in the segment.
  for (Block* n : {b->prev, b->next}) {
    if (!n || !n->is_free()) continue;
    update_inactive_split(n, -1);
    pool_of(n).erase(n);
    if (n == b->prev) {
      n->size += b->size;
      n->next = b->next;
      if (b->next) b->next->prev = n;
      if (b->segment->head == b) b->segment->head = n;
      delete b;
      b = n;
    } else {
      b->size += n->size;
      b->next = n->next;
      if (n->next) n->next->prev = b;
      delete n;
    }
  }
  pool_of(b).insert(b);
  update_inactive_split(b, +1);
}

void CachingAllocator::process_pending_events() {
  if (pending_.empty()) return;
  std::vector<Block*> still;
  for (Block* b : pending_) {
    bool done = std::all_of(b->events.begin(), b->events.end(), [&](uint64_t e) { return backend_->event_done(e); });
    if (!done) {
      still.push_back(b);
      continue;
    }
    for (uint64_t e : b->events) backend_->release_event(e);
    b->events.clear();
    free_block(b);
  }
  pending_ = std::move(still);
}

void CachingAllocator::release_segment(Segment* seg) {
  Block* b = seg->head;
  pool_of(b).erase(b);
  stats_.reserved_bytes.sub(static_cast<int64_t>(seg->size));
  stats_.segment.sub(1);
  ++stats_.num_device_free;
  record(TraceKind::segment_free, reinterpret_cast<uint64_t>(seg->ptr), static_cast<int64_t>(seg->size),
         MemoryCategory::temporary, seg->stream);
  backend_->raw_free(seg->ptr, seg->size);
  delete b;
  seg->head = nullptr;
}

size_t CachingAllocator::release_cached_segments() {
  size_t freed = 0;
  for (auto& seg : segments_) {
    Block* h = seg->head;
    if (h && !h->next && h->is_free()) {
      freed += seg->size;
      release_segment(seg.get());
    }
  }
  segments_.erase(std::remove_if(segments_.begin(), segments_.end(), [](const auto& s) { return s->head == nullptr; }),
                  segments_.end());
  return freed;
}

void CachingAllocator::release_for_miss(size_t segment_size, bool small) {
  const auto over = [&] {
    return stats_.reserved_bytes.current + static_cast<int64_t>(segment_size) > reserved_high_water_;
  };
  if (!over()) return;
  // A request for a segment of the size an earlier miss handed back: the loop needs them all at
  // once, and handing another one back would only start the same exchange again.
  const auto again = std::find(released_on_miss_.begin(), released_on_miss_.end(), segment_size);
  if (again != released_on_miss_.end()) {
    released_on_miss_.erase(again);
    return;
  }
  std::vector<Segment*> whole_free;
  for (auto& seg : segments_) {
    Block* h = seg->head;
    if (h && !h->next && h->is_free()) whole_free.push_back(seg.get());
  }
  // The request's own pool first, then the largest: the fewest segments given back.
  std::sort(whole_free.begin(), whole_free.end(), [&](const Segment* a, const Segment* b) {
    if ((a->small == small) != (b->small == small)) return a->small == small;
    return a->size > b->size;
  });
  for (Segment* seg : whole_free) {
    if (!over()) break;
    if (released_on_miss_.size() == kReleasedOnMissKept) released_on_miss_.erase(released_on_miss_.begin());
    released_on_miss_.push_back(seg->size);
    release_segment(seg);
  }
  segments_.erase(std::remove_if(segments_.begin(), segments_.end(), [](const auto& s) { return s->head == nullptr; }),
                  segments_.end());
}

void CachingAllocator::record_stream(const Allocation& a, Stream stream) {
  if (!a.context) return;
  std::lock_guard<std::recursive_mutex> lock(mu_);
  auto* b = static_cast<Block*>(a.context);
  if (stream == Stream{device(), b->stream}) return;
  if (std::find(b->stream_uses.begin(), b->stream_uses.end(), stream) == b->stream_uses.end())
    b->stream_uses.push_back(stream);
}

void CachingAllocator::set_category(const Allocation& a, MemoryCategory category) {
  if (!a.context) return;
  std::lock_guard<std::recursive_mutex> lock(mu_);
  auto* b = static_cast<Block*>(a.context);
  if (!b->allocated || b->category == category) return;
  const auto size = static_cast<int64_t>(b->size);
  stats_.category_bytes[static_cast<size_t>(b->category)].sub(size);
  stats_.category_bytes[static_cast<size_t>(category)].add(size);
  b->category = category;
}

MemoryCategory CachingAllocator::category_of(const Allocation& a) const {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return a.context ? static_cast<Block*>(a.context)->category : MemoryCategory::temporary;
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  backend_->synchronize();
  process_pending_events();
  release_cached_segments();
  // What comes next starts afresh (Note [release on miss]): its misses are judged against what it
  // reserves itself, so the same steps reserve the same whatever ran before them.
  reserved_high_water_ = stats_.reserved_bytes.current;
  released_on_miss_.clear();
}

void CachingAllocator::set_release_on_miss(bool on) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  release_on_miss_ = on;
}

void CachingAllocator::set_memory_limit(size_t bytes) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  limit_ = bytes;
  // Note [memory limit]: below what is reserved, the cache goes first; live blocks stay.
  if (bytes > 0 && static_cast<size_t>(stats_.reserved_bytes.current) > bytes) {
    backend_->synchronize();
    process_pending_events();
    release_cached_segments();
  }
}

const char* fault_kind_name(FaultKind k) {
  switch (k) {
    case FaultKind::none: return "none";
    case FaultKind::allocation: return "allocation";
    case FaultKind::segment: return "segment";
    case FaultKind::limit: return "limit";
  }
  return "invalid";
}

void CachingAllocator::inject_fault(FaultKind kind, int64_t k) {
  HR_CHECK(kind == FaultKind::none || k >= 1, ValueError, "inject_fault: the request to fail is counted from 1, got ",
           k);
  std::lock_guard<std::recursive_mutex> lock(mu_);
  clear_fault();
  fault_.kind = kind;
  fault_.at = kind == FaultKind::none ? 0 : k;
}

void CachingAllocator::clear_fault() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (fault_.kind == FaultKind::limit && fault_.fired) limit_ = limit_before_fault_;
  fault_ = FaultStatus{};
}

FaultStatus CachingAllocator::fault_status() const {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return fault_;
}

std::pair<FaultKind, int64_t> parse_fault_injection(const std::string& text, const std::string& what) {
  FaultKind kind = FaultKind::allocation;
  std::string number = text;
  const size_t colon = text.find(':');
  if (colon != std::string::npos) {
    const std::string name = text.substr(0, colon);
    number = text.substr(colon + 1);
    if (name == "allocation" || name == "alloc") kind = FaultKind::allocation;
    else if (name == "segment") kind = FaultKind::segment;
    else if (name == "limit") kind = FaultKind::limit;
    else
      throw ValueError(str_cat(what, ": unknown kind '", name, "' in '", text,
                               "' (expected k, allocation:k, segment:k or limit:k with k >= 1)"));
  }
  int64_t k = 0;
  auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), k);
  if (number.empty() || ec != std::errc() || end != number.data() + number.size() || k < 1)
    throw ValueError(
        str_cat(what, ": expected k, allocation:k, segment:k or limit:k with a whole k >= 1, got '", text, "'"));
  return {kind, k};
}
size_t CachingAllocator::memory_limit() const {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return limit_;
}

MemoryStats CachingAllocator::stats() const {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return stats_;
}

void CachingAllocator::reset_peak_stats() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  for (Stat* s :
       {&stats_.allocated_bytes, &stats_.requested_bytes, &stats_.reserved_bytes, &stats_.active_bytes,
        &stats_.inactive_split_bytes, &stats_.allocation, &stats_.segment, &stats_.active, &stats_.inactive_split})
    s->reset_peak();
  for (auto& s : stats_.category_bytes) s.reset_peak();
}

void CachingAllocator::set_site(const Allocation& a, const char* site) {
  if (!a.context) return;
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (!record_sites_) return;
  auto* b = static_cast<Block*>(a.context);
  if (b->allocated && b->site == nullptr) b->site = site;  // the first op to produce it
}

void CachingAllocator::set_site_recording(bool on) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  record_sites_ = on;
}

bool CachingAllocator::site_recording() const {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return record_sites_;
}

uint64_t CachingAllocator::next_serial() const {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return next_serial_;
}

std::vector<SegmentInfo> CachingAllocator::snapshot() const {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  std::vector<SegmentInfo> out;
  for (const auto& seg : segments_) {
    SegmentInfo si;
    si.address = reinterpret_cast<uint64_t>(seg->ptr);
    si.size = static_cast<int64_t>(seg->size);
    si.stream = seg->stream;
    si.small_pool = seg->small;
    for (Block* b = seg->head; b; b = b->next) {
      BlockInfo bi;
      bi.address = reinterpret_cast<uint64_t>(b->ptr);
      bi.size = static_cast<int64_t>(b->size);
      bi.requested = b->allocated ? static_cast<int64_t>(b->requested) : 0;
      bi.state = b->allocated ? "allocated" : (b->pending ? "pending_free" : "free");
      bi.category = b->category;
      if (b->allocated) {
        bi.serial = b->serial;
        bi.site = b->site;
      }
      si.blocks.push_back(bi);
    }
    out.push_back(std::move(si));
  }
  return out;
}

void CachingAllocator::set_trace_enabled(bool enabled) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  trace_enabled_ = enabled;
}
std::vector<TraceEvent> CachingAllocator::trace() const {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return trace_;
}
void CachingAllocator::clear_trace() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  trace_.clear();
}

namespace {
thread_local unsigned remedies_used = 0;
}

RemedyUsedScope::RemedyUsedScope(std::initializer_list<Remedy> used) : prev_(remedies_used) {
  for (Remedy r : used) remedies_used |= static_cast<unsigned>(r);
}
RemedyUsedScope::~RemedyUsedScope() { remedies_used = prev_; }
bool RemedyUsedScope::used(Remedy r) { return (remedies_used & static_cast<unsigned>(r)) != 0; }

std::string CachingAllocator::oom_report(size_t bytes) const {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return oom_report_locked(bytes, round_size(bytes));
}

// Note [host pool] (engine/allocator.h): what fills the pinned host pool is what offload put
// there, so its remedies are about offloading less -- each names what headroom has.
void CachingAllocator::host_pool_remedies(std::ostream& os, int64_t allocated, int64_t limit, int64_t rounded) const {
  bool any = false;
  if (limit > 0) {
    os << "\n    - raise the pool's limit (HEADROOM_HOST_MEMORY_LIMIT, or host_pool().set_memory_limit)";
    any = true;
  }
  const int64_t activations = stats_.category(MemoryCategory::activation).current;
  const int64_t state =
      stats_.category(MemoryCategory::optimizer_state).current + stats_.category(MemoryCategory::gradient).current;
  const int64_t parameters = stats_.category(MemoryCategory::parameter).current;
  if (activations > 0) {
    os << "\n    - offloaded activations hold " << format_bytes(activations)
       << ": offload fewer (a larger ActivationOffloadOptions::min_bytes), or recompute them instead (checkpoint())";
    any = true;
  }
  if (state > 0) {
    os << "\n    - offloaded optimizer state, master weights and gradients hold " << format_bytes(state)
       << ": keep the state on the device (optim::AdamW), or shard it over ranks (ZeRO, optim/zero.h)";
    any = true;
  }
  if (parameters > 0) {
    os << "\n    - streamed parameters hold " << format_bytes(parameters)
       << ": a smaller model, or parameters kept on the device (no nn::ParameterStreamer)";
    any = true;
  }
  if (!any)
    os << "\n    - "
       << (allocated == 0 ? "nothing else is in the pool: this request alone is more than the host gives"
                          : "shrink the request")
       << " (" << format_bytes(rounded) << ")";
}

std::string CachingAllocator::oom_report_locked(size_t bytes, size_t rounded, bool injected) const {
  std::ostringstream os;
  const int64_t allocated = stats_.allocated_bytes.current;
  const int64_t reserved = stats_.reserved_bytes.current;
  int64_t cached_free = 0, largest_free = 0;
  for (const Pool* p : {&small_pool_, &large_pool_})
    for (const Block* b : *p) {
      cached_free += static_cast<int64_t>(b->size);
      largest_free = std::max(largest_free, static_cast<int64_t>(b->size));
    }
  const bool host = is_host_pool();
  os << "out of memory " << (host ? "in " : "on ") << name() << ": tried to allocate "
     << format_bytes(static_cast<int64_t>(bytes));
  if (rounded != bytes) os << " (" << format_bytes(static_cast<int64_t>(rounded)) << " rounded)";
  os << "\n  limit: ";
  if (limit_ > 0) {
    os << format_bytes(static_cast<int64_t>(limit_))
       << (host ? " (set_memory_limit or HEADROOM_HOST_MEMORY_LIMIT)" : " (set_memory_limit or HEADROOM_MEMORY_LIMIT)");
    if (reserved > static_cast<int64_t>(limit_)) os << ", lowered below what live blocks reserve";
  } else if (injected) {
    os << "none set, and " << (host ? "the host" : "the device")
       << " is not necessarily full: this failure was injected";
  } else {
    os << (host ? "none set; the host refused more page-locked memory" : "none set; the device itself is full");
  }
  if (backend_->capacity() > 0) os << "; device capacity " << format_bytes(static_cast<int64_t>(backend_->capacity()));
  os << "\n  reserved by headroom: " << format_bytes(reserved) << ", in use: " << format_bytes(allocated) << "\n";
  os << "  in use by category:";
  for (int c = 0; c < kNumMemoryCategories; ++c) {
    auto cat = static_cast<MemoryCategory>(c);
    int64_t v = stats_.category(cat).current;
    os << "\n    " << std::left << std::setw(16) << category_name(cat) << std::right << std::setw(12)
       << format_bytes(v);
    if (allocated > 0)
      os << "  (" << std::fixed << std::setprecision(1)
         << 100.0 * static_cast<double>(v) / static_cast<double>(allocated) << "%)";
  }
  os << "\n  cached but free: " << format_bytes(cached_free) << ", largest free block: " << format_bytes(largest_free);
  if (cached_free >= static_cast<int64_t>(rounded) && largest_free < static_cast<int64_t>(rounded))
    os << " (fragmented: enough free bytes in total, but no block that large)";
  if (!is_host_pool())
    if (const CachingAllocator* pool = host_pool_if_made(); pool != nullptr && pool != this) {
      const MemoryStats ps = pool->stats();
      if (ps.allocated_bytes.current > 0)
        os << "\n  pinned host pool (offloaded tensors, not counted above): "
           << format_bytes(ps.allocated_bytes.current) << " in use, " << format_bytes(ps.reserved_bytes.current)
           << " reserved";
    }
  os << "\n  what may help:";
  const int64_t limit = static_cast<int64_t>(limit_);
  if (host) {
    host_pool_remedies(os, allocated, limit, static_cast<int64_t>(rounded));
    return os.str();
  }
  if (limit > 0 && static_cast<int64_t>(rounded) > limit)
    os << "\n    - this single request is larger than the whole limit: shrink that tensor (a smaller batch or layer)";
  // Remedies by what holds the memory, the largest holder first.
  auto share = [&](std::initializer_list<MemoryCategory> cs) {
    int64_t v = 0;
    for (auto c : cs) v += stats_.category(c).current;
    return v;
  };
  const int64_t activations = share({MemoryCategory::activation, MemoryCategory::temporary});
  const int64_t model_state =
      share({MemoryCategory::parameter, MemoryCategory::gradient, MemoryCategory::optimizer_state});
  // Only remedies headroom has (optim/batch_split.h, autograd/checkpoint.h, autograd/autocast.h,
  // optim/sgd.h), less those in use (Note [remedies already used]).
  std::vector<std::pair<int64_t, std::string>> remedies;
  std::string act_text = "activations and temporaries hold " + format_bytes(activations) + ": ";
  if (!RemedyUsedScope::used(Remedy::smaller_batch)) act_text += "use a smaller batch, ";
  if (!RemedyUsedScope::used(Remedy::micro_batches))
    act_text += "split it into micro-batches (BatchSplitter, gradient accumulation; --micro-batches), ";
  act_text +=
      "recompute activations in backward (checkpoint(), nn::checkpoint_sequential; --checkpoint block|sqrt|selective "
      "in the "
      "examples), mixed precision (autocast to f16/bf16 halves activations), or offload saved activations to the "
      "pinned host pool (ActivationOffload; --offload activations)";
  remedies.emplace_back(activations, act_text);
  const int64_t optimizer_state = stats_.category(MemoryCategory::optimizer_state).current;
  std::string state_text = "parameters, gradients and optimizer state hold " + format_bytes(model_state) +
                           ": a smaller model, or an optimizer with less state (Adam keeps two buffers per "
                           "parameter, SGD with momentum one, plain SGD none)";
  if (optimizer_state > 0)
    state_text += ", or Adam's state kept on the host (optim::OffloadedAdamW; --offload optimizer)";
  remedies.emplace_back(model_state, state_text);
  std::stable_sort(remedies.begin(), remedies.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  bool any = limit > 0 && static_cast<int64_t>(rounded) > limit;
  // A holder of under a tenth of what is in use is not worth shrinking when a larger one is.
  for (const auto& [bytes_held, text] : remedies)
    if (bytes_held > 0 && (!any || bytes_held * 10 >= allocated)) {
      os << "\n    - " << text;
      any = true;
    }
  const int64_t workspace = share({MemoryCategory::workspace, MemoryCategory::communication});
  if (!any) {
    if (allocated == 0)
      os << "\n    - nothing else is in use on " << device().str() << ": this request alone is more than "
         << (limit > 0 ? "the limit" : "the device") << " can give; shrink that tensor (a smaller batch or layer)";
    else
      os << "\n    - " << format_bytes(workspace) << " in use is library workspace or communication buffers; "
         << "shrink the request (a smaller batch or layer)";
  }
  if (cached_free > 0 && (cached_free * 4 >= reserved || largest_free < static_cast<int64_t>(rounded)))
    os << "\n    - " << format_bytes(cached_free)
       << " is cached in split segments: call empty_cache() between phases, and allocate long-lived tensors first"
          " so that short-lived ones do not fragment their segments";
  return os.str();
}

size_t parse_memory_size(const std::string& text, const std::string& what) {
  const auto refuse = [&](const std::string& why) {
    return ValueError(str_cat(what, ": ", why, " in '", text,
                              "' (a size is a decimal number and a unit, e.g. 256MiB, 4GiB, 1.5GB, 1000000; "
                              "'none' for no limit)"));
  };
  if (text == "none") return 0;
  // The number: digits, optionally '.' and more digits; nothing else (no sign, exponent, hex).
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  const size_t int_digits = i;
  size_t frac_digits = 0;
  if (i < text.size() && text[i] == '.') {
    ++i;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i, ++frac_digits;
  }
  if (int_digits + frac_digits == 0) throw refuse("no number");
  const std::string number = text.substr(0, i);
  std::string unit = text.substr(i);
  if (!unit.empty() && unit.front() == ' ') unit.erase(0, 1);  // "256 MiB"
  double mult = 0;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "KiB" || unit == "K" || unit == "k") mult = 1024.0;
  else if (unit == "MiB" || unit == "M") mult = 1024.0 * 1024;
  else if (unit == "GiB" || unit == "G") mult = 1024.0 * 1024 * 1024;
  else if (unit == "TiB" || unit == "T") mult = 1024.0 * 1024 * 1024 * 1024;
  else if (unit == "KB" || unit == "kB") mult = 1e3;
  else if (unit == "MB") mult = 1e6;
  else if (unit == "GB") mult = 1e9;
  else if (unit == "TB") mult = 1e12;
  else throw refuse(str_cat("unknown unit '", unit, "' (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"));
  if (int_digits > 19) throw refuse("more memory than can be addressed");
  const double bytes = std::floor(std::strtod(number.c_str(), nullptr) * mult);
  if (!(bytes < 9.2e18)) throw refuse("more memory than can be addressed");
  if (bytes < 1) throw refuse("a size below one byte (a limit of nothing is no limit: use 'none')");
  return static_cast<size_t>(bytes);
}

std::string format_bytes(int64_t bytes) {
  std::ostringstream os;
  const double b = static_cast<double>(bytes);
  const double ab = std::abs(b);
  if (ab < 1024) os << bytes << " B";
  else if (ab < 1024.0 * 1024) os << std::fixed << std::setprecision(1) << b / 1024 << " KiB";
  else if (ab < 1024.0 * 1024 * 1024) os << std::fixed << std::setprecision(2) << b / (1024.0 * 1024) << " MiB";
  else os << std::fixed << std::setprecision(2) << b / (1024.0 * 1024 * 1024) << " GiB";
  return os.str();
}

CachingAllocator& caching_allocator(Device device) {
  auto* a = dynamic_cast<CachingAllocator*>(&allocator_for(device));
  HR_CHECK(a, DeviceError, "the allocator of ", device.str(), " is not a caching allocator");
  return *a;
}

}  // namespace headroom
