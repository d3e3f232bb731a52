// Store write throughput with group commit: a SQLite file with synchronous=FULL (an fsync per
// group commit), single-op batches. Set GH_BENCH_DIR to put the database on the disk you care
// about (default: the system temp directory).
//
//   BM_WriteSync/delay_ms:D/threads:T  T threads each waiting for their own write (write_sync);
//                                      D = Options::max_batch_delay.
//   BM_WriteAsync/window:W             one thread keeping W writes in flight (write + callback).

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <semaphore>
#include <string>

#include "core/core.h"
#include "store/store.h"

namespace {

using namespace gatehouse;
namespace fs = std::filesystem;

// Opened by Setup before the benchmark's threads start and closed by Teardown after they join.
std::unique_ptr<store::Store> g_store;
fs::path g_path;

fs::path bench_dir() {
  const char* dir = std::getenv("GH_BENCH_DIR");
  return dir != nullptr ? fs::path(dir) : fs::temp_directory_path();
}

void remove_db() {
  std::error_code ec;
  for (const char* suffix : {"", "-wal", "-shm"}) {
    fs::remove(g_path.string() + suffix, ec);
  }
}

void open_store(std::chrono::milliseconds delay) {
  std::string name = "gh_store_bench_";
  name += std::to_string(getpid());
  name += ".db";
  g_path = bench_dir() / name;
  remove_db();
  store::Options options;
  options.synchronous_full = true;
  options.max_batch_delay = delay;
  auto s = store::open("sqlite://" + g_path.string(), core::system_clock(), options);
  if (!s) {
    std::fprintf(stderr, "store_bench: %s\n", s.error().message.c_str());
    std::abort();
  }
  g_store = std::move(*s);
}

void setup_delay_arg(const benchmark::State& state) {
  open_store(std::chrono::milliseconds(state.range(0)));
}
void setup_default(const benchmark::State&) { open_store(store::Options{}.max_batch_delay); }
void teardown(const benchmark::State&) {
  g_store.reset();
  remove_db();
}

void BM_WriteSync(benchmark::State& state) {
  const std::string value(100, 'v');
  const std::string prefix = std::to_string(state.thread_index()) + ":";
  std::uint64_t n = 0;
  for (auto _ : state) {
    auto r = g_store->write_sync({store::Put{"bench", prefix + std::to_string(n++), value}});
    if (!r) {
      state.SkipWithError(r.error().message.c_str());
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_WriteSync)
    ->Setup(setup_delay_arg)
    ->Teardown(teardown)
    ->ArgName("delay_ms")
    ->Arg(2)
    ->Arg(0)
    ->Threads(1)
    ->Threads(4)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

void BM_WriteAsync(benchmark::State& state) {
  const auto window = static_cast<std::ptrdiff_t>(state.range(0));
  std::counting_semaphore<1 << 20> slots(window);
  std::atomic<std::int64_t> failures{0};
  const std::string value(100, 'v');
  std::uint64_t n = 0;
  for (auto _ : state) {
    slots.acquire();
    g_store->write({store::Put{"bench", std::string("a:").append(std::to_string(n++)), value}},
                   [&](const core::Result<store::CommitInfo>& r) {
                     if (!r) {
                       failures.fetch_add(1);
                     }
                     slots.release();
                   });
  }
  for (std::ptrdiff_t i = 0; i < window; ++i) {  // wait for the writes still in flight
    slots.acquire();
  }
  if (failures.load() != 0) {
    state.SkipWithError("writes failed");
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_WriteAsync)
    ->Setup(setup_default)
    ->Teardown(teardown)
    ->ArgName("window")
    ->Arg(64)
    ->Arg(1024)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
