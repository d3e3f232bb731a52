// Matches fuzzer-chosen methods and paths against a fixed route table with stages, params and
// greedy segments; checks every captured parameter is a view inside the request path.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "http/http.h"

namespace {

const gatehouse::http::Router& router() {
  static const auto r = [] {
    using gatehouse::http::RouteSpec;
    std::vector<RouteSpec> specs = {
        {{"GET"}, "/", {}},
        {{"GET", "POST"}, "/items", {}},
        {{"GET"}, "/items/{id}", {}},
        {{"GET"}, "/items/new", {}},
        {{"PUT"}, "/items/{id}/tags/{tag}", {"prod"}},
        {{"ANY"}, "/files/{path+}", {}},
        {{"DELETE"}, "/a/{b}/c/{d+}", {"dev"}},
    };
    auto built = gatehouse::http::Router::build(specs, {"prod", "dev"});
    if (!built) {
      std::abort();
    }
    return std::move(*built);
  }();
  return *r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const auto sep = input.find(' ');
  const std::string method = sep == std::string::npos ? "GET" : input.substr(0, sep);
  const std::string path = sep == std::string::npos ? input : input.substr(sep + 1);
  gatehouse::http::Match m;
  router().match(method, path, m);
  for (std::size_t i = 0; i < m.param_count; ++i) {
    const auto& v = m.params[i].value;
    if (v.data() < path.data() || v.data() + v.size() > path.data() + path.size()) {
      std::abort();
    }
  }
  return 0;
}
