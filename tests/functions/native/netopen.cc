// Hostile: opens a TCP connection to {"host": "...", "port": N} from its event and reports
// whether it got through. With sandbox.network none it must not.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "gatehouse_lambda.h"

namespace {
std::string field(const std::string& json, const std::string& key) {
  const auto k = json.find("\"" + key + "\"");
  if (k == std::string::npos) {
    return {};
  }
  auto v = json.find(':', k) + 1;
  while (v < json.size() && (json[v] == ' ' || json[v] == '"')) {
    ++v;
  }
  auto e = v;
  while (e < json.size() && json[e] != '"' && json[e] != ',' && json[e] != '}') {
    ++e;
  }
  return json.substr(v, e - v);
}
}  // namespace

int main() {
  return gatehouse::lambda::run([](const gatehouse::lambda::Invocation& inv) {
    const std::string host = field(inv.payload, "host");
    const int port = std::atoi(field(inv.payload, "port").c_str());
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    ::inet_pton(AF_INET, host.c_str(), &a.sin_addr);
    const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    const int err = errno;
    ::close(fd);
    return gatehouse::lambda::Result::success(
        std::string("{\"connected\":") + (ok ? "true" : "false") + ",\"error\":\"" +
        (ok ? "" : std::strerror(err)) + "\"}");
  });
}
