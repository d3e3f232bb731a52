// Asynchronous invocations: the durable event queue, retries with back-off, dead letters, and
// the dispatcher that feeds queued events to the Runtime.
//
// Each function has its own store queue "async:<function>"; a message holds one event (JSON,
// below). The dispatcher leases at most reserved_concurrency messages of a function at a time, so
// async events never overfill the supervisor's own queue, and ends each lease with one atomic
// batch: Ack alone (done), Ack + Enqueue of the next attempt (retry, with not_before = the
// back-off), or Ack + Put into "dead_letters". A retry is a new message rather than a Release
// because the event records its attempts and last error, and a message's payload is immutable.
//
// Attempts: the store counts the leases of a message (QueueMessage::attempts) and the event counts
// the attempts of earlier messages, so attempt = event.attempts + leases. A lease that expired
// because its process died counts as an attempt: an event that kills every server that runs it
// is dead-lettered after max_retries + 1 of them instead of looping.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "runtime/admission.h"
#include "runtime/async_codec.h"
#include "runtime/runtime.h"

namespace gatehouse::runtime {
namespace {

using std::chrono::steady_clock;
using namespace std::chrono_literals;
using core::ErrorCode;

constexpr std::string_view kDeadLetters = "dead_letters";
// How often the dispatcher recounts every queue (messages written by the CLI or another process)
// and retries a queue that had nothing visible.
constexpr auto kPoll = 1s;
// A function whose workers and queue were full is tried again this much later; the attempt does
// not count.
constexpr auto kThrottleDelay = 1s;
constexpr std::int64_t kMaxBackoffS = 86'400;

std::string queue_name(std::string_view function) { return "async:" + std::string(function); }

std::string dead_letter_key(std::string_view function, std::string_view event_id) {
  return std::string(function) + "/" + std::string(event_id);
}

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

using detail::decode_dead_letter;
using detail::decode_event;
using detail::Event;
using detail::valid_event_id;

Event new_event(Invocation inv) {
  Event e;
  e.id = core::random_hex(16);
  e.inv = std::move(inv);
  e.enqueued_ms = now_ms();
  return e;
}

core::Error queue_full(const config::FunctionConfig& f) {
  return core::Error{ErrorCode::kTooManyRequests, "the asynchronous queue of '" + f.name +
                                                      "' is full (async.max_depth " +
                                                      std::to_string(f.async.max_depth) + ")"};
}

// The event a dead letter is replayed as, and the batch that moves it (atomically).
core::Result<std::pair<Event, store::Batch>> replay_batch(store::Store& store,
                                                          const config::FunctionConfig* f,
                                                          std::string_view function,
                                                          std::string_view event_id) {
  if (f == nullptr || f->runtime == config::FunctionRuntime::kNone) {
    return core::make_error(ErrorCode::kNotFound,
                            "no function '" + std::string(function) + "' with a runtime");
  }
  const std::string key = dead_letter_key(function, event_id);
  auto text = store.get(kDeadLetters, key);
  if (!text) {
    if (text.error().code == ErrorCode::kNotFound) {
      return core::make_error(ErrorCode::kNotFound, "no dead letter '" + std::string(event_id) +
                                                        "' of '" + std::string(function) + "'");
    }
    return tl::unexpected(text.error());
  }
  auto d = decode_dead_letter(*text);
  if (!d || !valid_event_id(d->event_id)) {
    return core::make_error(ErrorCode::kIo, "dead letter '" + key + "' is not a valid record");
  }
  Event e;
  e.id = d->event_id;
  e.inv.function = std::string(function);
  e.inv.payload = std::move(d->payload);
  e.inv.caller = std::move(d->caller);
  e.enqueued_ms = now_ms();
  e.replays = d->replays + 1;
  store::Batch b{store::Delete{std::string(kDeadLetters), key},
                 store::Enqueue{queue_name(function), detail::encode_event(e), {}}};
  return std::make_pair(std::move(e), std::move(b));
}

}  // namespace

core::Result<AcceptedEvent> enqueue_event(store::Store& store, const config::Config& config,
                                          Invocation inv) {
  inv.authorized_at_accept = false;  // this is where it is decided
  const config::FunctionConfig* f = config.find_function(inv.function);
  if (auto no = detail::refuse(f, config.runtime.max_lineage_depth, inv)) {
    return core::make_error(no->code, std::move(no->message));
  }
  auto depth = store.queue_size(queue_name(inv.function));
  if (!depth) {
    return tl::unexpected(depth.error());
  }
  if (*depth >= f->async.max_depth) {
    return tl::unexpected(queue_full(*f));
  }
  Event e = new_event(inv);
  auto r =
      store.write_sync({store::Enqueue{queue_name(inv.function), detail::encode_event(e), {}}});
  if (!r) {
    return tl::unexpected(r.error());
  }
  return AcceptedEvent{e.id, r->enqueued_ids.at(0)};
}

core::Result<std::vector<DeadLetter>> list_dead_letters(store::Store& store,
                                                        std::string_view function,
                                                        std::size_t limit) {
  auto rows = store.scan(kDeadLetters, std::string(function) + "/", limit);
  if (!rows) {
    return tl::unexpected(rows.error());
  }
  std::vector<DeadLetter> out;
  for (const auto& [key, value] : *rows) {
    if (auto d = decode_dead_letter(value)) {
      out.push_back(std::move(*d));
    } else {
      spdlog::warn("dead letter '{}' is not a valid record; skipped", key);
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const DeadLetter& a, const DeadLetter& b) {
    return a.failed_at_ms < b.failed_at_ms;
  });
  return out;
}

core::Result<AcceptedEvent> replay_dead_letter(store::Store& store, const config::Config& config,
                                               std::string_view function,
                                               std::string_view event_id) {
  const config::FunctionConfig* f = config.find_function(function);
  auto prepared = replay_batch(store, f, function, event_id);
  if (!prepared) {
    return tl::unexpected(prepared.error());
  }
  auto depth = store.queue_size(queue_name(function));
  if (!depth) {
    return tl::unexpected(depth.error());
  }
  if (*depth >= f->async.max_depth) {
    return tl::unexpected(queue_full(*f));
  }
  auto r = store.write_sync(std::move(prepared->second));
  if (!r) {
    return tl::unexpected(r.error());
  }
  return AcceptedEvent{prepared->first.id, r->enqueued_ids.at(0)};
}

namespace {

struct FnState {
  std::shared_ptr<const config::FunctionConfig> cfg;  // null once removed from the config
  std::int64_t stored = 0;         // messages of its queue in the store, leased or not
  std::int64_t reserved = 0;       // accepted, write not yet durable
  std::set<std::int64_t> running;  // message ids leased and running in this process
  steady_clock::time_point next_lease{};
  std::multiset<steady_clock::time_point> retries;  // when retries queued here become visible
  std::uint64_t accepted = 0, refused = 0, succeeded = 0, retried = 0, requeued = 0,
                dead_lettered = 0;
};

// How the dispatcher ends one lease.
enum class Outcome : std::uint8_t { kSucceeded, kRetried, kRequeued, kDeadLettered, kDropped };

class AsyncInvokerImpl final : public AsyncInvoker {
 public:
  AsyncInvokerImpl(store::Store& store, Runtime& runtime, const config::Config& config)
      : store_(store), runtime_(runtime) {
    apply(config);
  }

  core::Result<void> start() {
    resync();
    thread_ = std::thread([this] { loop(); });
    return {};
  }

  ~AsyncInvokerImpl() override {
    stop();
    // Invocations started here answer into this object, and their store writes call back into
    // it: wait for all of them.
    std::unique_lock lock(mu_);
    idle_.wait(lock, [this] { return pending_ == 0; });
  }

  void submit(Invocation inv, std::function<void(core::Result<AcceptedEvent>)> done) override {
    inv.authorized_at_accept = false;  // this is where it is decided
    std::optional<core::Error> no;
    {
      std::lock_guard lock(mu_);
      auto it = fns_.find(inv.function);
      const config::FunctionConfig* f = it != fns_.end() ? it->second.cfg.get() : nullptr;
      if (auto r = detail::refuse(f, max_depth_, inv)) {
        no = core::Error{r->code, std::move(r->message)};
      } else if (it->second.stored + it->second.reserved >= f->async.max_depth) {
        no = queue_full(*f);
      }
      if (no && it != fns_.end()) {
        ++it->second.refused;
      } else if (!no) {
        ++it->second.reserved;
        ++pending_;
      }
    }
    if (no) {
      done(tl::unexpected(std::move(*no)));
      return;
    }
    Event e = new_event(std::move(inv));
    const std::string fn = e.inv.function;
    std::string id = e.id;
    store_.write(
        {store::Enqueue{queue_name(fn), detail::encode_event(e), {}}},
        [this, fn, id = std::move(id), done = std::move(done)](core::Result<store::CommitInfo> r) {
          settle(fn, r.has_value());
          if (r) {
            done(AcceptedEvent{id, r->enqueued_ids.at(0)});
          } else {
            done(tl::unexpected(r.error()));
          }
          finish_one();
        });
  }

  core::Result<AcceptedEvent> replay(std::string_view function,
                                     std::string_view event_id) override {
    std::shared_ptr<const config::FunctionConfig> cfg;
    {
      std::lock_guard lock(mu_);
      auto it = fns_.find(function);
      if (it != fns_.end() && it->second.cfg) {
        cfg = it->second.cfg;
        if (it->second.stored + it->second.reserved >= cfg->async.max_depth) {
          ++it->second.refused;
          return tl::unexpected(queue_full(*cfg));
        }
        ++it->second.reserved;
      }
    }
    auto prepared = replay_batch(store_, cfg.get(), function, event_id);
    core::Result<store::CommitInfo> r =
        prepared ? store_.write_sync(std::move(prepared->second))
                 : core::Result<store::CommitInfo>(tl::unexpected(prepared.error()));
    if (cfg) {
      settle(std::string(function), r.has_value());
    }
    if (!r) {
      return tl::unexpected(r.error());
    }
    return AcceptedEvent{prepared->first.id, r->enqueued_ids.at(0)};
  }

  void update(const config::Config& config) override {
    {
      std::lock_guard lock(mu_);
      apply(config);
      kicked_ = true;
    }
    wake_.notify_all();
  }

  std::string metrics_text() const override {
    std::lock_guard lock(mu_);
    std::string out =
        "# HELP gatehouse_async_events_total Asynchronous events by what became of them.\n"
        "# TYPE gatehouse_async_events_total counter\n";
    for (const auto& [name, st] : fns_) {
      const std::pair<std::string_view, std::uint64_t> rows[] = {
          {"accepted", st.accepted},   {"refused", st.refused},
          {"succeeded", st.succeeded}, {"retried", st.retried},
          {"requeued", st.requeued},   {"dead_lettered", st.dead_lettered}};
      for (const auto& [result, v] : rows) {
        out += "gatehouse_async_events_total{function=\"" + name + "\",result=\"" +
               std::string(result) + "\"} " + std::to_string(v) + "\n";
      }
    }
    out += "# TYPE gatehouse_async_queue_depth gauge\n";
    for (const auto& [name, st] : fns_) {
      out += "gatehouse_async_queue_depth{function=\"" + name + "\"} " + std::to_string(st.stored) +
             "\n";
    }
    return out;
  }

  void stop() override {
    {
      std::lock_guard lock(mu_);
      if (stopping_) {
        return;
      }
      stopping_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) {
      thread_.join();
    }
  }

 private:
  // An accepted event's write is over: it is in the queue (durable) or it was never written.
  void settle(const std::string& function, bool durable) {
    {
      std::lock_guard lock(mu_);
      FnState& st = fns_[function];
      --st.reserved;
      if (durable) {
        ++st.stored;
        ++st.accepted;
        st.next_lease = steady_clock::time_point{};
        kicked_ = true;
      }
    }
    wake_.notify_all();
  }

  // mu_ held.
  void apply(const config::Config& config) {
    max_depth_ = config.runtime.max_lineage_depth;
    for (auto& [name, st] : fns_) {
      st.cfg.reset();  // entries are never erased: the dispatcher holds references across leases
    }
    for (const auto& f : config.functions) {
      if (f.runtime != config::FunctionRuntime::kNone) {
        fns_[f.name].cfg = std::make_shared<config::FunctionConfig>(f);
      }
    }
  }

  // Recounts every function's queue from the store (messages another process wrote).
  void resync() {
    std::vector<std::string> names;
    {
      std::lock_guard lock(mu_);
      for (const auto& [name, st] : fns_) {
        if (st.cfg) {
          names.push_back(name);
        }
      }
    }
    for (const std::string& name : names) {
      auto n = store_.queue_size(queue_name(name));
      if (!n) {
        spdlog::error("async: cannot count the queue of {}: {}", name, n.error().message);
        continue;
      }
      std::lock_guard lock(mu_);
      FnState& st = fns_[name];
      if (st.stored != *n) {
        st.stored = *n;
        kicked_ = true;
      }
    }
  }

  // Longer than a leased event can take here: waiting for a worker (timeout_s), its start
  // (init_timeout_s) and its run (timeout_s). After a crash, the event runs again this much later.
  static std::chrono::milliseconds lease_time(const config::FunctionConfig& f) {
    return std::chrono::seconds(2 * std::int64_t{f.timeout_s} + f.init_timeout_s + 5);
  }

  struct Job {
    std::string function;
    std::shared_ptr<const config::FunctionConfig> cfg;
    std::size_t slots = 0;
  };

  void loop() {
    auto next_resync = steady_clock::now() + kPoll;
    for (;;) {
      std::vector<Job> jobs;
      {
        std::unique_lock lock(mu_);
        if (!kicked_ && !stopping_) {
          auto wake = next_resync;
          for (const auto& [name, st] : fns_) {
            if (eligible(st)) {
              wake = std::min(wake, st.next_lease);
            }
          }
          wake_.wait_until(lock, wake, [this] { return kicked_ || stopping_; });
        }
        kicked_ = false;
        if (stopping_) {
          return;
        }
        if (steady_clock::now() >= next_resync) {
          lock.unlock();
          resync();
          lock.lock();
          next_resync = steady_clock::now() + kPoll;
        }
        const auto now = steady_clock::now();
        for (auto& [name, st] : fns_) {
          if (eligible(st) && now >= st.next_lease) {
            jobs.push_back(Job{name, st.cfg, st.cfg->reserved_concurrency - st.running.size()});
          }
        }
      }
      for (const Job& job : jobs) {
        lease(job);
      }
    }
  }

  // mu_ held. Has messages not running here, and a free slot.
  static bool eligible(const FnState& st) {
    return st.cfg && st.stored > static_cast<std::int64_t>(st.running.size()) &&
           st.running.size() < st.cfg->reserved_concurrency;
  }

  void lease(const Job& job) {
    auto msgs = store_.lease(queue_name(job.function), job.slots, lease_time(*job.cfg));
    std::vector<store::QueueMessage> fresh;
    {
      std::lock_guard lock(mu_);
      FnState& st = fns_[job.function];
      const auto now = steady_clock::now();
      if (!msgs) {
        spdlog::error("async: cannot lease from the queue of {}: {}", job.function,
                      msgs.error().message);
        st.next_lease = now + kPoll;
        return;
      }
      // Nothing more visible now (waiting for a back-off, or leased elsewhere): look again at
      // the next poll, or sooner when this process queues or retries something.
      st.retries.erase(st.retries.begin(), st.retries.upper_bound(now));
      st.next_lease = msgs->size() < job.slots ? now + kPoll : now;
      if (!st.retries.empty()) {
        st.next_lease = std::min(st.next_lease, *st.retries.begin());
      }
      for (auto& m : *msgs) {
        // Leased again while still running here (its lease ran out): the new lease covers it.
        if (st.running.insert(m.id).second) {
          ++pending_;
          fresh.push_back(std::move(m));
        }
      }
    }
    for (auto& m : fresh) {
      run(job.function, job.cfg, std::move(m));
    }
  }

  void run(const std::string& function, const std::shared_ptr<const config::FunctionConfig>& cfg,
           store::QueueMessage m) {
    auto ev = decode_event(m.payload, function);
    if (!ev) {
      spdlog::error("async: message {} of {} is not a valid event; dropped", m.id, function);
      end(function, m.id, {store::Ack{queue_name(function), m.id}}, Outcome::kDropped, {});
      return;
    }
    const std::uint32_t attempt = ev->attempts + std::max<std::uint32_t>(1, m.attempts);
    if (now_ms() - ev->enqueued_ms > std::int64_t{cfg->async.max_age_s} * 1000) {
      dead_letter(function, m.id, std::move(*ev), attempt - 1, "EventAgeExceeded");
      return;
    }
    if (attempt > cfg->async.max_retries + 1) {
      // Every remaining attempt was handed to a process that died before answering.
      ev->last_error_type = "Runtime.Interrupted";
      ev->last_error_message = "the server running the event stopped before it finished";
      dead_letter(function, m.id, std::move(*ev), attempt - 1, "RetriesExhausted");
      return;
    }
    Invocation inv = ev->inv;
    inv.authorized_at_accept = true;  // decided by submit() / enqueue_event() with its policies
    runtime_.invoke(std::move(inv), [this, function, cfg, id = m.id, ev = std::move(*ev),
                                     attempt](InvokeResult r) mutable {
      on_result(function, *cfg, id, std::move(ev), attempt, std::move(r));
    });
  }

  void on_result(const std::string& function, const config::FunctionConfig& cfg, std::int64_t id,
                 Event ev, std::uint32_t attempt, InvokeResult r) {
    if (r.ok) {
      end(function, id, {store::Ack{queue_name(function), id}}, Outcome::kSucceeded, {});
      return;
    }
    if (r.code == ErrorCode::kConcurrencyLimit || r.code == ErrorCode::kUnavailable) {
      // Not the function's fault (its workers were full, or we are stopping): this attempt
      // does not count.
      ev.attempts = attempt - 1;
      const auto delay = r.code == ErrorCode::kConcurrencyLimit
                             ? std::chrono::milliseconds(kThrottleDelay)
                             : std::chrono::milliseconds(0);
      requeue(function, id, std::move(ev), delay, Outcome::kRequeued);
      return;
    }
    ev.last_error_type = r.error_type;
    ev.last_error_message = r.message;
    if (r.code != ErrorCode::kFunctionError && r.code != ErrorCode::kFunctionTimedOut) {
      dead_letter(function, id, std::move(ev), attempt, "NotRetryable");
      return;
    }
    if (attempt > cfg.async.max_retries) {
      dead_letter(function, id, std::move(ev), attempt, "RetriesExhausted");
      return;
    }
    const std::int64_t backoff_s =
        std::min<std::int64_t>(kMaxBackoffS, std::int64_t{cfg.async.backoff_s}
                                                 << std::min<std::uint32_t>(attempt - 1, 20));
    if (now_ms() + backoff_s * 1000 - ev.enqueued_ms > std::int64_t{cfg.async.max_age_s} * 1000) {
      dead_letter(function, id, std::move(ev), attempt, "EventAgeExceeded");
      return;
    }
    ev.attempts = attempt;
    requeue(function, id, std::move(ev), std::chrono::seconds(backoff_s), Outcome::kRetried);
  }

  void requeue(const std::string& function, std::int64_t id, Event ev,
               std::chrono::milliseconds delay, Outcome outcome) {
    const auto not_before = std::chrono::system_clock::now() + delay;
    end(function, id,
        {store::Ack{queue_name(function), id},
         store::Enqueue{queue_name(function), detail::encode_event(ev), not_before}},
        outcome, steady_clock::now() + delay);
  }

  void dead_letter(const std::string& function, std::int64_t id, Event ev, std::uint32_t attempts,
                   std::string_view reason) {
    DeadLetter d;
    d.event_id = ev.id;
    d.function = function;
    d.payload = std::move(ev.inv.payload);
    d.caller = std::move(ev.inv.caller);
    d.reason = std::string(reason);
    d.error_type = ev.last_error_type.empty() ? d.reason : std::move(ev.last_error_type);
    d.error_message = std::move(ev.last_error_message);
    d.attempts = attempts;
    d.replays = ev.replays;
    d.enqueued_at_ms = ev.enqueued_ms;
    d.failed_at_ms = now_ms();
    spdlog::warn("async: event {} of {} dead-lettered after {} attempt(s): {} ({}: {})", d.event_id,
                 function, attempts, d.reason, d.error_type, d.error_message);
    end(function, id,
        {store::Ack{queue_name(function), id},
         store::Put{std::string(kDeadLetters), dead_letter_key(function, d.event_id),
                    dead_letter_json(d)}},
        Outcome::kDeadLettered, {});
  }

  // Writes the batch that ends lease `id`; the message stops running here once it is durable.
  // If the write fails the lease simply expires and the event runs again.
  void end(const std::string& function, std::int64_t id, store::Batch batch, Outcome outcome,
           std::optional<steady_clock::time_point> retry_at) {
    const bool enqueues = batch.size() > 1 && std::holds_alternative<store::Enqueue>(batch[1]);
    store_.write(std::move(batch), [this, function, id, outcome, enqueues,
                                    retry_at](core::Result<store::CommitInfo> r) {
      {
        std::lock_guard lock(mu_);
        FnState& st = fns_[function];
        st.running.erase(id);
        if (!r) {
          spdlog::error("async: cannot record the outcome of message {} of {}: {}", id, function,
                        r.error().message);
        } else {
          st.stored += enqueues ? 0 : -1;
          switch (outcome) {
            case Outcome::kSucceeded:
              ++st.succeeded;
              break;
            case Outcome::kRetried:
              ++st.retried;
              break;
            case Outcome::kRequeued:
              ++st.requeued;
              break;
            case Outcome::kDeadLettered:
              ++st.dead_lettered;
              break;
            case Outcome::kDropped:
              break;
          }
          if (retry_at) {
            st.retries.insert(*retry_at);
            st.next_lease = std::min(st.next_lease, *retry_at);
          }
        }
        kicked_ = true;  // a slot came free
      }
      wake_.notify_all();
      finish_one();
    });
  }

  void finish_one() {
    {
      std::lock_guard lock(mu_);
      --pending_;
    }
    idle_.notify_all();
  }

  store::Store& store_;
  Runtime& runtime_;
  mutable std::mutex mu_;
  std::condition_variable wake_;  // the dispatcher: kicked_ or stopping_
  std::condition_variable idle_;  // the destructor: pending_ == 0
  // GUARDED_BY(mu_): everything below but thread_.
  std::map<std::string, FnState, std::less<>> fns_;
  std::uint32_t max_depth_ = 16;
  std::uint64_t pending_ = 0;  // submits being written, leased events not yet recorded
  bool kicked_ = false;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace

core::Result<std::unique_ptr<AsyncInvoker>> AsyncInvoker::create(store::Store& store,
                                                                 Runtime& runtime,
                                                                 const config::Config& config) {
  try {
    auto impl = std::make_unique<AsyncInvokerImpl>(store, runtime, config);
    if (auto r = impl->start(); !r) {
      return tl::unexpected(r.error());
    }
    return std::unique_ptr<AsyncInvoker>(std::move(impl));
  } catch (const std::exception& e) {
    return core::make_error(ErrorCode::kInternal, std::string("async dispatcher: ") + e.what());
  }
}

}  // namespace gatehouse::runtime
