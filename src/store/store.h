#pragma once
// gatehouse::store — durable state behind one interface.
//
// Later modules keep everything that must survive a restart here: API keys, quota counters,
// invocation queues, outboxes, workflow histories. The interface offers four primitives that
// cover them, each with the same guarantee: once a write's future/callback reports success, the
// write is durable (committed and fsynced per the backend's durability setting).
//
//   - key/value records in named tables            (keys, plans, signing keys, ...)
//   - counters: add a delta, read the sum           (quotas)
//   - queues: enqueue, lease with a deadline, ack   (async invocations, outboxes)
//   - append-only logs: append, read from a seq     (workflow histories, audit)
//
// Writes from any thread are funnelled to one writer thread that commits everything pending in
// one transaction (group commit), so callers on I/O threads never block on fsync: they call the
// async form and get a callback on the writer thread (post it back to your io_context). Reads are
// synchronous and may block briefly on disk: call them off the I/O threads (a thread pool).
//
// Thread-safety: every method of Store is safe to call from any thread.

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "core/core.h"

namespace gatehouse::store {

// One write operation. A Batch of them commits atomically (all or none). Limits, checked before
// anything is written (kInvalidArgument otherwise): table names [a-z0-9_]{1,64}, keys <= 1 KiB,
// values and payloads <= 64 MiB, queue, log and counter names 1 to 256 bytes. Keys, values,
// payloads and names are arbitrary bytes; keys sort bytewise.
struct Put {
  std::string table;  // [a-z0-9_]{1,64}
  std::string key;    // <= 1 KiB
  std::string value;  // <= 64 MiB
};
struct Delete {
  std::string table;
  std::string key;
};
struct AddCounter {
  std::string name;  // counter name, e.g. "quota:key123:2026-11-29"
  std::int64_t delta = 0;
};
struct Enqueue {
  std::string queue;
  std::string payload;
  std::chrono::system_clock::time_point not_before{};  // visible from then on
};
struct Ack {  // removes a leased message for good; an unknown id (or acked twice) is a no-op
  std::string queue;
  std::int64_t id = 0;
};
struct Release {  // returns a leased message to the queue, visible at not_before; unknown: no-op
  std::string queue;
  std::int64_t id = 0;
  std::chrono::system_clock::time_point not_before{};
};
struct Append {
  std::string log;
  std::string payload;
};

using Op = std::variant<Put, Delete, AddCounter, Enqueue, Ack, Release, Append>;
using Batch = std::vector<Op>;

// Ids assigned by a committed batch, in the order of its Enqueue and Append ops.
struct CommitInfo {
  std::vector<std::int64_t> enqueued_ids;
  std::vector<std::int64_t> appended_seqs;
};

struct QueueMessage {
  std::int64_t id = 0;
  std::string payload;
  std::uint32_t attempts = 0;  // leases so far, including this one
};

struct LogEntry {
  std::int64_t seq = 0;  // 1-based, dense per log
  std::string payload;
  std::chrono::system_clock::time_point at{};
};

struct Options {
  // Most ops per group commit, 1 to 1'000'000 (a larger single batch still commits, alone).
  std::size_t max_batch_ops = 4096;
  // How long the writer waits for more writes to join a group, 0 to 1000 ms, counted from the
  // arrival of the oldest pending write (so a writer that was busy committing does not wait).
  // Default 0: writes that arrive while the writer waits on fsync form the next group anyway,
  // and waiting longer only adds latency (bench/store_bench.cc).
  std::chrono::milliseconds max_batch_delay{0};
  // true: fsync every commit (SQLite synchronous=FULL), durable across power loss.
  // false: synchronous=NORMAL in WAL mode, durable across a process crash, not a power loss.
  bool synchronous_full = true;
};

// The store. Owned by the process (one per gateway); destroyed after every user is done.
// The destructor drains pending writes, then stops the writer thread.
class Store {
 public:
  using Callback = std::function<void(core::Result<CommitInfo>)>;

  virtual ~Store() = default;
  Store() = default;
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Queues `batch` for the writer; `done` runs on the writer thread after the batch is durable
  // (or failed: kIo, or kInvalidArgument for a malformed op or a counter that would overflow —
  // then nothing of it is written; kUnavailable, on the calling thread, if the store is being
  // destroyed). Batches from different callers may share one transaction but stay atomic each.
  // Callbacks run in the order of the write() calls. `done` may be empty; it must not throw,
  // must not destroy the store, and must not block on the store: write_sync() and lease() called
  // from it fail with kInternal instead of deadlocking. Reads and write() are fine.
  virtual void write(Batch batch, Callback done) = 0;
  // Blocking convenience for the CLI, tests and startup. Same results as write().
  [[nodiscard]] core::Result<CommitInfo> write_sync(Batch batch);

  // Reads see every write whose callback has run. kInvalidArgument for a name or table that
  // breaks the limits above. get: kNotFound when the key is absent.
  [[nodiscard]] virtual core::Result<std::string> get(std::string_view table,
                                                      std::string_view key) = 0;
  // Up to `limit` records of `table` whose key starts with `prefix`, in key order.
  [[nodiscard]] virtual core::Result<std::vector<std::pair<std::string, std::string>>> scan(
      std::string_view table, std::string_view prefix, std::size_t limit) = 0;
  // Sum of all deltas added to `name` (0 if never written).
  [[nodiscard]] virtual core::Result<std::int64_t> counter(std::string_view name) = 0;

  // Leases up to `max` visible messages of `queue` (not_before <= now and no unexpired lease),
  // oldest id first, until now + `lease`; an unacked lease becomes visible again when it
  // expires. Durable (a lease is a write: it goes through the writer and waits for it). `now` is
  // the store clock's wall(). max == 0 returns nothing. kInvalidArgument when lease <= 0.
  [[nodiscard]] virtual core::Result<std::vector<QueueMessage>> lease(
      std::string_view queue, std::size_t max, std::chrono::milliseconds lease) = 0;
  // Number of messages in `queue` (leased or not).
  [[nodiscard]] virtual core::Result<std::int64_t> queue_size(std::string_view queue) = 0;

  // Entries of `log` with seq >= from, up to `limit`.
  [[nodiscard]] virtual core::Result<std::vector<LogEntry>> read_log(std::string_view log,
                                                                     std::int64_t from,
                                                                     std::size_t limit) = 0;
};

// Opens the store named by a URL: "sqlite://PATH" (PATH relative to the working directory;
// parent directories are created), "sqlite://:memory:" for tests. Applies schema migrations.
// Errors: kInvalidArgument for an unknown scheme or out-of-bounds options, kIo when the database
// cannot be opened or migrated (the message names the file) or its schema is newer than this
// binary, kNotImplemented for postgres:// until that backend lands. `clock` must outlive the store.
// A :memory: store is private to the returned object.
[[nodiscard]] core::Result<std::unique_ptr<Store>> open(std::string_view url,
                                                        const core::Clock& clock,
                                                        Options options = {});

}  // namespace gatehouse::store
