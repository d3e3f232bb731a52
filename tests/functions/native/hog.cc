// Hostile: allocates and touches memory until something stops it. With a memory cgroup the OOM
// killer ends it; with RLIMIT_DATA malloc fails and it reports that.
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gatehouse_lambda.h"

int main() {
  return gatehouse::lambda::run([](const gatehouse::lambda::Invocation&) {
    std::vector<char*> blocks;
    std::size_t total = 0;
    for (;;) {
      constexpr std::size_t kBlock = 4 * 1024 * 1024;
      char* p = static_cast<char*>(std::malloc(kBlock));
      if (p == nullptr) {
        return gatehouse::lambda::Result::failure(
            "MallocFailed", "malloc failed after " + std::to_string(total >> 20) + " MiB");
      }
      std::memset(p, 0x5a, kBlock);
      blocks.push_back(p);
      total += kBlock;
      if (total > (std::size_t{8} << 30)) {
        return gatehouse::lambda::Result::success("{\"unbounded\":true}");
      }
    }
  });
}
