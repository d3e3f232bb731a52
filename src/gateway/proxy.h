#pragma once
// Private to the gateway: the `http` target, a reverse proxy with a keep-alive connection pool
// per worker and upstream, a connect timeout and a whole-response timeout (checked by one sweep
// timer per worker).

#include <boost/asio/ip/tcp.hpp>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "http/http.h"

namespace gatehouse::gateway {

struct UpstreamTarget {
  const config::Upstream* upstream = nullptr;  // owned by the snapshot's Config
  boost::asio::ip::tcp::endpoint endpoint;     // resolved when the snapshot is built
  std::string host_header;                     // "host:port"
  std::string pool_key;      // "name@host:port": a reload that moves the upstream uses a new pool
  std::string strip_header;  // a request header not forwarded (the API-key header unless
                             // api_keys.forward); "" = none
};

class Proxy {
 public:
  explicit Proxy(unsigned workers);
  ~Proxy();
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  // Worker thread of `ex`. Sends the request to `target` with path `path` (already rewritten,
  // query appended by the caller), then writes the response (or a 502/504 JSON error) into
  // ex.out(), sets its status and calls ex.resume(). The caller returns Step::kPending.
  void forward(http::Exchange& ex, const UpstreamTarget& target, std::string path);
  // Worker thread `worker`: closes its idle connections (after a reload, so upstreams that moved
  // or were removed are not used again).
  void clear(unsigned worker);
  // Worker `worker`, after its loop stopped: drops idle connections and the deadline timer
  // (before the worker's io_context goes).
  void shutdown(unsigned worker);

  struct Pool;

 private:
  std::vector<std::unique_ptr<Pool>> pools_;  // one per worker, used only on that worker
};

}  // namespace gatehouse::gateway
