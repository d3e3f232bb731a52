#pragma once
// Private to the store module (and its tests): the SQLite backend of store::Store.
//
// Layout: one write connection owned by the writer thread, which commits everything pending in
// one transaction (group commit) and gives each Batch its own SAVEPOINT so a failing batch rolls
// back alone; one read connection behind a mutex (WAL lets it read while the writer commits).
// An in-memory database (":memory:") is private to its connection, so there the readers share
// the write connection and the writer holds the read mutex while it commits.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <variant>
#include <vector>

#include "core/core.h"
#include "store/store.h"
#include "store/thread_annotations.h"

struct sqlite3;
struct sqlite3_stmt;

namespace gatehouse::store {

namespace detail {

struct DbCloser {
  void operator()(sqlite3* db) const noexcept;
};
struct StmtFinalizer {
  void operator()(sqlite3_stmt* stmt) const noexcept;
};
using DbPtr = std::unique_ptr<sqlite3, DbCloser>;
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

// True on the writer thread of any store. Blocking calls that wait for the writer (write_sync,
// lease) check it and fail instead of deadlocking when called from a write callback.
[[nodiscard]] bool on_writer_thread() noexcept;

// Limits on ops, checked before any SQL runs.
inline constexpr std::size_t kMaxTableBytes = 64;
inline constexpr std::size_t kMaxKeyBytes = 1024;
inline constexpr std::size_t kMaxValueBytes = std::size_t{64} << 20;  // also payloads
inline constexpr std::size_t kMaxNameBytes = 256;                     // queue, log, counter

// Bounds on Options.
inline constexpr std::size_t kMaxBatchOpsLimit = 1'000'000;
inline constexpr std::chrono::milliseconds kMaxBatchDelayLimit{1000};

}  // namespace detail

class SqliteStore final : public Store {
  struct Passkey {
    explicit Passkey() = default;
  };

 public:
  // Version of the newest schema migration this binary knows (the length of the migration list).
  static constexpr std::int64_t kSchemaVersion = 1;

  // Opens (creating if needed) the database at `path`, a filesystem path or ":memory:", applies
  // pending migrations and starts the writer thread. Errors: kInvalidArgument for out-of-bounds
  // options, kIo (naming the file) when the file cannot be created, opened or migrated, or when its
  // schema is newer than kSchemaVersion.
  [[nodiscard]] static core::Result<std::unique_ptr<SqliteStore>> open(std::string_view path,
                                                                       const core::Clock& clock,
                                                                       Options options);

  SqliteStore(Passkey, std::string name, const core::Clock& clock, Options options);
  ~SqliteStore() override;

  void write(Batch batch, Callback done) override;
  [[nodiscard]] core::Result<std::string> get(std::string_view table,
                                              std::string_view key) override;
  [[nodiscard]] core::Result<std::vector<std::pair<std::string, std::string>>> scan(
      std::string_view table, std::string_view prefix, std::size_t limit) override;
  [[nodiscard]] core::Result<std::int64_t> counter(std::string_view name) override;
  [[nodiscard]] core::Result<std::vector<QueueMessage>> lease(
      std::string_view queue, std::size_t max, std::chrono::milliseconds lease) override;
  [[nodiscard]] core::Result<std::int64_t> queue_size(std::string_view queue) override;
  [[nodiscard]] core::Result<std::vector<LogEntry>> read_log(std::string_view log,
                                                             std::int64_t from,
                                                             std::size_t limit) override;

  struct StatsForTest {
    std::uint64_t transactions = 0;       // group transactions committed
    std::uint64_t batches = 0;            // write batches and leases that went through the writer
    std::int64_t migrations_applied = 0;  // by the open() that created this store
  };
  [[nodiscard]] StatsForTest stats_for_test() const noexcept;

 private:
  using LeaseResult = core::Result<std::vector<QueueMessage>>;
  using LeaseCallback = std::function<void(LeaseResult)>;

  struct WriteJob {
    Batch batch;
    Callback done;
    std::optional<core::Result<CommitInfo>> result;
  };
  struct LeaseJob {
    std::string queue;
    std::int64_t max = 0;
    std::chrono::milliseconds lease{0};
    LeaseCallback done;
    std::optional<LeaseResult> result;
  };
  struct Job {
    std::variant<WriteJob, LeaseJob> work;
    std::size_t ops = 1;
    std::chrono::steady_clock::time_point enqueued_at;
  };

  // Statements of the writer thread (on write_db_).
  struct WriteStatements {
    detail::StmtPtr begin, commit, rollback, savepoint, release_savepoint, rollback_to_savepoint;
    detail::StmtPtr put, del, add_counter, enqueue, ack, release, append;
    detail::StmtPtr lease_select, lease_update;
  };
  // Statements of readers (on read_db_, or on write_db_ for ":memory:").
  struct ReadStatements {
    detail::StmtPtr get, scan_bounded, scan_unbounded, counter, queue_size, read_log;
  };

  [[nodiscard]] core::Result<void> init(std::string_view path);
  [[nodiscard]] core::Result<void> migrate();
  [[nodiscard]] core::Result<void> prepare_statements() GH_REQUIRES(read_mu_);
  void enqueue_job(Job job) GH_EXCLUDES(queue_mu_);

  void writer_loop() GH_EXCLUDES(queue_mu_);
  // Moves the next group into `group`; false once stopping and nothing is pending.
  bool take_group(std::vector<Job>& group) GH_EXCLUDES(queue_mu_);
  void run_group(std::vector<Job>& group, std::int64_t now_ms);
  [[nodiscard]] core::Result<CommitInfo> apply_batch(const Batch& batch, std::int64_t now_ms);
  [[nodiscard]] LeaseResult apply_lease(const LeaseJob& job, std::int64_t now_ms);
  // Runs a statement without result rows (BEGIN, COMMIT, ...) on the write connection.
  [[nodiscard]] core::Result<void> step_done(sqlite3_stmt* stmt, std::string_view what);
  [[nodiscard]] core::Error write_error(std::string_view what) const;
  void deliver(std::vector<Job>& group);

  const std::string name_;  // file path or ":memory:", for messages
  const core::Clock& clock_;
  const Options options_;
  bool shared_connection_ = false;  // ":memory:": readers use write_db_ under read_mu_

  // Set up by open() before the writer starts, then owned by the writer thread (and by readers
  // under read_mu_ when shared_connection_).
  detail::DbPtr write_db_;
  WriteStatements ws_;

  mutable detail::Mutex read_mu_;
  detail::DbPtr read_db_ GH_GUARDED_BY(read_mu_);
  ReadStatements rs_ GH_GUARDED_BY(read_mu_);

  detail::Mutex queue_mu_;
  std::condition_variable_any queue_cv_;
  std::deque<Job> queue_ GH_GUARDED_BY(queue_mu_);
  std::size_t pending_ops_ GH_GUARDED_BY(queue_mu_) = 0;
  bool stopping_ GH_GUARDED_BY(queue_mu_) = false;

  std::atomic<std::uint64_t> transactions_{0};
  std::atomic<std::uint64_t> batches_{0};
  std::int64_t migrations_applied_ = 0;

  std::thread writer_;  // last: started once everything above is ready
};

}  // namespace gatehouse::store
