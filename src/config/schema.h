#pragma once
// Private to the config module: the schema of gatehouse.yaml (schema.cc declares every key, its
// type, bounds and format; defaults are the member initialisers in config.h) and the walker that
// checks a parsed document against it. Not thread-safe; one walk per thread.

#include <yaml-cpp/yaml.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"

namespace gatehouse::config::detail {

// 1-based line and column; {0, 0} when unknown.
struct Position {
  int line = 0;
  int column = 0;
};

[[nodiscard]] Position position_of(const YAML::Node& node);

// Collects errors, at most kMaxErrors; the walk stops once it is full (a file with thousands
// of mistakes needs its first ones fixed, and the list must stay small).
class Diagnostics {
 public:
  static constexpr std::size_t kMaxErrors = 500;

  // Records "path: message" (just "message" when `path` is empty) at `pos`.
  void add(Position pos, std::string_view path, std::string_view message);
  [[nodiscard]] bool full() const noexcept { return errors_.size() >= kMaxErrors; }
  [[nodiscard]] bool empty() const noexcept { return errors_.empty(); }
  // The errors sorted by line, then column (stable), with `file` set; when it filled up, a last
  // entry says that checking stopped (at the position of the last error, so the order holds).
  [[nodiscard]] std::vector<ConfigError> take(const std::string& file) &&;

 private:
  std::vector<ConfigError> errors_;
  bool dropped_ = false;
};

// What a walk produces.
struct Decoded {
  Config config;
  Diagnostics diagnostics;
  // Where each value that was walked sits, by path ("routes[1].target.http.upstream",
  // "routes[1]"), for the cross-field checks in config.cc.
  std::map<std::string, Position, std::less<>> positions;

  [[nodiscard]] Position position(std::string_view path) const;
};

// Walks `root` (a mapping, or null for an empty document) against the schema and fills `out`:
// unknown and duplicate keys, types, bounds, formats and missing required keys are reported;
// a value that fails keeps its default. Cross-field checks (references, duplicate names) are
// left to the caller. Stops early after Diagnostics::kMaxErrors errors or when aliases expand
// the document past kMaxExpandedBytes. Throws only what yaml-cpp or the allocator throw.
void decode(const YAML::Node& root, Decoded& out);

// Aliases let a small document name a large value many times; the walk stops once it has
// copied this many bytes of scalars (plus a fixed cost per node).
inline constexpr std::size_t kMaxExpandedBytes = std::size_t{64} * 1024 * 1024;

// One key of the schema, for documentation and tests.
struct KeyInfo {
  std::string path;           // "limits.max_header_bytes", "routes[].target.http.upstream"
  std::string_view type;      // "integer", "size", "duration", "string", "boolean", ...
  std::string bounds;         // "1024..1048576", "100ms..10m", "at most 64 items", or ""
  std::string default_value;  // as it would be written in YAML; "" when none or not simple
  bool required = false;
};
[[nodiscard]] std::vector<KeyInfo> schema_keys();

}  // namespace gatehouse::config::detail
