// libFuzzer target for the config loader: any bytes must give a Config or a list of errors,
// never a crash, a hang or an exception. Seeds: tests/fuzz/corpus/config/.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "config/config.h"

namespace {

using gatehouse::config::Config;
using gatehouse::config::ConfigError;
using gatehouse::config::Target;

// A config that loads is internally consistent: names resolve and defaults are filled in.
void check_config(const Config& config) {
  for (const auto& route : config.routes) {
    if (route.name.empty() || route.methods.empty() || route.path.empty() || route.path[0] != '/' ||
        route.line <= 0) {
      __builtin_trap();
    }
    if (route.target.kind == Target::Kind::kHttp &&
        config.find_upstream(route.target.http.upstream) == nullptr) {
      __builtin_trap();
    }
  }
}

// Errors are non-empty, positioned (0 = unknown, else 1-based) and sorted by line, then column.
void check_errors(const std::vector<ConfigError>& errors) {
  if (errors.empty()) {
    __builtin_trap();
  }
  int last_line = 0;
  int last_column = 0;
  for (const auto& e : errors) {
    if (e.line < 0 || e.column < 0 || e.message.empty() || e.file != "fuzz.yaml") {
      __builtin_trap();
    }
    if (e.line < last_line || (e.line == last_line && e.column < last_column)) {
      __builtin_trap();
    }
    last_line = e.line;
    last_column = e.column;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto result = gatehouse::config::load_string(text, "fuzz.yaml");
  if (result) {
    check_config(*result);
  } else {
    check_errors(result.error());
  }
  return 0;
}
