#include "store/store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <stdlib.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <future>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/core.h"
#include "store/sqlite_store.h"

namespace gatehouse::store {
namespace {

using core::ErrorCode;
using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Pair;

namespace fs = std::filesystem;

// A fresh directory under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "gh_store_test_XXXXXX").string();
    const char* made = mkdtemp(tmpl.data());
    EXPECT_NE(made, nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Holds the writer thread inside a write callback until release(), so that the test can line up
// several writes and know they will be taken as one group.
class WriterGate {
 public:
  Store::Callback callback() {
    return [this](const core::Result<CommitInfo>& r) {
      EXPECT_TRUE(r.has_value());
      entered_.set_value();
      released_.wait();
    };
  }
  void wait_entered() { entered_future_.wait(); }
  void release() { release_.set_value(); }

 private:
  std::promise<void> entered_;
  std::future<void> entered_future_ = entered_.get_future();
  std::promise<void> release_;
  std::shared_future<void> released_ = release_.get_future().share();
};

// Collects the results of `n` async writes; wait() returns once all callbacks have run.
class Results {
 public:
  explicit Results(std::size_t n) : results_(n) {}
  Store::Callback callback(std::size_t i) {
    return [this, i](core::Result<CommitInfo> r) {
      results_[i] = std::move(r);
      if (done_.fetch_add(1) + 1 == results_.size()) {
        all_.set_value();
      }
    };
  }
  void wait() { all_future_.wait(); }
  core::Result<CommitInfo>& operator[](std::size_t i) { return results_[i]; }

 private:
  std::vector<core::Result<CommitInfo>> results_;
  std::atomic<std::size_t> done_{0};
  std::promise<void> all_;
  std::future<void> all_future_ = all_.get_future();
};

// prefix + decimal n. (Not `"k" + std::to_string(n)`: g++ 12 at -O3 reports a bogus -Wrestrict
// in that operator+, GCC bug 105651.)
std::string numbered(std::string prefix, std::uint64_t n) {
  prefix += std::to_string(n);
  return prefix;
}

Options fast_options() {
  Options o;
  o.max_batch_delay = milliseconds(0);
  return o;
}

SqliteStore& as_sqlite(Store& s) { return dynamic_cast<SqliteStore&>(s); }

std::unique_ptr<Store> must_open(const std::string& url, const core::Clock& clock,
                                 Options options = fast_options()) {
  auto s = open(url, clock, options);
  EXPECT_TRUE(s.has_value()) << s.error().message;
  return s ? std::move(*s) : nullptr;
}

void must_write(Store& s, Batch batch) {
  auto r = s.write_sync(std::move(batch));
  ASSERT_TRUE(r.has_value()) << r.error().message;
}

std::vector<std::int64_t> ids_of(const std::vector<QueueMessage>& msgs) {
  std::vector<std::int64_t> ids;
  ids.reserve(msgs.size());
  for (const auto& m : msgs) {
    ids.push_back(m.id);
  }
  return ids;
}

// The functional tests run against both connection layouts: ":memory:" (readers share the write
// connection) and a WAL file (separate read connection).
class StoreTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    const std::string url =
        GetParam() ? "sqlite://" + (dir_.path() / "state.db").string() : "sqlite://:memory:";
    store_ = must_open(url, clock_);
    ASSERT_NE(store_, nullptr);
  }

  TempDir dir_;
  core::ManualClock clock_;
  std::unique_ptr<Store> store_;
};

INSTANTIATE_TEST_SUITE_P(Backends, StoreTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "File" : "Memory"; });

TEST_P(StoreTest, PutGetOverwriteDelete) {
  must_write(*store_, {Put{"keys", "k1", "v1"}, Put{"keys", "k2", "v2"}});
  EXPECT_EQ(store_->get("keys", "k1").value(), "v1");
  EXPECT_EQ(store_->get("keys", "k2").value(), "v2");

  must_write(*store_, {Put{"keys", "k1", "v1b"}});
  EXPECT_EQ(store_->get("keys", "k1").value(), "v1b");

  must_write(*store_, {Delete{"keys", "k1"}, Delete{"keys", "never-there"}});
  auto gone = store_->get("keys", "k1");
  ASSERT_FALSE(gone.has_value());
  EXPECT_EQ(gone.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store_->get("other", "k2").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store_->get("Bad-Table", "k2").error().code, ErrorCode::kInvalidArgument);
}

TEST_P(StoreTest, KeysAndValuesAreBinarySafe) {
  const std::string key("a\0b\xff", 4);
  const std::string value("\0\x01\x02\xfe", 4);
  must_write(*store_, {Put{"bin", key, value}, Put{"bin", "", ""}});
  EXPECT_EQ(store_->get("bin", key).value(), value);
  EXPECT_EQ(store_->get("bin", std::string("a\0b", 3)).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store_->get("bin", "").value(), "");
}

TEST_P(StoreTest, ScanByPrefixInKeyOrderWithLimit) {
  must_write(*store_, {Put{"t", "user:3", "c"}, Put{"t", "user:1", "a"}, Put{"t", "user:2", "b"},
                       Put{"t", "usera", "x"}, Put{"t", "admin:1", "z"}, Put{"t", "\xff\xff", "f1"},
                       Put{"t", "\xff\xff\x01", "f2"}, Put{"u", "user:9", "other table"}});

  EXPECT_THAT(store_->scan("t", "user:", 2).value(),
              ElementsAre(Pair("user:1", "a"), Pair("user:2", "b")));
  EXPECT_THAT(store_->scan("t", "user:", 100).value(),
              ElementsAre(Pair("user:1", "a"), Pair("user:2", "b"), Pair("user:3", "c")));
  EXPECT_THAT(store_->scan("t", "user", 100).value(),
              ElementsAre(Pair("user:1", "a"), Pair("user:2", "b"), Pair("user:3", "c"),
                          Pair("usera", "x")));
  // A prefix of 0xff bytes has no successor: the scan runs to the end of the table.
  EXPECT_THAT(store_->scan("t", "\xff", 100).value(),
              ElementsAre(Pair("\xff\xff", "f1"), Pair("\xff\xff\x01", "f2")));
  EXPECT_EQ(store_->scan("t", "", 100).value().size(), 7U);
  EXPECT_EQ(store_->scan("t", "", 100).value().front().first, "admin:1");
  EXPECT_TRUE(store_->scan("t", "user:", 0).value().empty());
  EXPECT_TRUE(store_->scan("t", "nobody", 10).value().empty());
  EXPECT_EQ(store_->scan("T", "", 10).error().code, ErrorCode::kInvalidArgument);
}

TEST_P(StoreTest, CountersAddAndSum) {
  EXPECT_EQ(store_->counter("quota:k:2026-01-01").value(), 0);
  must_write(*store_, {AddCounter{"quota:k:2026-01-01", 5}});
  must_write(*store_, {AddCounter{"quota:k:2026-01-01", -8}, AddCounter{"other", 2}});
  EXPECT_EQ(store_->counter("quota:k:2026-01-01").value(), -3);
  EXPECT_EQ(store_->counter("other").value(), 2);
  must_write(*store_, {AddCounter{"other", 1}, AddCounter{"other", 1}});
  EXPECT_EQ(store_->counter("other").value(), 4);
  EXPECT_EQ(store_->counter("").error().code, ErrorCode::kInvalidArgument);
}

TEST_P(StoreTest, CounterOverflowFailsTheWholeBatch) {
  constexpr auto kMax = std::numeric_limits<std::int64_t>::max();
  must_write(*store_, {AddCounter{"big", kMax}});
  auto r = store_->write_sync({Put{"t", "side-effect", "x"}, AddCounter{"big", 1}});
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_THAT(r.error().message, HasSubstr("op 1"));
  EXPECT_EQ(store_->counter("big").value(), kMax);
  EXPECT_EQ(store_->get("t", "side-effect").error().code, ErrorCode::kNotFound);
}

TEST_P(StoreTest, EmptyBatchCommits) {
  auto r = store_->write_sync({});
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->enqueued_ids.empty());
  EXPECT_TRUE(r->appended_seqs.empty());
}

TEST_P(StoreTest, CommitInfoListsIdsInOpOrder) {
  auto r = store_->write_sync({Enqueue{"q", "m1", {}}, Append{"a", "e1"}, Put{"t", "k", "v"},
                               Enqueue{"q2", "m2", {}}, Append{"b", "e1"}, Append{"a", "e2"}});
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->enqueued_ids.size(), 2U);
  EXPECT_LT(r->enqueued_ids[0], r->enqueued_ids[1]);
  EXPECT_THAT(r->appended_seqs, ElementsAre(1, 1, 2));
}

TEST_P(StoreTest, QueueLeaseAckReleaseAndExpiry) {
  auto put = store_->write_sync({Enqueue{"jobs", "a", {}}, Enqueue{"jobs", "b", {}},
                                 Enqueue{"jobs", "c", {}}, Enqueue{"other", "x", {}}});
  ASSERT_TRUE(put.has_value());
  const auto& ids = put->enqueued_ids;
  ASSERT_EQ(ids.size(), 4U);
  EXPECT_EQ(store_->queue_size("jobs").value(), 3);

  auto first = store_->lease("jobs", 2, seconds(30)).value();
  EXPECT_THAT(ids_of(first), ElementsAre(ids[0], ids[1]));
  EXPECT_EQ(first[0].payload, "a");
  EXPECT_EQ(first[0].attempts, 1U);
  EXPECT_THAT(ids_of(store_->lease("jobs", 10, seconds(30)).value()), ElementsAre(ids[2]));
  EXPECT_TRUE(store_->lease("jobs", 10, seconds(30)).value().empty());
  EXPECT_EQ(store_->queue_size("jobs").value(), 3);  // leased messages still count

  // Ack removes for good; acking an unknown id, or an id of another queue, is a no-op.
  must_write(*store_, {Ack{"jobs", ids[0]}, Ack{"jobs", 999'999}, Ack{"jobs", ids[3]}});
  EXPECT_EQ(store_->queue_size("jobs").value(), 2);
  EXPECT_EQ(store_->queue_size("other").value(), 1);

  // Leases expire: b and c come back with attempts counted.
  clock_.advance(seconds(29));
  EXPECT_TRUE(store_->lease("jobs", 10, seconds(30)).value().empty());
  clock_.advance(seconds(1));
  auto again = store_->lease("jobs", 10, seconds(30)).value();
  EXPECT_THAT(ids_of(again), ElementsAre(ids[1], ids[2]));
  EXPECT_EQ(again[0].attempts, 2U);
  EXPECT_EQ(again[1].attempts, 2U);

  // Release makes a message visible again at not_before, without waiting for the lease.
  must_write(*store_,
             {Release{"jobs", ids[1], clock_.wall() + seconds(10)}, Release{"jobs", 424242, {}}});
  EXPECT_TRUE(store_->lease("jobs", 10, seconds(30)).value().empty());
  clock_.advance(seconds(10));
  auto released = store_->lease("jobs", 10, seconds(30)).value();
  ASSERT_EQ(released.size(), 1U);
  EXPECT_EQ(released[0].id, ids[1]);
  EXPECT_EQ(released[0].payload, "b");
  EXPECT_EQ(released[0].attempts, 3U);
}

TEST_P(StoreTest, EnqueueNotBefore) {
  must_write(*store_, {Enqueue{"later", "p", clock_.wall() + seconds(5)}});
  EXPECT_TRUE(store_->lease("later", 1, seconds(1)).value().empty());
  clock_.advance(milliseconds(4999));
  EXPECT_TRUE(store_->lease("later", 1, seconds(1)).value().empty());
  clock_.advance(milliseconds(1));
  EXPECT_EQ(store_->lease("later", 1, seconds(1)).value().size(), 1U);
}

TEST_P(StoreTest, LeaseArguments) {
  must_write(*store_, {Enqueue{"q", "p", {}}});
  EXPECT_TRUE(store_->lease("q", 0, seconds(1)).value().empty());
  EXPECT_EQ(store_->lease("q", 1, milliseconds(0)).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(store_->lease("", 1, seconds(1)).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(store_->lease(std::string(257, 'q'), 1, seconds(1)).error().code,
            ErrorCode::kInvalidArgument);
  // Nothing above leased the message.
  EXPECT_EQ(store_->lease("q", 1, seconds(1)).value().size(), 1U);
}

TEST_P(StoreTest, LogSeqsAreDensePerLog) {
  EXPECT_THAT(
      store_->write_sync({Append{"exec-1", "e1"}, Append{"exec-1", "e2"}, Append{"exec-1", "e3"}})
          ->appended_seqs,
      ElementsAre(1, 2, 3));
  EXPECT_THAT(store_->write_sync({Append{"exec-2", "x"}})->appended_seqs, ElementsAre(1));
  clock_.advance(seconds(1));
  EXPECT_THAT(store_->write_sync({Append{"exec-1", "e4"}, Append{"exec-1", "e5"}})->appended_seqs,
              ElementsAre(4, 5));

  auto all = store_->read_log("exec-1", 1, 100).value();
  ASSERT_EQ(all.size(), 5U);
  for (std::size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(all[i].seq, static_cast<std::int64_t>(i + 1));
    EXPECT_EQ(all[i].payload, numbered("e", i + 1));
  }
  EXPECT_EQ(all[3].at, clock_.wall());
  EXPECT_EQ(all[0].at, clock_.wall() - seconds(1));

  auto mid = store_->read_log("exec-1", 3, 2).value();
  ASSERT_EQ(mid.size(), 2U);
  EXPECT_EQ(mid[0].seq, 3);
  EXPECT_EQ(mid[1].seq, 4);
  EXPECT_TRUE(store_->read_log("exec-1", 6, 10).value().empty());
  EXPECT_TRUE(store_->read_log("exec-1", 1, 0).value().empty());
  EXPECT_TRUE(store_->read_log("nope", 1, 10).value().empty());
  EXPECT_EQ(store_->read_log("", 1, 10).error().code, ErrorCode::kInvalidArgument);
}

TEST_P(StoreTest, InvalidOpsAreRejectedBeforeAnythingIsWritten) {
  const std::vector<Op> bad = {
      Put{"Users", "k", "v"},
      Put{"", "k", "v"},
      Put{"a-b", "k", "v"},
      Put{std::string(65, 't'), "k", "v"},
      Put{"t", std::string(1025, 'k'), "v"},
      Put{"t", "k", std::string(detail::kMaxValueBytes + 1, 'v')},
      Delete{"t t", "k"},
      AddCounter{"", 1},
      AddCounter{std::string(257, 'c'), 1},
      Enqueue{"", "p", {}},
      Enqueue{"q", std::string(detail::kMaxValueBytes + 1, 'p'), {}},
      Ack{"", 1},
      Release{"", 1, {}},
      Append{"", "p"},
  };
  for (std::size_t i = 0; i < bad.size(); ++i) {
    auto r = store_->write_sync({Put{"t", "before", "x"}, bad[i], AddCounter{"after", 1}});
    ASSERT_FALSE(r.has_value()) << "bad op " << i;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << "bad op " << i;
    EXPECT_THAT(r.error().message, HasSubstr("op 1")) << "bad op " << i;
  }
  EXPECT_EQ(store_->get("t", "before").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store_->counter("after").value(), 0);

  // The bounds themselves are accepted.
  must_write(*store_, {Put{std::string(64, 't'), std::string(1024, 'k'), "v"},
                       AddCounter{std::string(256, 'c'), 1}});
}

TEST_P(StoreTest, ReadsInACallbackSeeTheWrite) {
  std::promise<std::string> seen;
  store_->write({Put{"t", "k", "v"}}, [&](const core::Result<CommitInfo>& r) {
    EXPECT_TRUE(r.has_value());
    auto v = store_->get("t", "k");
    seen.set_value(v ? *v : "<missing>");
  });
  EXPECT_EQ(seen.get_future().get(), "v");
}

TEST_P(StoreTest, BlockingCallsFromACallbackFailInsteadOfDeadlocking) {
  std::promise<std::pair<ErrorCode, ErrorCode>> codes;
  store_->write({}, [&](const core::Result<CommitInfo>& /*unused*/) {
    auto w = store_->write_sync({Put{"t", "k", "v"}});
    auto l = store_->lease("q", 1, seconds(1));
    codes.set_value(
        {w ? ErrorCode::kBadRequest : w.error().code, l ? ErrorCode::kBadRequest : l.error().code});
  });
  auto [w, l] = codes.get_future().get();
  EXPECT_EQ(w, ErrorCode::kInternal);
  EXPECT_EQ(l, ErrorCode::kInternal);
}

// Batches that share a group transaction stay atomic each: one failing in validation and one
// failing halfway through its SQL write nothing, while the valid one commits, all in one
// transaction.
TEST_P(StoreTest, BatchesInOneGroupStayAtomicEach) {
  must_write(*store_, {AddCounter{"big", std::numeric_limits<std::int64_t>::max()}});

  WriterGate gate;
  store_->write({}, gate.callback());
  gate.wait_entered();  // the writer is now parked in the callback; the next writes queue up
  const auto before = as_sqlite(*store_).stats_for_test();

  Results results(3);
  store_->write({Put{"t", "good", "1"}, Enqueue{"q", "m", {}}}, results.callback(0));
  store_->write({Put{"t", "bad-sql", "1"}, AddCounter{"big", 1}}, results.callback(1));
  store_->write({Put{"t", "bad-validation", "1"}, Put{"NOT_A_TABLE", "k", "v"}},
                results.callback(2));
  gate.release();
  results.wait();

  EXPECT_TRUE(results[0].has_value());
  ASSERT_FALSE(results[1].has_value());
  EXPECT_EQ(results[1].error().code, ErrorCode::kInvalidArgument);
  ASSERT_FALSE(results[2].has_value());
  EXPECT_EQ(results[2].error().code, ErrorCode::kInvalidArgument);

  EXPECT_EQ(store_->get("t", "good").value(), "1");
  EXPECT_EQ(store_->queue_size("q").value(), 1);
  EXPECT_EQ(store_->get("t", "bad-sql").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store_->get("t", "bad-validation").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store_->counter("big").value(), std::numeric_limits<std::int64_t>::max());

  const auto after = as_sqlite(*store_).stats_for_test();
  EXPECT_EQ(after.transactions - before.transactions, 1U);
  EXPECT_EQ(after.batches - before.batches, 3U);
}

// 1000 single-op writes from 4 threads, queued while the writer is parked: they commit in
// exactly 1000 / max_batch_ops transactions.
TEST(StoreGroupCommit, GroupsPendingWritesUpToMaxBatchOps) {
  core::ManualClock clock;
  Options options;
  options.max_batch_ops = 100;
  auto store = must_open("sqlite://:memory:", clock, options);
  ASSERT_NE(store, nullptr);

  WriterGate gate;
  store->write({}, gate.callback());
  gate.wait_entered();
  const auto before = as_sqlite(*store).stats_for_test();

  constexpr std::size_t kThreads = 4;
  constexpr std::size_t kPerThread = 250;
  Results results(kThreads * kPerThread);
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (std::size_t t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (std::size_t i = 0; i < kPerThread; ++i) {
        const std::size_t n = t * kPerThread + i;
        store->write({Put{"t", numbered("k", n), "v"}}, results.callback(n));
      }
    });
  }
  for (auto& th : threads) {
    th.join();
  }
  gate.release();
  results.wait();

  for (std::size_t i = 0; i < kThreads * kPerThread; ++i) {
    ASSERT_TRUE(results[i].has_value()) << i;
  }
  EXPECT_EQ(store->scan("t", "k", 5000).value().size(), 1000U);
  const auto after = as_sqlite(*store).stats_for_test();
  EXPECT_EQ(after.transactions - before.transactions, 10U);
  EXPECT_EQ(after.batches - before.batches, 1000U);
}

// Free-running concurrent synchronous writers: all commit, in no more transactions than writes.
TEST(StoreGroupCommit, ConcurrentWriteSync) {
  core::ManualClock clock;
  auto store = must_open("sqlite://:memory:", clock, Options{});
  ASSERT_NE(store, nullptr);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 50;
  constexpr int kWrites = kThreads * kPerThread;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        auto r = store->write_sync({Put{"t", numbered(numbered("", t) + ":", i), "v"},
                                    AddCounter{"n", 1}, Append{"log", "x"}});
        if (!r) {
          failures.fetch_add(1);
        }
      }
    });
  }
  for (auto& th : threads) {
    th.join();
  }
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(store->counter("n").value(), kWrites);
  auto log = store->read_log("log", 1, 1000).value();
  ASSERT_EQ(log.size(), static_cast<std::size_t>(kWrites));
  EXPECT_EQ(log.back().seq, kWrites);
  EXPECT_LE(as_sqlite(*store).stats_for_test().transactions, static_cast<std::uint64_t>(kWrites));
}

TEST(StoreLifecycle, DestructorDrainsPendingWrites) {
  TempDir dir;
  core::ManualClock clock;
  const std::string url = "sqlite://" + (dir.path() / "drain.db").string();
  constexpr std::size_t kWrites = 200;
  Results results(kWrites);
  {
    auto store = must_open(url, clock, Options{});
    ASSERT_NE(store, nullptr);
    for (std::size_t i = 0; i < kWrites; ++i) {
      store->write({Put{"t", numbered("k", i), "v"}}, results.callback(i));
    }
  }  // every callback has run once the destructor returns
  results.wait();
  for (std::size_t i = 0; i < kWrites; ++i) {
    ASSERT_TRUE(results[i].has_value()) << i;
  }
  auto store = must_open(url, clock);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->scan("t", "", 1000).value().size(), kWrites);
}

TEST(StoreLifecycle, DurableAcrossReopenAndMigratesOnce) {
  TempDir dir;
  core::ManualClock clock;
  // Parent directories are created.
  const fs::path file = dir.path() / "a" / "b" / "state.db";
  const std::string url = "sqlite://" + file.string();
  std::int64_t leased_id = 0;
  {
    auto store = must_open(url, clock);
    ASSERT_NE(store, nullptr);
    EXPECT_EQ(as_sqlite(*store).stats_for_test().migrations_applied, SqliteStore::kSchemaVersion);
    must_write(*store, {Put{"keys", "k", "v"}, AddCounter{"c", 7}, Enqueue{"q", "m1", {}},
                        Enqueue{"q", "m2", {}}, Append{"l", "e1"}});
    auto leased = store->lease("q", 1, seconds(60)).value();
    ASSERT_EQ(leased.size(), 1U);
    leased_id = leased[0].id;
  }
  EXPECT_TRUE(fs::exists(file));

  auto store = must_open(url, clock);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(as_sqlite(*store).stats_for_test().migrations_applied, 0);
  EXPECT_EQ(store->get("keys", "k").value(), "v");
  EXPECT_EQ(store->counter("c").value(), 7);
  EXPECT_EQ(store->queue_size("q").value(), 2);
  // The lease survived the restart: only the other message is visible.
  auto leased = store->lease("q", 10, seconds(60)).value();
  ASSERT_EQ(leased.size(), 1U);
  EXPECT_NE(leased[0].id, leased_id);
  auto log = store->read_log("l", 1, 10).value();
  ASSERT_EQ(log.size(), 1U);
  EXPECT_EQ(log[0].payload, "e1");
  EXPECT_THAT(store->write_sync({Append{"l", "e2"}})->appended_seqs, ElementsAre(2));
}

TEST(StoreLifecycle, FileDatabaseUsesWal) {
  TempDir dir;
  core::ManualClock clock;
  const fs::path file = dir.path() / "wal.db";
  auto store = must_open("sqlite://" + file.string(), clock);
  ASSERT_NE(store, nullptr);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &stmt, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0)), "wal");
  sqlite3_finalize(stmt);
  sqlite3_close(db);
}

TEST(StoreLifecycle, RefusesANewerSchema) {
  TempDir dir;
  core::ManualClock clock;
  const fs::path file = dir.path() / "future.db";
  const std::string url = "sqlite://" + file.string();
  { ASSERT_NE(must_open(url, clock), nullptr); }

  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(file.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "INSERT INTO schema_migrations(version, applied_at) VALUES(99, 0)",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);

  auto r = open(url, clock);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kIo);
  EXPECT_THAT(r.error().message,
              HasSubstr("database schema version 99 is newer than this binary (" +
                        std::to_string(SqliteStore::kSchemaVersion) + ")"));
  EXPECT_THAT(r.error().message, HasSubstr(file.string()));
}

TEST(StoreOpen, RejectsBadUrls) {
  core::ManualClock clock;
  EXPECT_EQ(open("mysql://localhost/db", clock).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(open("", clock).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(open("sqlite:/x.db", clock).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(open("sqlite://", clock).error().code, ErrorCode::kInvalidArgument);
}

TEST(StoreOpen, PostgresIsNotImplementedAndKeepsTheUrlSecret) {
  core::ManualClock clock;
  auto r = open("postgres://gate:s3cret@db.internal/gatehouse", clock);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kNotImplemented);
  EXPECT_THAT(r.error().message, Not(HasSubstr("s3cret")));
  EXPECT_EQ(open("postgresql://db/x", clock).error().code, ErrorCode::kNotImplemented);
}

TEST(StoreOpen, UnwritablePathsAreIoErrors) {
  TempDir dir;
  core::ManualClock clock;
  const fs::path blocker = dir.path() / "blocker";
  { std::ofstream(blocker) << "a regular file"; }
  // A parent that is a regular file (fails the same way as root, unlike permission bits).
  auto r = open("sqlite://" + (blocker / "sub" / "state.db").string(), clock);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kIo);
  EXPECT_THAT(r.error().message, HasSubstr("blocker"));
  // A directory where the database file should be.
  auto d = open("sqlite://" + dir.path().string(), clock);
  ASSERT_FALSE(d.has_value());
  EXPECT_EQ(d.error().code, ErrorCode::kIo);
  // A file that is not a database.
  auto n = open("sqlite://" + blocker.string(), clock);
  ASSERT_FALSE(n.has_value());
  EXPECT_EQ(n.error().code, ErrorCode::kIo);
}

TEST(StoreOpen, OptionBounds) {
  core::ManualClock clock;
  Options zero_ops;
  zero_ops.max_batch_ops = 0;
  EXPECT_EQ(open("sqlite://:memory:", clock, zero_ops).error().code, ErrorCode::kInvalidArgument);
  Options long_delay;
  long_delay.max_batch_delay = milliseconds(1001);
  EXPECT_EQ(open("sqlite://:memory:", clock, long_delay).error().code, ErrorCode::kInvalidArgument);
  Options negative_delay;
  negative_delay.max_batch_delay = milliseconds(-1);
  EXPECT_EQ(open("sqlite://:memory:", clock, negative_delay).error().code,
            ErrorCode::kInvalidArgument);
}

TEST(StoreOpen, MemoryStoresAreIndependent) {
  core::ManualClock clock;
  auto a = must_open("sqlite://:memory:", clock);
  auto b = must_open("sqlite://:memory:", clock);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  must_write(*a, {Put{"t", "k", "a"}});
  EXPECT_EQ(a->get("t", "k").value(), "a");
  EXPECT_EQ(b->get("t", "k").error().code, ErrorCode::kNotFound);
}

}  // namespace
}  // namespace gatehouse::store
