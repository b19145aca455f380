// The caching allocator: every byte of tensor storage on a device comes from here.
//
// Asking a device for memory is slow (cudaMalloc costs ~90 us and synchronises) and returning
// it is slower, so freed blocks are kept and reused. Memory is obtained from the raw backend in
// segments; a segment is cut into blocks. Requests are rounded up to 512 B and served from one
// of two pools of free blocks: small (requests up to 1 MiB, carved from 2 MiB segments) and
// large (a segment per request, rounded to the device's granularity). A request takes the smallest free block of its pool that fits (best fit) on the same
// stream; the rest of the block is split off and stays free when it is worth keeping (>= 512 B
// in the small pool, > 1 MiB in the large one). A freed block merges with free neighbours in its
// segment (coalescing), so segments can return to one piece and be released by empty_cache().
//
// Note [stream reuse]: a block is handed out again only to requests on the stream it was
// allocated on. Work on that stream runs in order, so a later request there can't overtake the
// kernels that still read the block. If other streams used it (record_stream), freeing records
// an event on each of them, and the block waits in a pending list until all events completed.
//
// Note [memory limit]: no segment is obtained that would take reserved bytes (all segments) past
// the device's limit (API or HEADROOM_MEMORY_LIMIT), so a CPU run under 256MiB behaves like a
// 256 MiB GPU. When a segment would cross the limit or the backend fails, the allocator frees its
// cached whole segments and retries once; then it throws OutOfMemoryError with a report
// (oom_report) and changes nothing. set_memory_limit below what is reserved first releases the
// cache; if live blocks still reserve more than the new limit, the limit holds for new segments
// (none is obtained until reserved falls below it, as on a GPU another process has filled), and
// reserved <= limit holds again once enough of them are freed.
//
// Note [fault injection]: inject_fault(kind, k) (or HEADROOM_FAIL_ALLOC=k when the allocator is
// made) makes the k-th request from now fail as the device would: `allocation` fails the k-th
// call to allocate (cache hit or not) with an OutOfMemoryError and changes nothing else;
// `segment` fails the k-th request for a new segment (both tries of that allocation, as a full
// device would, after the cache release a real failure triggers); `limit` lowers the limit to the
// bytes reserved at the k-th allocation, so that every later segment request fails for real until
// clear_fault() puts the old limit back. Each fires once. The failure is the real out-of-memory
// path, so every op -- convolutions and workspaces included, which ask this allocator directly --
// meets it; the report says the failure was injected. The sweep tests (tests/optim/oom_sweep_test)
// fail each allocation of a training step in turn this way.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "engine/allocator.h"
#include "engine/memory.h"

namespace headroom {

// The raw memory of one device, under the caching allocator: host memory for cpu,
// cudaMalloc/cudaFree for cuda. Events order frees against work queued on streams.
class DeviceMemoryBackend {
 public:
  virtual ~DeviceMemoryBackend() = default;
  virtual Device device() const = 0;
  // nullptr when the device has no more memory; never throws for that.
  virtual void* raw_alloc(size_t nbytes) = 0;
  virtual void raw_free(void* ptr, size_t nbytes) = 0;
  // Physical memory of the device in bytes, 0 when unknown.
  virtual size_t capacity() const { return 0; }
  // The unit in which the device hands out memory (cudaMalloc: 2 MiB pages); large segments
  // are rounded to it so that reserved bytes are what the device really gives up.
  virtual size_t granularity() const { return 512; }
  // An event marking the work queued on `stream` so far; whether it has completed.
  virtual uint64_t record_event(Stream /*stream*/) { return 0; }
  virtual bool event_done(uint64_t /*event*/) { return true; }
  virtual void release_event(uint64_t /*event*/) {}
  // Waits for all work on the device (before segments go back to the backend).
  virtual void synchronize() {}
  // Address ranges without memory (Note [meta execution] in engine/meta.h).
  virtual bool is_meta() const { return false; }
  // The memory of the pinned host pool (Note [host pool] in engine/allocator.h), not of a device.
  virtual bool is_host_pool() const { return false; }
};

// Aligned (512 B) host memory, for one of the cpu devices (Note [cpu devices]).
class HostMemoryBackend : public DeviceMemoryBackend {
 public:
  explicit HostMemoryBackend(Device device = Device::cpu()) : device_(device) {}
  Device device() const override { return device_; }
  void* raw_alloc(size_t nbytes) override;
  void raw_free(void* ptr, size_t nbytes) override;

 private:
  Device device_;
};

// The pinned host pool's memory on a machine without a GPU (Note [host pool] in
// engine/allocator.h): aligned host memory, labelled as the pool's.
class HostPoolMemoryBackend final : public DeviceMemoryBackend {
 public:
  Device device() const override { return Device::cpu(); }
  void* raw_alloc(size_t nbytes) override { return host_.raw_alloc(nbytes); }
  void raw_free(void* ptr, size_t nbytes) override { host_.raw_free(ptr, nbytes); }
  bool is_host_pool() const override { return true; }

 private:
  HostMemoryBackend host_;
};

// Current, peak and cumulative counts of one quantity (bytes or blocks).
struct Stat {
  int64_t current = 0;
  int64_t peak = 0;
  int64_t allocated = 0;  // total ever added
  int64_t freed = 0;      // total ever removed
  void add(int64_t n);
  void sub(int64_t n);
  void reset_peak() { peak = current; }
};

// Names follow PyTorch's memory_stats() where the meaning is the same.
struct MemoryStats {
  Stat allocated_bytes;       // in blocks handed out (rounded sizes)
  Stat requested_bytes;       // as asked by callers
  Stat reserved_bytes;        // in segments obtained from the backend
  Stat active_bytes;          // handed out, or freed but waiting for other streams
  Stat inactive_split_bytes;  // free blocks inside segments that are split (not releasable)
  Stat allocation;            // blocks handed out
  Stat segment;
  Stat active;
  Stat inactive_split;
  std::array<Stat, kNumMemoryCategories> category_bytes;
  int64_t num_allocs = 0;
  int64_t num_cache_hits = 0;     // served without a new segment
  int64_t num_device_alloc = 0;   // segments obtained from the backend
  int64_t num_device_free = 0;    // segments returned to it
  int64_t num_alloc_retries = 0;  // times the cache was freed to retry a request
  int64_t num_ooms = 0;
  const Stat& category(MemoryCategory c) const { return category_bytes[static_cast<size_t>(c)]; }
};

enum class TraceKind : uint8_t { alloc, free, segment_alloc, segment_free, oom };
const char* trace_kind_name(TraceKind k);

struct TraceEvent {
  int64_t time_ns = 0;  // since the allocator was made
  TraceKind kind = TraceKind::alloc;
  uint64_t address = 0;
  int64_t bytes = 0;      // block or segment size
  int64_t requested = 0;  // alloc: the size the caller asked for
  MemoryCategory category = MemoryCategory::temporary;
  int64_t stream = 0;
  int64_t allocated_after = 0;  // allocated bytes after the event
  int64_t reserved_after = 0;
  std::array<int64_t, kNumMemoryCategories> category_after{};  // per-category bytes after
};

struct BlockInfo {
  uint64_t address = 0;
  int64_t size = 0;
  int64_t requested = 0;
  std::string state;  // "allocated", "free", "pending_free"
  MemoryCategory category = MemoryCategory::temporary;
  uint64_t serial = 0;         // allocated blocks: the allocation's number in this allocator (from 1)
  const char* site = nullptr;  // Note [allocation sites]: the op whose output it holds, when recorded
};

struct SegmentInfo {
  uint64_t address = 0;
  int64_t size = 0;
  int64_t stream = 0;
  bool small_pool = false;
  std::vector<BlockInfo> blocks;
};

// Note [fault injection].
enum class FaultKind : uint8_t { none, allocation, segment, limit };
const char* fault_kind_name(FaultKind k);

struct FaultStatus {
  FaultKind kind = FaultKind::none;
  int64_t at = 0;    // the request that fails (1-based, counted from inject_fault)
  int64_t seen = 0;  // requests of that kind counted so far
  bool fired = false;
};

// Parses HEADROOM_FAIL_ALLOC's value: "k" or "allocation:k" (the k-th allocation), "segment:k",
// "limit:k", with k >= 1. Throws ValueError naming `what` and the text.
std::pair<FaultKind, int64_t> parse_fault_injection(const std::string& text, const std::string& what);

class CachingAllocator final : public Allocator {
 public:
  static constexpr size_t kRound = 512;
  static constexpr size_t kSmallRequest = 1 << 20;  // requests up to this go to the small pool
  static constexpr size_t kSmallSegment = 2 << 20;  // small-pool segments

  explicit CachingAllocator(std::unique_ptr<DeviceMemoryBackend> backend);
  ~CachingAllocator() override;

  // Allocator interface: current stream and category of the calling thread.
  Allocation allocate(size_t nbytes) override;
  void deallocate(const Allocation& a) override;
  Device device() const override;
  bool is_meta() const override;
  // Whether this is the pinned host pool (Note [host pool] in engine/allocator.h); its name in
  // reports: "the pinned host pool", or the device ("cpu:1", "cuda:0").
  bool is_host_pool() const;
  std::string name() const;
  size_t bytes_in_use() const override;
  size_t peak_bytes_in_use() const override;
  void reset_peak() override { reset_peak_stats(); }

  Allocation allocate(size_t nbytes, Stream stream, MemoryCategory category);
  // The block will be used on `stream` too: its reuse waits for that stream's work.
  void record_stream(const Allocation& a, Stream stream) override;
  // Moves a live block to another category (autograd tags saved tensors as activations).
  void set_category(const Allocation& a, MemoryCategory category) override;
  MemoryCategory category_of(const Allocation& a) const override;
  // Note [allocation sites]: while recording (set_site_recording), set_site keeps the op's name
  // on the block, and snapshot() gives it back; a new allocation starts without one.
  void set_site(const Allocation& a, const char* site) override;
  void set_site_recording(bool on);
  bool site_recording() const;
  // The number the next allocation will get (BlockInfo::serial): allocations made since a moment
  // are those numbered from what this said then.
  uint64_t next_serial() const;

  // Returns every cached segment that is wholly free to the backend; Note [release on miss]
  // starts afresh.
  void empty_cache();
  // Note [release on miss] in the .cpp; on by default.
  void set_release_on_miss(bool on);

  // 0 means no limit beyond the device's own memory. Below the bytes reserved now: Note
  // [memory limit].
  void set_memory_limit(size_t bytes);
  size_t memory_limit() const;

  // Note [fault injection]: fail the k-th request of `kind` from now (k >= 1); replaces any
  // fault armed before. clear_fault disarms it (and restores the limit a `limit` fault lowered).
  void inject_fault(FaultKind kind, int64_t k);
  void clear_fault();
  FaultStatus fault_status() const;

  MemoryStats stats() const;
  void reset_peak_stats();
  std::vector<SegmentInfo> snapshot() const;

  // Recording of alloc/free/segment/oom events (off by default).
  void set_trace_enabled(bool enabled);
  std::vector<TraceEvent> trace() const;
  void clear_trace();

  // The report an OutOfMemoryError carries, for a request of `bytes` now.
  std::string oom_report(size_t bytes) const;

 private:
  struct Block;
  struct Segment;
  struct BlockLess {
    bool operator()(const Block* a, const Block* b) const;
  };
  using Pool = std::set<Block*, BlockLess>;

  static size_t round_size(size_t nbytes);  // to a multiple of kRound, at least kRound
  Block* find_free_block(Pool& pool, size_t size, int64_t stream);
  Block* new_segment(size_t size, bool small, int64_t stream, bool& over_limit);
  void split_block(Block* block, size_t size);
  void free_block(Block* block);
  void process_pending_events();
  size_t release_cached_segments();
  void release_for_miss(size_t segment_size, bool small);  // Note [release on miss]
  void release_segment(Segment* seg);
  Pool& pool_of(const Block* b);
  void update_inactive_split(Block* block, int sign);
  void record(TraceKind kind, uint64_t address, int64_t bytes, MemoryCategory category, int64_t stream,
              int64_t requested = 0);
  // injected: the failure was injected (Note [fault injection]), so nothing may really be full.
  std::string oom_report_locked(size_t bytes, size_t rounded, bool injected = false) const;
  void host_pool_remedies(std::ostream& os, int64_t allocated, int64_t limit, int64_t rounded) const;

  std::unique_ptr<DeviceMemoryBackend> backend_;
  mutable std::recursive_mutex mu_;
  Pool small_pool_;
  Pool large_pool_;
  std::vector<std::unique_ptr<Segment>> segments_;
  uint64_t next_segment_serial_ = 0;
  std::vector<Block*> pending_;  // freed, waiting for other streams' events
  MemoryStats stats_;
  size_t limit_ = 0;
  FaultStatus fault_;
  size_t limit_before_fault_ = 0;  // the limit a fired `limit` fault replaced
  bool trace_enabled_ = false;
  bool record_sites_ = false;  // Note [allocation sites]
  uint64_t next_serial_ = 1;
  bool release_on_miss_ = true;
  static constexpr size_t kReleasedOnMissKept = 64;
  std::vector<size_t> released_on_miss_;  // sizes of the last segments a miss handed back
  // The most reserved since the last empty_cache (Note [release on miss]; reset_peak_stats keeps it).
  int64_t reserved_high_water_ = 0;
  std::vector<TraceEvent> trace_;
  std::chrono::steady_clock::time_point start_;
};

// Parses a memory size into bytes: a decimal number (digits, optionally a fraction) and an
// optional unit -- B, KiB/K/k, MiB/M, GiB/G, TiB/T (powers of 1024), KB/kB, MB, GB, TB (powers of
// 1000) -- e.g. "256MiB", "4GiB", "1.5GB", "1000000"; a fraction of a byte is dropped. "none"
// gives 0 (no limit). Refused with a ValueError naming `what` (e.g. the environment variable)
// and the text: anything else (signs, exponents, hex, inf, spaces inside the number), and sizes
// below one byte ("0", "0.4": a limit of nothing is no limit -- write "none" for that).
size_t parse_memory_size(const std::string& text, const std::string& what);
// "1.50 GiB", "512.0 KiB", "37 B".
std::string format_bytes(int64_t bytes);

// Within the scope, an allocation by this thread from any CachingAllocator throws Error naming
// `what` and the request: for a phase that promises to allocate nothing, such as an optimizer's
// commit (Note [all-or-nothing step] in optim/optimizer.h). Nestable.
class NoAllocationScope {
 public:
  explicit NoAllocationScope(const char* what);
  ~NoAllocationScope();
  NoAllocationScope(const NoAllocationScope&) = delete;
  NoAllocationScope& operator=(const NoAllocationScope&) = delete;
  static const char* active();  // the innermost scope's `what`, or nullptr

 private:
  const char* prev_;
};

// The caching allocator of a device (the one allocator_for returns).
CachingAllocator& caching_allocator(Device device);

// Note [remedies already used]: the out-of-memory report suggests only what headroom has, and
// not what the failing code is already doing. Code that has used a remedy up says so with this
// scope for the allocations it makes (thread-local, nesting): BatchSplitter running a micro-batch
// of one sample leaves out "smaller batch" and "micro-batches".
enum class Remedy : uint8_t { smaller_batch = 1, micro_batches = 2 };
class RemedyUsedScope {
 public:
  explicit RemedyUsedScope(std::initializer_list<Remedy> used);
  ~RemedyUsedScope();
  RemedyUsedScope(const RemedyUsedScope&) = delete;
  RemedyUsedScope& operator=(const RemedyUsedScope&) = delete;
  static bool used(Remedy r);

 private:
  unsigned prev_;
};

}  // namespace headroom
