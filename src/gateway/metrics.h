#pragma once
// Private to the gateway: request metrics sharded per worker. Each worker writes only its own
// shard (plain relaxed load+store on atomics, no contention); the exposition sums the shards on
// the control thread or an admin request. Route names map to stable slots that survive reloads.

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace gatehouse::gateway {

class Metrics {
 public:
  static constexpr std::size_t kMaxRouteSlots = 4096;
  static constexpr std::size_t kMaxCodes = 128;
  static constexpr std::array<double, 16> kBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                      0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                                      1,      2.5,     5,      10};
  // Slot 0 counts requests that matched no route.
  static constexpr std::uint32_t kNoRoute = 0;

  explicit Metrics(unsigned workers);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Control thread: the slot for a route name (stable across reloads).
  std::uint32_t slot_for(const std::string& route_name);

  // Worker thread `w` only.
  void record(unsigned w, std::uint32_t slot, int status, std::uint64_t duration_ns);
  // `code` must have static storage duration (the table keeps the view).
  void refusal(unsigned w, std::string_view code);

  // Any thread: Prometheus text for the request metrics.
  void render(std::string& out) const;

 private:
  struct RouteCounters {
    std::array<std::atomic<std::uint64_t>, 500> by_status{};  // status 100..599
  };
  struct CodeCell {
    std::atomic<const char*> name{nullptr};
    std::atomic<std::size_t> len{0};
    std::atomic<std::uint64_t> count{0};
  };
  struct alignas(64) Shard {
    std::array<std::atomic<RouteCounters*>, kMaxRouteSlots> routes{};
    std::array<std::atomic<std::uint64_t>, kBuckets.size() + 1> buckets{};
    std::atomic<std::uint64_t> duration_ns_sum{0};
    std::array<CodeCell, kMaxCodes> codes{};
  };

  std::vector<std::unique_ptr<Shard>> shards_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::uint32_t> slots_;  // guarded by mu_
  std::vector<std::string> names_;                        // guarded by mu_
};

}  // namespace gatehouse::gateway
