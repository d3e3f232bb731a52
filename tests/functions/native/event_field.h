#pragma once
// The value of "key" in a flat JSON event of the test functions ({"host": "...", "port": N}),
// as text; "" when absent. Test functions only: no escapes, no nesting.
#include <string>

inline std::string event_field(const std::string& json, const std::string& key) {
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
