#include "store/sqlite_store.h"

#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <future>
#include <limits>
#include <system_error>
#include <type_traits>
#include <utility>

namespace gatehouse::store {

using core::ErrorCode;
using core::make_error;

namespace {

// Ordered schema migrations: entry i moves the schema from version i to i + 1, in one
// transaction. Append only; never edit an entry that has shipped.
constexpr std::array<const char*, 1> kMigrations = {
    // 1: the four primitives.
    R"sql(
CREATE TABLE kv(
  tbl   TEXT NOT NULL,
  key   BLOB NOT NULL,
  value BLOB NOT NULL,
  PRIMARY KEY (tbl, key)
) WITHOUT ROWID;

CREATE TABLE counters(
  name  TEXT NOT NULL PRIMARY KEY,
  value INTEGER NOT NULL
) WITHOUT ROWID;

-- AUTOINCREMENT: ids are never reused, so a late Ack of an old id cannot remove a new message.
CREATE TABLE queue(
  id             INTEGER PRIMARY KEY AUTOINCREMENT,
  queue          TEXT NOT NULL,
  payload        BLOB NOT NULL,
  not_before_ms  INTEGER NOT NULL,
  lease_until_ms INTEGER NOT NULL DEFAULT 0,
  attempts       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX queue_by_visibility ON queue(queue, not_before_ms);

CREATE TABLE log(
  log     TEXT NOT NULL,
  seq     INTEGER NOT NULL,
  payload BLOB NOT NULL,
  at_ms   INTEGER NOT NULL,
  PRIMARY KEY (log, seq)
) WITHOUT ROWID;
)sql",
};
static_assert(SqliteStore::kSchemaVersion == static_cast<std::int64_t>(kMigrations.size()));

// A writer blocked by another process (e.g. the sqlite3 shell) waits this long before failing.
constexpr int kBusyTimeoutMs = 5000;

thread_local bool t_on_writer_thread = false;

template <class... Fs>
struct Overloaded : Fs... {
  using Fs::operator()...;
};
template <class... Fs>
Overloaded(Fs...) -> Overloaded<Fs...>;

std::int64_t to_ms(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

std::chrono::system_clock::time_point from_ms(std::int64_t ms) {
  return std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(
          std::chrono::milliseconds(ms)));
}

std::int64_t to_sql_limit(std::size_t n) {
  constexpr auto kMax = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
  return static_cast<std::int64_t>(std::min(n, kMax));
}

std::int64_t saturating_add(std::int64_t a, std::int64_t b) {
  // b >= 0 at every call site (a positive lease duration).
  if (a > std::numeric_limits<std::int64_t>::max() - b) {
    return std::numeric_limits<std::int64_t>::max();
  }
  return a + b;
}

core::Error sqlite_error(std::string_view name, sqlite3* db, std::string_view what) {
  std::string msg(name);
  msg += ": ";
  msg += what;
  msg += ": ";
  msg += db != nullptr ? sqlite3_errmsg(db) : "out of memory";
  return core::Error{ErrorCode::kIo, std::move(msg)};
}

// Resets and unbinds a statement when the scope ends, so a read never keeps its WAL snapshot
// open and values bound with SQLITE_STATIC only need to outlive the scope.
class StmtScope {
 public:
  explicit StmtScope(sqlite3_stmt* stmt) : stmt_(stmt) {}
  ~StmtScope() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  StmtScope(const StmtScope&) = delete;
  StmtScope& operator=(const StmtScope&) = delete;

 private:
  sqlite3_stmt* stmt_;
};

// Typed parameters. The bytes are bound without copying (SQLITE_STATIC): keep them alive until
// the StmtScope ends.
struct Text {
  std::string_view v;
};
struct Blob {
  std::string_view v;
};

// A null pointer would bind SQL NULL; an empty string_view may have one.
const char* non_null(std::string_view v) { return v.data() != nullptr ? v.data() : ""; }

int bind_one(sqlite3_stmt* stmt, int i, Text t) {
  return sqlite3_bind_text64(stmt, i, non_null(t.v), t.v.size(), SQLITE_STATIC, SQLITE_UTF8);
}
int bind_one(sqlite3_stmt* stmt, int i, Blob b) {
  return sqlite3_bind_blob64(stmt, i, non_null(b.v), b.v.size(), SQLITE_STATIC);
}
int bind_one(sqlite3_stmt* stmt, int i, std::int64_t v) { return sqlite3_bind_int64(stmt, i, v); }

// Binds args to parameters ?1, ?2, ... in order; returns the first failing code or SQLITE_OK.
template <class... Args>
int bind(sqlite3_stmt* stmt, Args... args) {
  int i = 0;
  int rc = SQLITE_OK;
  ((rc = rc == SQLITE_OK ? bind_one(stmt, ++i, args) : rc), ...);
  return rc;
}

std::string column_string(sqlite3_stmt* stmt, int col) {
  // sqlite3_column_blob before sqlite3_column_bytes, as the SQLite docs require.
  const void* data = sqlite3_column_blob(stmt, col);
  const int size = sqlite3_column_bytes(stmt, col);
  if (data == nullptr || size <= 0) {
    return {};
  }
  return std::string(static_cast<const char*>(data), static_cast<std::size_t>(size));
}

// The smallest key greater than every key that starts with `prefix`; none if the prefix is empty
// or all 0xff bytes.
std::optional<std::string> prefix_successor(std::string_view prefix) {
  std::string s(prefix);
  while (!s.empty()) {
    const auto c = static_cast<unsigned char>(s.back());
    if (c != 0xff) {
      s.back() = static_cast<char>(c + 1);
      return s;
    }
    s.pop_back();
  }
  return std::nullopt;
}

// ---- validation (before any SQL) ----

core::Result<void> check_table(std::string_view table) {
  const bool ok = !table.empty() && table.size() <= detail::kMaxTableBytes &&
                  std::all_of(table.begin(), table.end(), [](char c) {
                    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
                  });
  if (!ok) {
    return make_error(ErrorCode::kInvalidArgument, "invalid table name: want [a-z0-9_]{1,64}");
  }
  return {};
}

core::Result<void> check_key(std::string_view key) {
  if (key.size() > detail::kMaxKeyBytes) {
    return make_error(ErrorCode::kInvalidArgument,
                      "key of " + std::to_string(key.size()) + " bytes exceeds 1024 bytes");
  }
  return {};
}

core::Result<void> check_value(std::string_view what, std::string_view value) {
  if (value.size() > detail::kMaxValueBytes) {
    return make_error(
        ErrorCode::kInvalidArgument,
        std::string(what) + " of " + std::to_string(value.size()) + " bytes exceeds 64 MiB");
  }
  return {};
}

core::Result<void> check_name(std::string_view what, std::string_view name) {
  if (name.empty() || name.size() > detail::kMaxNameBytes) {
    return make_error(ErrorCode::kInvalidArgument,
                      std::string(what) + " name must be 1 to 256 bytes");
  }
  return {};
}

core::Result<void> validate_op(const Op& op) {
  return std::visit(
      Overloaded{
          [](const Put& o) -> core::Result<void> {
            return check_table(o.table).and_then([&] { return check_key(o.key); }).and_then([&] {
              return check_value("value", o.value);
            });
          },
          [](const Delete& o) -> core::Result<void> {
            return check_table(o.table).and_then([&] { return check_key(o.key); });
          },
          [](const AddCounter& o) -> core::Result<void> { return check_name("counter", o.name); },
          [](const Enqueue& o) -> core::Result<void> {
            return check_name("queue", o.queue).and_then([&] {
              return check_value("payload", o.payload);
            });
          },
          [](const Ack& o) -> core::Result<void> { return check_name("queue", o.queue); },
          [](const Release& o) -> core::Result<void> { return check_name("queue", o.queue); },
          [](const Append& o) -> core::Result<void> {
            return check_name("log", o.log).and_then([&] {
              return check_value("payload", o.payload);
            });
          },
      },
      op);
}

core::Result<void> validate_batch(const Batch& batch) {
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (auto r = validate_op(batch[i]); !r) {
      return make_error(r.error().code, "op " + std::to_string(i) + ": " + r.error().message);
    }
  }
  return {};
}

// ---- connections ----

core::Result<detail::DbPtr> open_connection(const std::string& file, std::string_view name,
                                            int flags) {
  sqlite3* raw = nullptr;
  // NOMUTEX: each connection is used by one thread at a time (the writer, or readers under
  // read_mu_), so SQLite's own per-connection mutex is redundant.
  const int rc = sqlite3_open_v2(file.c_str(), &raw, flags | SQLITE_OPEN_NOMUTEX, nullptr);
  detail::DbPtr db(raw);
  if (rc != SQLITE_OK) {
    return tl::unexpected(sqlite_error(name, raw, "cannot open database"));
  }
  sqlite3_extended_result_codes(raw, 1);
  return db;
}

// Runs constant SQL (pragmas, migrations): never pass user data here.
core::Result<void> exec(sqlite3* db, const char* sql, std::string_view name,
                        std::string_view what) {
  if (sqlite3_exec(db, sql, nullptr, nullptr, nullptr) != SQLITE_OK) {
    return tl::unexpected(sqlite_error(name, db, what));
  }
  return {};
}

core::Result<detail::StmtPtr> prepare(sqlite3* db, const char* sql, std::string_view name) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &raw, nullptr) != SQLITE_OK) {
    return tl::unexpected(sqlite_error(name, db, std::string("cannot prepare `") + sql + "`"));
  }
  return detail::StmtPtr(raw);
}

core::Result<void> configure_connection(sqlite3* db, std::string_view name) {
  if (sqlite3_busy_timeout(db, kBusyTimeoutMs) != SQLITE_OK) {
    return tl::unexpected(sqlite_error(name, db, "cannot set busy_timeout"));
  }
  return exec(db, "PRAGMA foreign_keys = ON", name, "cannot enable foreign keys");
}

// Holds `mu` only when `engage` (the shared in-memory connection); invisible to the analysis,
// since the writer never touches what read_mu_ guards by name.
class ConditionalLock {
 public:
  ConditionalLock(detail::Mutex& mu, bool engage) GH_NO_THREAD_SAFETY_ANALYSIS
      : mu_(engage ? &mu : nullptr) {
    if (mu_ != nullptr) {
      mu_->lock();
    }
  }
  ~ConditionalLock() GH_NO_THREAD_SAFETY_ANALYSIS {
    if (mu_ != nullptr) {
      mu_->unlock();
    }
  }
  ConditionalLock(const ConditionalLock&) = delete;
  ConditionalLock& operator=(const ConditionalLock&) = delete;

 private:
  detail::Mutex* mu_;
};

}  // namespace

namespace detail {

void DbCloser::operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
void StmtFinalizer::operator()(sqlite3_stmt* stmt) const noexcept { sqlite3_finalize(stmt); }
bool on_writer_thread() noexcept { return t_on_writer_thread; }

}  // namespace detail

// ---- open / close ----

core::Result<std::unique_ptr<SqliteStore>> SqliteStore::open(std::string_view path,
                                                             const core::Clock& clock,
                                                             Options options) {
  if (options.max_batch_ops == 0 || options.max_batch_ops > detail::kMaxBatchOpsLimit) {
    return make_error(ErrorCode::kInvalidArgument, "max_batch_ops must be 1 to 1000000");
  }
  if (options.max_batch_delay.count() < 0 ||
      options.max_batch_delay > detail::kMaxBatchDelayLimit) {
    return make_error(ErrorCode::kInvalidArgument, "max_batch_delay must be 0 to 1000 ms");
  }
  auto store = std::make_unique<SqliteStore>(Passkey{}, std::string(path), clock, options);
  if (auto r = store->init(path); !r) {
    return tl::unexpected(std::move(r.error()));
  }
  try {
    store->writer_ = std::thread([s = store.get()] { s->writer_loop(); });
  } catch (const std::system_error& e) {
    return make_error(ErrorCode::kInternal,
                      std::string("cannot start the store writer thread: ") + e.what());
  }
  return store;
}

SqliteStore::SqliteStore(Passkey, std::string name, const core::Clock& clock, Options options)
    : name_(std::move(name)), clock_(clock), options_(options) {}

SqliteStore::~SqliteStore() {
  {
    detail::MutexLock lock(queue_mu_);
    stopping_ = true;
  }
  queue_cv_.notify_all();
  // The writer drains everything queued before it exits, so every callback has run after this.
  if (writer_.joinable()) {
    writer_.join();
  }
}

core::Result<void> SqliteStore::init(std::string_view path) {
  std::string file;
  if (path == ":memory:") {
    // An in-memory database belongs to one connection (a shared-cache URI would give readers
    // table locks that fail with SQLITE_LOCKED instead of waiting), so readers share it.
    shared_connection_ = true;
    file = ":memory:";
  } else {
    // Absolute, so that a path beginning with "file:" is never read as a URI (Debian's SQLite
    // is built with SQLITE_USE_URI).
    std::error_code ec;
    const std::filesystem::path abs = std::filesystem::absolute(std::filesystem::path(path), ec);
    if (ec) {
      return make_error(ErrorCode::kIo, name_ + ": " + ec.message());
    }
    if (abs.has_parent_path()) {
      std::filesystem::create_directories(abs.parent_path(), ec);
      if (ec) {
        return make_error(ErrorCode::kIo, name_ + ": cannot create directory " +
                                              abs.parent_path().string() + ": " + ec.message());
      }
    }
    file = abs.string();
  }

  auto db = open_connection(file, name_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  if (!db) {
    return tl::unexpected(std::move(db.error()));
  }
  write_db_ = std::move(*db);
  sqlite3* w = write_db_.get();
  // busy_timeout first: switching to WAL needs a lock another process (a parallel `gatehouse
  // keys create`) may hold for a moment.
  if (auto r = configure_connection(w, name_); !r) {
    return r;
  }

  if (!shared_connection_) {
    // journal_mode answers with the mode it ended up in; anything but "wal" means readers
    // would block the writer, so refuse rather than run degraded.
    auto stmt = prepare(w, "PRAGMA journal_mode = WAL", name_);
    if (!stmt) {
      return tl::unexpected(std::move(stmt.error()));
    }
    if (sqlite3_step(stmt->get()) != SQLITE_ROW) {
      return tl::unexpected(sqlite_error(name_, w, "cannot enable WAL"));
    }
    const std::string mode = column_string(stmt->get(), 0);
    if (mode != "wal") {
      return make_error(ErrorCode::kIo,
                        name_ + ": cannot enable WAL (journal mode is " + mode + ")");
    }
  }
  const char* sync =
      options_.synchronous_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL";
  if (auto r = exec(w, sync, name_, "cannot set synchronous").and_then([&] { return migrate(); });
      !r) {
    return r;
  }

  detail::MutexLock lock(read_mu_);
  if (!shared_connection_) {
    auto rdb = open_connection(file, name_, SQLITE_OPEN_READWRITE);
    if (!rdb) {
      return tl::unexpected(std::move(rdb.error()));
    }
    read_db_ = std::move(*rdb);
    sqlite3* r = read_db_.get();
    if (auto c = configure_connection(r, name_).and_then(
            [&] { return exec(r, "PRAGMA query_only = ON", name_, "cannot set query_only"); });
        !c) {
      return c;
    }
  }
  return prepare_statements();
}

core::Result<void> SqliteStore::migrate() {
  sqlite3* w = write_db_.get();
  if (auto r = exec(w,
                    "CREATE TABLE IF NOT EXISTS schema_migrations("
                    "version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
                    name_, "cannot create schema_migrations");
      !r) {
    return r;
  }
  auto current_stmt = prepare(w, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations", name_);
  if (!current_stmt) {
    return tl::unexpected(std::move(current_stmt.error()));
  }
  auto stamp_stmt =
      prepare(w, "INSERT INTO schema_migrations(version, applied_at) VALUES(?1, ?2)", name_);
  if (!stamp_stmt) {
    return tl::unexpected(std::move(stamp_stmt.error()));
  }

  // One transaction per migration; re-read the version inside each, since another process may
  // migrate the same file concurrently.
  for (;;) {
    if (auto r = exec(w, "BEGIN IMMEDIATE", name_, "cannot begin migration"); !r) {
      return r;
    }
    auto fail = [&](core::Error e) -> core::Result<void> {
      sqlite3_exec(w, "ROLLBACK", nullptr, nullptr, nullptr);
      return tl::unexpected(std::move(e));
    };
    std::int64_t version = 0;
    {
      sqlite3_stmt* s = current_stmt->get();
      StmtScope scope(s);
      if (sqlite3_step(s) != SQLITE_ROW) {
        return fail(sqlite_error(name_, w, "cannot read schema version"));
      }
      version = sqlite3_column_int64(s, 0);
    }
    if (version > kSchemaVersion) {
      return fail(core::Error{ErrorCode::kIo, name_ + ": database schema version " +
                                                  std::to_string(version) +
                                                  " is newer than this binary (" +
                                                  std::to_string(kSchemaVersion) + ")"});
    }
    if (version == kSchemaVersion) {
      return exec(w, "COMMIT", name_, "cannot commit");
    }
    const std::int64_t next = version + 1;
    if (sqlite3_exec(w, kMigrations[static_cast<std::size_t>(version)], nullptr, nullptr,
                     nullptr) != SQLITE_OK) {
      return fail(
          sqlite_error(name_, w, "migration to version " + std::to_string(next) + " failed"));
    }
    {
      sqlite3_stmt* s = stamp_stmt->get();
      StmtScope scope(s);
      if (bind(s, next, to_ms(clock_.wall())) != SQLITE_OK || sqlite3_step(s) != SQLITE_DONE) {
        return fail(sqlite_error(name_, w, "cannot record schema version"));
      }
    }
    if (auto r = exec(w, "COMMIT", name_, "cannot commit migration"); !r) {
      return fail(std::move(r.error()));
    }
    ++migrations_applied_;
  }
}

core::Result<void> SqliteStore::prepare_statements() {
  struct Entry {
    detail::StmtPtr* slot;
    const char* sql;
  };
  sqlite3* w = write_db_.get();
  const std::array<Entry, 15> write_entries = {{
      {&ws_.begin, "BEGIN IMMEDIATE"},
      {&ws_.commit, "COMMIT"},
      {&ws_.rollback, "ROLLBACK"},
      {&ws_.savepoint, "SAVEPOINT gh_batch"},
      {&ws_.release_savepoint, "RELEASE gh_batch"},
      {&ws_.rollback_to_savepoint, "ROLLBACK TO gh_batch"},
      {&ws_.put,
       "INSERT INTO kv(tbl, key, value) VALUES(?1, ?2, ?3) "
       "ON CONFLICT(tbl, key) DO UPDATE SET value = excluded.value"},
      {&ws_.del, "DELETE FROM kv WHERE tbl = ?1 AND key = ?2"},
      // RETURNING lets the writer see an overflow: SQLite turns an overflowing integer sum into
      // a REAL instead of failing.
      {&ws_.add_counter,
       "INSERT INTO counters(name, value) VALUES(?1, ?2) "
       "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value RETURNING value"},
      {&ws_.enqueue,
       "INSERT INTO queue(queue, payload, not_before_ms, lease_until_ms, attempts) "
       "VALUES(?1, ?2, ?3, 0, 0)"},
      {&ws_.ack, "DELETE FROM queue WHERE queue = ?1 AND id = ?2"},
      {&ws_.release,
       "UPDATE queue SET lease_until_ms = 0, not_before_ms = ?3 WHERE queue = ?1 AND id = ?2"},
      // Dense seqs: max + 1 inside the writer's transaction, so no two appends can race.
      {&ws_.append,
       "INSERT INTO log(log, seq, payload, at_ms) "
       "VALUES(?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM log WHERE log = ?1), ?2, ?3) "
       "RETURNING seq"},
      {&ws_.lease_select,
       "SELECT id, payload, attempts FROM queue "
       "WHERE queue = ?1 AND not_before_ms <= ?2 AND lease_until_ms <= ?2 "
       "ORDER BY id LIMIT ?3"},
      {&ws_.lease_update,
       "UPDATE queue SET lease_until_ms = ?2, attempts = attempts + 1 WHERE id = ?1"},
  }};
  for (const Entry& e : write_entries) {
    auto stmt = prepare(w, e.sql, name_);
    if (!stmt) {
      return tl::unexpected(std::move(stmt.error()));
    }
    *e.slot = std::move(*stmt);
  }

  sqlite3* r = shared_connection_ ? w : read_db_.get();
  const std::array<Entry, 6> read_entries = {{
      {&rs_.get, "SELECT value FROM kv WHERE tbl = ?1 AND key = ?2"},
      {&rs_.scan_bounded,
       "SELECT key, value FROM kv WHERE tbl = ?1 AND key >= ?2 AND key < ?3 "
       "ORDER BY key LIMIT ?4"},
      {&rs_.scan_unbounded,
       "SELECT key, value FROM kv WHERE tbl = ?1 AND key >= ?2 ORDER BY key LIMIT ?3"},
      {&rs_.counter, "SELECT value FROM counters WHERE name = ?1"},
      {&rs_.queue_size, "SELECT COUNT(*) FROM queue WHERE queue = ?1"},
      {&rs_.read_log,
       "SELECT seq, payload, at_ms FROM log WHERE log = ?1 AND seq >= ?2 "
       "ORDER BY seq LIMIT ?3"},
  }};
  for (const Entry& e : read_entries) {
    auto stmt = prepare(r, e.sql, name_);
    if (!stmt) {
      return tl::unexpected(std::move(stmt.error()));
    }
    *e.slot = std::move(*stmt);
  }
  return {};
}

SqliteStore::StatsForTest SqliteStore::stats_for_test() const noexcept {
  return StatsForTest{transactions_.load(std::memory_order_relaxed),
                      batches_.load(std::memory_order_relaxed), migrations_applied_};
}

// ---- writes ----

void SqliteStore::write(Batch batch, Callback done) {
  Job job;
  job.ops = std::max<std::size_t>(batch.size(), 1);
  job.work = WriteJob{std::move(batch), std::move(done), std::nullopt};
  enqueue_job(std::move(job));
}

core::Result<std::vector<QueueMessage>> SqliteStore::lease(std::string_view queue, std::size_t max,
                                                           std::chrono::milliseconds lease) {
  if (auto r = check_name("queue", queue); !r) {
    return tl::unexpected(std::move(r.error()));
  }
  if (lease.count() <= 0) {
    return make_error(ErrorCode::kInvalidArgument, "lease duration must be positive");
  }
  if (max == 0) {
    return std::vector<QueueMessage>{};
  }
  if (detail::on_writer_thread()) {
    return make_error(ErrorCode::kInternal,
                      "store lease() called from a write callback: it would wait for itself");
  }
  // shared_ptr: the promise must outlive set_value() on the writer thread, which may still be
  // running when get() returns here.
  auto promise = std::make_shared<std::promise<LeaseResult>>();
  auto future = promise->get_future();
  Job job;
  job.work = LeaseJob{std::string(queue), to_sql_limit(max), lease,
                      [promise](LeaseResult r) { promise->set_value(std::move(r)); }, std::nullopt};
  enqueue_job(std::move(job));
  return future.get();
}

void SqliteStore::enqueue_job(Job job) {
  bool notify = false;
  std::optional<Job> rejected;
  {
    detail::MutexLock lock(queue_mu_);
    if (stopping_) {
      rejected = std::move(job);
    } else {
      // Wake the writer when it may be idle (queue was empty) or when it waits to fill a group
      // that is now full; otherwise it finds the job when it looks next.
      const bool was_empty = queue_.empty();
      pending_ops_ += job.ops;
      job.enqueued_at = std::chrono::steady_clock::now();
      queue_.push_back(std::move(job));
      notify = was_empty || pending_ops_ >= options_.max_batch_ops;
    }
  }
  if (notify) {
    queue_cv_.notify_one();
  }
  if (rejected) {
    // Only a caller racing the destructor gets here; answer it on its own thread.
    const core::Error e{ErrorCode::kUnavailable, name_ + ": store is shutting down"};
    std::visit(
        [&](auto& work) {
          if (work.done) {
            work.done(tl::unexpected(e));
          }
        },
        rejected->work);
  }
}

void SqliteStore::writer_loop() {
  t_on_writer_thread = true;
  std::vector<Job> group;
  while (take_group(group)) {
    run_group(group, to_ms(clock_.wall()));
    deliver(group);
    group.clear();
  }
}

bool SqliteStore::take_group(std::vector<Job>& group) {
  detail::MutexLock lock(queue_mu_);
  while (!stopping_ && queue_.empty()) {
    queue_cv_.wait(lock);
  }
  if (queue_.empty()) {
    return false;  // stopping, and everything is drained
  }
  // Give later writers a chance to join, counting from when the oldest pending job arrived: if
  // the writer was busy committing for that long already, it commits at once. The wait uses the
  // real steady clock, not clock_: it paces the thread, and a ManualClock would never wake it.
  const auto deadline = queue_.front().enqueued_at + options_.max_batch_delay;
  while (!stopping_ && pending_ops_ < options_.max_batch_ops) {
    if (queue_cv_.wait_until(lock, deadline) == std::cv_status::timeout) {
      break;
    }
  }
  std::size_t ops = 0;
  while (!queue_.empty()) {
    const std::size_t n = queue_.front().ops;
    // A batch larger than max_batch_ops still commits, alone.
    if (!group.empty() && ops + n > options_.max_batch_ops) {
      break;
    }
    ops += n;
    group.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  pending_ops_ -= ops;
  return true;
}

core::Error SqliteStore::write_error(std::string_view what) const {
  return sqlite_error(name_, write_db_.get(), what);
}

core::Result<void> SqliteStore::step_done(sqlite3_stmt* stmt, std::string_view what) {
  StmtScope scope(stmt);
  if (sqlite3_step(stmt) != SQLITE_DONE) {
    return tl::unexpected(write_error(what));
  }
  return {};
}

void SqliteStore::run_group(std::vector<Job>& group, std::int64_t now_ms) {
  sqlite3* w = write_db_.get();
  // Jobs that already failed on their own keep their error; the others get `e`.
  auto fail_all = [&](const core::Error& e) {
    for (Job& job : group) {
      std::visit(
          [&](auto& work) {
            if (!work.result || work.result->has_value()) {
              work.result = tl::unexpected(e);
            }
          },
          job.work);
    }
  };
  auto abort_group = [&](const core::Error& e) {
    if (sqlite3_get_autocommit(w) == 0) {
      (void)step_done(ws_.rollback.get(), "cannot roll back");
    }
    fail_all(e);
  };

  ConditionalLock conn_lock(read_mu_, shared_connection_);
  if (auto r = step_done(ws_.begin.get(), "cannot begin transaction"); !r) {
    fail_all(r.error());
    return;
  }

  for (Job& job : group) {
    batches_.fetch_add(1, std::memory_order_relaxed);
    // A malformed batch never reaches SQL.
    if (auto* wj = std::get_if<WriteJob>(&job.work)) {
      if (auto v = validate_batch(wj->batch); !v) {
        wj->result = tl::unexpected(std::move(v.error()));
        continue;
      }
    }
    // Each job in its own savepoint, so one that fails halfway rolls back alone.
    if (auto r = step_done(ws_.savepoint.get(), "cannot open savepoint"); !r) {
      abort_group(r.error());
      return;
    }
    const core::Error* job_error =
        std::visit(Overloaded{
                       [&](WriteJob& wj) -> const core::Error* {
                         wj.result = apply_batch(wj.batch, now_ms);
                         return wj.result->has_value() ? nullptr : &wj.result->error();
                       },
                       [&](LeaseJob& lj) -> const core::Error* {
                         lj.result = apply_lease(lj, now_ms);
                         return lj.result->has_value() ? nullptr : &lj.result->error();
                       },
                   },
                   job.work);
    if (job_error != nullptr) {
      // Some errors (disk full, I/O, out of memory) make SQLite roll back the whole
      // transaction; then nothing of the group survives.
      if (sqlite3_get_autocommit(w) != 0) {
        fail_all(core::Error{ErrorCode::kIo,
                             "group transaction rolled back after: " + job_error->message});
        return;
      }
      if (auto r = step_done(ws_.rollback_to_savepoint.get(), "cannot roll back batch"); !r) {
        abort_group(r.error());
        return;
      }
    }
    if (auto r = step_done(ws_.release_savepoint.get(), "cannot release savepoint"); !r) {
      abort_group(r.error());
      return;
    }
  }

  if (auto r = step_done(ws_.commit.get(), "cannot commit"); !r) {
    abort_group(r.error());
    return;
  }
  transactions_.fetch_add(1, std::memory_order_relaxed);
}

void SqliteStore::deliver(std::vector<Job>& group) {
  for (Job& job : group) {
    std::visit(
        [&](auto& work) {
          if (!work.result) {
            // run_group gives every job a result; keep callers from hanging if it ever doesn't.
            work.result = make_error(ErrorCode::kInternal, name_ + ": write lost its result");
          }
          if (work.done) {
            work.done(std::move(*work.result));
          }
        },
        job.work);
  }
}

namespace {

// Runs a write statement that returns no rows.
template <class... Args>
core::Result<void> step_write(sqlite3* db, std::string_view name, sqlite3_stmt* stmt,
                              std::string_view what, Args... args) {
  StmtScope scope(stmt);
  if (bind(stmt, args...) != SQLITE_OK || sqlite3_step(stmt) != SQLITE_DONE) {
    return tl::unexpected(sqlite_error(name, db, what));
  }
  return {};
}

}  // namespace

core::Result<CommitInfo> SqliteStore::apply_batch(const Batch& batch, std::int64_t now_ms) {
  sqlite3* w = write_db_.get();
  CommitInfo info;
  for (std::size_t i = 0; i < batch.size(); ++i) {
    core::Result<void> r = std::visit(
        Overloaded{
            [&](const Put& o) {
              return step_write(w, name_, ws_.put.get(), "cannot put", Text{o.table}, Blob{o.key},
                                Blob{o.value});
            },
            [&](const Delete& o) {
              return step_write(w, name_, ws_.del.get(), "cannot delete", Text{o.table},
                                Blob{o.key});
            },
            [&](const AddCounter& o) -> core::Result<void> {
              sqlite3_stmt* s = ws_.add_counter.get();
              StmtScope scope(s);
              if (bind(s, Text{o.name}, o.delta) != SQLITE_OK || sqlite3_step(s) != SQLITE_ROW) {
                return tl::unexpected(write_error("cannot add to counter"));
              }
              if (sqlite3_column_type(s, 0) != SQLITE_INTEGER) {
                return make_error(ErrorCode::kInvalidArgument, "counter would overflow 64 bits");
              }
              if (sqlite3_step(s) != SQLITE_DONE) {
                return tl::unexpected(write_error("cannot add to counter"));
              }
              return {};
            },
            [&](const Enqueue& o) -> core::Result<void> {
              auto e = step_write(w, name_, ws_.enqueue.get(), "cannot enqueue", Text{o.queue},
                                  Blob{o.payload}, to_ms(o.not_before));
              if (e) {
                info.enqueued_ids.push_back(sqlite3_last_insert_rowid(w));
              }
              return e;
            },
            [&](const Ack& o) {
              // An unknown or already acked id deletes nothing, which is fine: acks are
              // idempotent.
              return step_write(w, name_, ws_.ack.get(), "cannot ack", Text{o.queue}, o.id);
            },
            [&](const Release& o) {
              return step_write(w, name_, ws_.release.get(), "cannot release", Text{o.queue}, o.id,
                                to_ms(o.not_before));
            },
            [&](const Append& o) -> core::Result<void> {
              sqlite3_stmt* s = ws_.append.get();
              StmtScope scope(s);
              if (bind(s, Text{o.log}, Blob{o.payload}, now_ms) != SQLITE_OK ||
                  sqlite3_step(s) != SQLITE_ROW) {
                return tl::unexpected(write_error("cannot append"));
              }
              info.appended_seqs.push_back(sqlite3_column_int64(s, 0));
              if (sqlite3_step(s) != SQLITE_DONE) {
                return tl::unexpected(write_error("cannot append"));
              }
              return {};
            },
        },
        batch[i]);
    if (!r) {
      return make_error(r.error().code, "op " + std::to_string(i) + ": " + r.error().message);
    }
  }
  return info;
}

SqliteStore::LeaseResult SqliteStore::apply_lease(const LeaseJob& job, std::int64_t now_ms) {
  sqlite3* w = write_db_.get();
  std::vector<QueueMessage> out;
  {
    sqlite3_stmt* s = ws_.lease_select.get();
    StmtScope scope(s);
    if (bind(s, Text{job.queue}, now_ms, job.max) != SQLITE_OK) {
      return tl::unexpected(write_error("cannot lease"));
    }
    int rc = SQLITE_OK;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      QueueMessage m;
      m.id = sqlite3_column_int64(s, 0);
      m.payload = column_string(s, 1);
      const std::int64_t attempts = sqlite3_column_int64(s, 2) + 1;
      m.attempts = static_cast<std::uint32_t>(
          std::clamp<std::int64_t>(attempts, 0, std::numeric_limits<std::uint32_t>::max()));
      out.push_back(std::move(m));
    }
    if (rc != SQLITE_DONE) {
      return tl::unexpected(write_error("cannot lease"));
    }
  }
  // Updated after the select has finished, rather than while stepping through it.
  const std::int64_t until = saturating_add(now_ms, job.lease.count());
  for (const QueueMessage& m : out) {
    if (auto r = step_write(w, name_, ws_.lease_update.get(), "cannot lease", m.id, until); !r) {
      return tl::unexpected(std::move(r.error()));
    }
  }
  return out;
}

// ---- reads ----

core::Result<std::string> SqliteStore::get(std::string_view table, std::string_view key) {
  if (auto r = check_table(table).and_then([&] { return check_key(key); }); !r) {
    return tl::unexpected(std::move(r.error()));
  }
  detail::MutexLock lock(read_mu_);
  sqlite3_stmt* s = rs_.get.get();
  StmtScope scope(s);
  if (bind(s, Text{table}, Blob{key}) != SQLITE_OK) {
    return tl::unexpected(sqlite_error(name_, sqlite3_db_handle(s), "cannot get"));
  }
  const int rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    return column_string(s, 0);
  }
  if (rc == SQLITE_DONE) {
    return make_error(ErrorCode::kNotFound, "no such key in table " + std::string(table));
  }
  return tl::unexpected(sqlite_error(name_, sqlite3_db_handle(s), "cannot get"));
}

core::Result<std::vector<std::pair<std::string, std::string>>> SqliteStore::scan(
    std::string_view table, std::string_view prefix, std::size_t limit) {
  if (auto r = check_table(table); !r) {
    return tl::unexpected(std::move(r.error()));
  }
  std::vector<std::pair<std::string, std::string>> out;
  if (limit == 0) {
    return out;
  }
  const std::optional<std::string> upper = prefix_successor(prefix);
  detail::MutexLock lock(read_mu_);
  sqlite3_stmt* s = upper ? rs_.scan_bounded.get() : rs_.scan_unbounded.get();
  StmtScope scope(s);
  const int brc = upper ? bind(s, Text{table}, Blob{prefix}, Blob{*upper}, to_sql_limit(limit))
                        : bind(s, Text{table}, Blob{prefix}, to_sql_limit(limit));
  if (brc != SQLITE_OK) {
    return tl::unexpected(sqlite_error(name_, sqlite3_db_handle(s), "cannot scan"));
  }
  int rc = SQLITE_OK;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    out.emplace_back(column_string(s, 0), column_string(s, 1));
  }
  if (rc != SQLITE_DONE) {
    return tl::unexpected(sqlite_error(name_, sqlite3_db_handle(s), "cannot scan"));
  }
  return out;
}

core::Result<std::int64_t> SqliteStore::counter(std::string_view name) {
  if (auto r = check_name("counter", name); !r) {
    return tl::unexpected(std::move(r.error()));
  }
  detail::MutexLock lock(read_mu_);
  sqlite3_stmt* s = rs_.counter.get();
  StmtScope scope(s);
  if (bind(s, Text{name}) != SQLITE_OK) {
    return tl::unexpected(sqlite_error(name_, sqlite3_db_handle(s), "cannot read counter"));
  }
  const int rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    return static_cast<std::int64_t>(sqlite3_column_int64(s, 0));
  }
  if (rc == SQLITE_DONE) {
    return std::int64_t{0};
  }
  return tl::unexpected(sqlite_error(name_, sqlite3_db_handle(s), "cannot read counter"));
}

core::Result<std::int64_t> SqliteStore::queue_size(std::string_view queue) {
  if (auto r = check_name("queue", queue); !r) {
    return tl::unexpected(std::move(r.error()));
  }
  detail::MutexLock lock(read_mu_);
  sqlite3_stmt* s = rs_.queue_size.get();
  StmtScope scope(s);
  if (bind(s, Text{queue}) != SQLITE_OK || sqlite3_step(s) != SQLITE_ROW) {
    return tl::unexpected(sqlite_error(name_, sqlite3_db_handle(s), "cannot count queue"));
  }
  return static_cast<std::int64_t>(sqlite3_column_int64(s, 0));
}

core::Result<std::vector<LogEntry>> SqliteStore::read_log(std::string_view log, std::int64_t from,
                                                          std::size_t limit) {
  if (auto r = check_name("log", log); !r) {
    return tl::unexpected(std::move(r.error()));
  }
  std::vector<LogEntry> out;
  if (limit == 0) {
    return out;
  }
  detail::MutexLock lock(read_mu_);
  sqlite3_stmt* s = rs_.read_log.get();
  StmtScope scope(s);
  if (bind(s, Text{log}, from, to_sql_limit(limit)) != SQLITE_OK) {
    return tl::unexpected(sqlite_error(name_, sqlite3_db_handle(s), "cannot read log"));
  }
  int rc = SQLITE_OK;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    LogEntry e;
    e.seq = sqlite3_column_int64(s, 0);
    e.payload = column_string(s, 1);
    e.at = from_ms(sqlite3_column_int64(s, 2));
    out.push_back(std::move(e));
  }
  if (rc != SQLITE_DONE) {
    return tl::unexpected(sqlite_error(name_, sqlite3_db_handle(s), "cannot read log"));
  }
  return out;
}

}  // namespace gatehouse::store
