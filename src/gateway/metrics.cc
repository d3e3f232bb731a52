#include "gateway/metrics.h"

#include <cstdio>
#include <map>

namespace gatehouse::gateway {

namespace {

void bump(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) {
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

void escape_label(std::string& out, std::string_view v) {
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
}

}  // namespace

Metrics::Metrics(unsigned workers) {
  for (unsigned i = 0; i < workers; ++i) {
    shards_.push_back(std::make_unique<Shard>());
  }
  names_.emplace_back("(none)");
  slots_.emplace("(none)", kNoRoute);
}

Metrics::~Metrics() {
  for (auto& s : shards_) {
    for (auto& r : s->routes) {
      std::unique_ptr<RouteCounters> owned(r.load());
    }
  }
}

std::uint32_t Metrics::slot_for(const std::string& route_name) {
  std::lock_guard lock(mu_);
  auto it = slots_.find(route_name);
  if (it != slots_.end()) {
    return it->second;
  }
  if (names_.size() >= kMaxRouteSlots) {
    return kNoRoute;  // beyond 4096 distinct route names ever: counted under "(none)"
  }
  const auto slot = static_cast<std::uint32_t>(names_.size());
  names_.push_back(route_name);
  slots_.emplace(route_name, slot);
  return slot;
}

void Metrics::record(unsigned w, std::uint32_t slot, int status, std::uint64_t duration_ns) {
  Shard& s = *shards_[w];
  RouteCounters* rc = s.routes[slot].load(std::memory_order_relaxed);
  if (rc == nullptr) {
    rc = new RouteCounters();  // NOLINT(cppcoreguidelines-owning-memory): owned by the shard
    s.routes[slot].store(rc, std::memory_order_release);
  }
  if (status >= 100 && status <= 599) {
    bump(rc->by_status[static_cast<std::size_t>(status - 100)]);
  }
  const double secs = static_cast<double>(duration_ns) * 1e-9;
  std::size_t b = 0;
  while (b < kBuckets.size() && secs > kBuckets[b]) {
    ++b;
  }
  bump(s.buckets[b]);
  bump(s.duration_ns_sum, duration_ns);
}

void Metrics::refusal(unsigned w, std::string_view code) {
  Shard& s = *shards_[w];
  for (auto& cell : s.codes) {
    const char* name = cell.name.load(std::memory_order_relaxed);
    if (name == nullptr) {
      cell.len.store(code.size(), std::memory_order_relaxed);
      cell.name.store(code.data(), std::memory_order_release);
      bump(cell.count);
      return;
    }
    if (name == code.data() || (cell.len.load(std::memory_order_relaxed) == code.size() &&
                                std::string_view(name, code.size()) == code)) {
      bump(cell.count);
      return;
    }
  }
}

void Metrics::render(std::string& out) const {
  std::vector<std::string> names;
  {
    std::lock_guard lock(mu_);
    names = names_;
  }
  out += "# HELP gatehouse_requests_total Requests answered, by route and status.\n";
  out += "# TYPE gatehouse_requests_total counter\n";
  for (std::size_t slot = 0; slot < names.size(); ++slot) {
    std::array<std::uint64_t, 500> sum{};
    bool any = false;
    for (const auto& s : shards_) {
      const RouteCounters* rc = s->routes[slot].load(std::memory_order_acquire);
      if (rc == nullptr) {
        continue;
      }
      any = true;
      for (std::size_t i = 0; i < sum.size(); ++i) {
        sum[i] += rc->by_status[i].load(std::memory_order_relaxed);
      }
    }
    if (!any) {
      continue;
    }
    for (std::size_t i = 0; i < sum.size(); ++i) {
      if (sum[i] == 0) {
        continue;
      }
      out += "gatehouse_requests_total{route=\"";
      escape_label(out, names[slot]);
      out += "\",status=\"" + std::to_string(i + 100) + "\"} " + std::to_string(sum[i]) + "\n";
    }
  }

  std::array<std::uint64_t, kBuckets.size() + 1> buckets{};
  std::uint64_t sum_ns = 0;
  std::map<std::string, std::uint64_t> codes;
  for (const auto& s : shards_) {
    for (std::size_t i = 0; i < buckets.size(); ++i) {
      buckets[i] += s->buckets[i].load(std::memory_order_relaxed);
    }
    sum_ns += s->duration_ns_sum.load(std::memory_order_relaxed);
    for (const auto& cell : s->codes) {
      const char* name = cell.name.load(std::memory_order_acquire);
      if (name == nullptr) {
        break;
      }
      codes[std::string(name, cell.len.load(std::memory_order_relaxed))] +=
          cell.count.load(std::memory_order_relaxed);
    }
  }
  out +=
      "# HELP gatehouse_request_duration_seconds Time from complete headers to response queued.\n";
  out += "# TYPE gatehouse_request_duration_seconds histogram\n";
  std::uint64_t cumulative = 0;
  char num[64];
  for (std::size_t i = 0; i < kBuckets.size(); ++i) {
    cumulative += buckets[i];
    std::snprintf(num, sizeof num, "%g", kBuckets[i]);
    out += "gatehouse_request_duration_seconds_bucket{le=\"" + std::string(num) + "\"} " +
           std::to_string(cumulative) + "\n";
  }
  cumulative += buckets[kBuckets.size()];
  out +=
      "gatehouse_request_duration_seconds_bucket{le=\"+Inf\"} " + std::to_string(cumulative) + "\n";
  std::snprintf(num, sizeof num, "%.9f", static_cast<double>(sum_ns) * 1e-9);
  out += "gatehouse_request_duration_seconds_sum " + std::string(num) + "\n";
  out += "gatehouse_request_duration_seconds_count " + std::to_string(cumulative) + "\n";

  out += "# HELP gatehouse_refusals_total Requests refused by a gateway stage, by error code.\n";
  out += "# TYPE gatehouse_refusals_total counter\n";
  for (const auto& [code, n] : codes) {
    out += "gatehouse_refusals_total{code=\"";
    escape_label(out, code);
    out += "\"} " + std::to_string(n) + "\n";
  }
}

}  // namespace gatehouse::gateway
