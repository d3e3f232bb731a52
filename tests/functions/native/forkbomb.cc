// Hostile: forks children that stay alive until fork fails, then reports how far it got. The
// pid limit (cgroup pids.max, or RLIMIT_NPROC) must stop it early.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "gatehouse_lambda.h"

int main() {
  return gatehouse::lambda::run([](const gatehouse::lambda::Invocation&) {
    int forked = 0;
    int err = 0;
    while (forked < 100000) {
      const pid_t pid = ::fork();
      if (pid < 0) {
        err = errno;
        break;
      }
      if (pid == 0) {
        // Each child tries to multiply too, then waits to be killed.
        (void)::fork();
        for (;;) {
          ::pause();
        }
      }
      ++forked;
    }
    return gatehouse::lambda::Result::success("{\"forked\":" + std::to_string(forked) +
                                              ",\"error\":\"" + std::strerror(err) + "\"}");
  });
}
