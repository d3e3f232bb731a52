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

#include "event_field.h"
#include "gatehouse_lambda.h"

int main() {
  return gatehouse::lambda::run([](const gatehouse::lambda::Invocation& inv) {
    const std::string host = event_field(inv.payload, "host");
    const int port = std::atoi(event_field(inv.payload, "port").c_str());
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
