#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/core.h"
#include "http/http.h"

// Counts allocations so a test can prove match() does not allocate on its hot paths. This is the
// replaceable global allocator, so it must traffic in raw malloc/free pointers.
namespace {
std::atomic<std::uint64_t> g_allocations{0};
}  // namespace

// NOLINTBEGIN(cppcoreguidelines-owning-memory)
// GCC 12 inlines the replaced operators and then flags malloc/free as mismatched with new/delete.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) {
    return p;
  }
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t /*n*/) noexcept { std::free(p); }
// NOLINTEND(cppcoreguidelines-owning-memory)

namespace gatehouse::http {
namespace {

using Params = std::vector<std::pair<std::string, std::string>>;

std::unique_ptr<Router> must_build(const std::vector<RouteSpec>& routes,
                                   const std::vector<std::string>& stages = {}) {
  auto r = Router::build(routes, stages);
  EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
  if (!r) {
    return nullptr;
  }
  return std::move(*r);
}

struct Case {
  std::string method;
  std::string path;
  MatchStatus status;
  int route = -1;  // for kFound
  Params params = {};
  std::string allow = {};  // for kMethodNotAllowed
  std::string stage = {};
};

std::string status_name(MatchStatus s) {
  switch (s) {
    case MatchStatus::kFound:
      return "found";
    case MatchStatus::kNotFound:
      return "not-found";
    case MatchStatus::kMethodNotAllowed:
      return "method-not-allowed";
  }
  return "?";
}

void expect_match(const Router& router, const Case& c) {
  SCOPED_TRACE(c.method + " " + c.path);
  Match m;
  // Stale state from a previous match must not leak into this one.
  m.param_count = 3;
  m.allow = "stale";
  m.route = 99;
  router.match(c.method, c.path, m);
  ASSERT_EQ(status_name(m.status), status_name(c.status));
  EXPECT_EQ(m.stage, c.stage);
  if (c.status == MatchStatus::kFound) {
    EXPECT_EQ(static_cast<int>(m.route), c.route);
    ASSERT_EQ(m.param_count, c.params.size());
    for (std::size_t i = 0; i < c.params.size(); ++i) {
      EXPECT_EQ(m.params[i].name, c.params[i].first);
      EXPECT_EQ(m.params[i].value, c.params[i].second);
      EXPECT_EQ(m.param(c.params[i].first), c.params[i].second);
    }
  } else {
    EXPECT_EQ(m.param_count, 0u);
  }
  EXPECT_EQ(m.allow, c.status == MatchStatus::kMethodNotAllowed ? c.allow : "");
}

constexpr auto kFound = MatchStatus::kFound;
constexpr auto kNotFound = MatchStatus::kNotFound;
constexpr auto k405 = MatchStatus::kMethodNotAllowed;

// The main table; indices are referred to by the cases below.
std::vector<RouteSpec> main_routes() {
  return {
      {{"GET"}, "/", {}},                          // 0
      {{"GET"}, "/items", {}},                     // 1
      {{"POST"}, "/items", {}},                    // 2
      {{"GET"}, "/items/", {}},                    // 3
      {{"GET"}, "/items/new", {}},                 // 4
      {{"GET"}, "/items/{id}", {}},                // 5
      {{"PUT", "DELETE"}, "/items/{item}", {}},    // 6 (equivalent shape, other methods)
      {{"GET"}, "/items/{id}/tags/{tag}", {}},     // 7
      {{"GET"}, "/files/{path+}", {}},             // 8
      {{"ANY"}, "/any/{x}", {}},                   // 9
      {{"GET"}, "/a/{x}/c", {}},                   // 10
      {{"POST"}, "/a/b/{y}", {}},                  // 11
      {{"GET"}, "/static/{p+}", {}},               // 12
      {{"GET"}, "/static/favicon.ico", {}},        // 13
      {{"HEAD"}, "/h", {}},                        // 14
      {{"GET"}, "/h", {}},                         // 15
      {{"ANY"}, "/anyonly", {}},                   // 16
      {{"GET"}, "/mixed", {}},                     // 17
      {{"ANY"}, "/mixed", {}},                     // 18
      {{"GET"}, "/x/{a}/{b}", {}},                 // 19
      {{"GET"}, "/x/lit/end", {}},                 // 20
      {{"GET"}, "/g/{x}/d", {}},                   // 21
      {{"GET"}, "/g/{rest+}", {}},                 // 22
      {{"GET", "POST"}, "/v1/{org}/{repo+}", {}},  // 23
      {{"M-SEARCH"}, "/upnp", {}},                 // 24
  };
}

TEST(Router, MatchTable) {
  const auto router = must_build(main_routes());
  ASSERT_NE(router, nullptr);
  const std::vector<Case> cases = {
      // Root and literals.
      {"GET", "/", kFound, 0},
      {"GET", "/items", kFound, 1},
      {"POST", "/items", kFound, 2},
      {"GET", "/nope", kNotFound},
      {"GET", "/items/new", kFound, 4},
      // Not a path: no leading slash, empty.
      {"GET", "", kNotFound},
      {"GET", "items", kNotFound},
      {"GET", "*", kNotFound},
      // Trailing slash is significant.
      {"GET", "/items/", kFound, 3},
      {"POST", "/items/", k405, -1, {}, "GET, HEAD"},
      {"GET", "/items/42/", kNotFound},
      {"GET", "/nope/", kNotFound},
      // Params.
      {"GET", "/items/42", kFound, 5, {{"id", "42"}}},
      {"PUT", "/items/42", kFound, 6, {{"item", "42"}}},
      {"DELETE", "/items/42", kFound, 6, {{"item", "42"}}},
      {"GET", "/items/42/tags/red", kFound, 7, {{"id", "42"}, {"tag", "red"}}},
      {"GET", "/items/42/tags", kNotFound},
      {"GET", "/items/42/tags/", kNotFound},
      {"GET", "/items//tags/red", kNotFound},
      {"GET", "/items/%2F/tags/a%20b", kFound, 7, {{"id", "%2F"}, {"tag", "a%20b"}}},
      // Greedy.
      {"GET", "/files/a", kFound, 8, {{"path", "a"}}},
      {"GET", "/files/a/b/c.txt", kFound, 8, {{"path", "a/b/c.txt"}}},
      {"GET", "/files/a/", kFound, 8, {{"path", "a/"}}},
      {"GET", "/files/a//b", kFound, 8, {{"path", "a//b"}}},
      {"GET", "/files/../etc/passwd", kFound, 8, {{"path", "../etc/passwd"}}},
      {"GET", "/files/", kNotFound},
      {"GET", "/files", kNotFound},
      {"GET", "/files//etc", kNotFound},
      {"GET",
       "/v1/acme/widgets/src/main.cc",
       kFound,
       23,
       {{"org", "acme"}, {"repo", "widgets/src/main.cc"}}},
      {"GET", "/v1/acme", kNotFound},
      // Precedence: literal over param over greedy, with backtracking.
      {"GET", "/static/favicon.ico", kFound, 13},
      {"GET", "/static/css/site.css", kFound, 12, {{"p", "css/site.css"}}},
      {"GET", "/static/favicon.ico/x", kFound, 12, {{"p", "favicon.ico/x"}}},
      {"GET", "/a/b/c", kFound, 10, {{"x", "b"}}},  // /a/b/{y} has no GET: backtrack
      {"POST", "/a/b/c", kFound, 11, {{"y", "c"}}},
      {"PUT", "/a/b/c", k405, -1, {}, "POST"},  // Allow of the first (most specific) path
      {"GET", "/a/z/c", kFound, 10, {{"x", "z"}}},
      {"POST", "/a/z/c", k405, -1, {}, "GET, HEAD"},
      {"GET", "/x/lit/end", kFound, 20},
      {"GET", "/x/lit/other", kFound, 19, {{"a", "lit"}, {"b", "other"}}},
      {"GET", "/g/1/d", kFound, 21, {{"x", "1"}}},
      {"GET", "/g/1/e", kFound, 22, {{"rest", "1/e"}}},
      {"GET", "/g/1/d/e", kFound, 22, {{"rest", "1/d/e"}}},
      {"GET", "/g/1", kFound, 22, {{"rest", "1"}}},
      {"POST", "/items/new", k405, -1, {}, "GET, HEAD"},    // /items/{id} has no POST either
      {"PUT", "/items/new", kFound, 6, {{"item", "new"}}},  // backtracks to /items/{item}
      // 405 lists every method on the path, sorted, with HEAD when GET is there.
      {"DELETE", "/items", k405, -1, {}, "GET, HEAD, POST"},
      {"PATCH", "/items/42", k405, -1, {}, "DELETE, GET, HEAD, PUT"},
      {"DELETE", "/v1/acme/w", k405, -1, {}, "GET, HEAD, POST"},
      {"GET", "/upnp", k405, -1, {}, "M-SEARCH"},
      {"M-SEARCH", "/upnp", kFound, 24},
      {"POST", "/h", k405, -1, {}, "GET, HEAD"},
      // Methods are case-sensitive.
      {"get", "/items", k405, -1, {}, "GET, HEAD, POST"},
      // ANY.
      {"DELETE", "/any/1", kFound, 9, {{"x", "1"}}},
      {"BREW", "/any/1", kFound, 9, {{"x", "1"}}},
      {"GET", "/any", kNotFound},
      {"OPTIONS", "/anyonly", kFound, 16},
      {"GET", "/mixed", kFound, 17},  // exact beats ANY
      {"POST", "/mixed", kFound, 18},
      // HEAD: explicit HEAD, then GET, then ANY.
      {"HEAD", "/h", kFound, 14},
      {"GET", "/h", kFound, 15},
      {"HEAD", "/items", kFound, 1},
      {"HEAD", "/items/42", kFound, 5, {{"id", "42"}}},
      {"HEAD", "/mixed", kFound, 17},
      {"HEAD", "/anyonly", kFound, 16},
      {"HEAD", "/upnp", k405, -1, {}, "M-SEARCH"},
  };
  for (const Case& c : cases) {
    expect_match(*router, c);
  }
}

TEST(Router, ParamNamesPointIntoRouterAndValuesIntoPath) {
  const auto router = must_build(main_routes());
  ASSERT_NE(router, nullptr);
  const std::string path = "/items/42/tags/red";
  Match m;
  router->match("GET", path, m);
  ASSERT_EQ(m.status, MatchStatus::kFound);
  ASSERT_EQ(m.param_count, 2u);
  EXPECT_EQ(m.params[0].value.data(), path.data() + 7);
  EXPECT_EQ(m.params[1].value.data(), path.data() + 15);
  EXPECT_EQ(m.param("missing"), "");
  EXPECT_EQ(m.param(""), "");
  // Names outlive the spec vector given to build().
  std::unique_ptr<Router> r2;
  {
    std::vector<RouteSpec> specs = {{{"GET"}, "/{short}", {}}};
    r2 = must_build(specs);
  }
  ASSERT_NE(r2, nullptr);
  r2->match("GET", "/v", m);
  ASSERT_EQ(m.status, MatchStatus::kFound);
  EXPECT_EQ(m.params[0].name, "short");
  EXPECT_EQ(m.param("short"), "v");
}

TEST(Router, MatchDoesNotAllocateExceptFor405) {
  const auto router = must_build(main_routes());
  ASSERT_NE(router, nullptr);
  const auto staged = must_build({{{"GET"}, "/items/{id}", {"prod"}}}, {"dev", "prod"});
  ASSERT_NE(staged, nullptr);
  Match m;
  const std::uint64_t before = g_allocations.load();
  router->match("GET", "/items/42/tags/red", m);
  EXPECT_EQ(m.status, MatchStatus::kFound);
  router->match("GET", "/a/b/c", m);  // backtracks out of /a/b/{y}
  EXPECT_EQ(m.status, MatchStatus::kFound);
  router->match("PUT", "/items/new", m);
  EXPECT_EQ(m.status, MatchStatus::kFound);
  router->match("HEAD", "/files/a/b", m);
  EXPECT_EQ(m.status, MatchStatus::kFound);
  router->match("GET", "/nope/nope", m);
  EXPECT_EQ(m.status, MatchStatus::kNotFound);
  staged->match("GET", "/prod/items/7", m);
  EXPECT_EQ(m.status, MatchStatus::kFound);
  staged->match("GET", "/qa/items/7", m);
  EXPECT_EQ(m.status, MatchStatus::kNotFound);
  EXPECT_EQ(g_allocations.load(), before);
}

TEST(Router, EmptyRouterFindsNothing) {
  const auto router = must_build({});
  ASSERT_NE(router, nullptr);
  expect_match(*router, {"GET", "/", kNotFound});
  expect_match(*router, {"GET", "/a", kNotFound});
}

TEST(Router, RootOnlyWhenDefined) {
  const auto router = must_build({{{"GET"}, "/a", {}}});
  ASSERT_NE(router, nullptr);
  expect_match(*router, {"GET", "/", kNotFound});
  expect_match(*router, {"GET", "/a", kFound, 0});
  expect_match(*router, {"GET", "/a/", kNotFound});
}

TEST(Router, Stages) {
  const std::vector<RouteSpec> routes = {
      {{"GET"}, "/", {}},                     // 0
      {{"GET"}, "/items", {}},                // 1
      {{"GET"}, "/debug", {"dev"}},           // 2
      {{"POST"}, "/items", {"prod"}},         // 3
      {{"GET"}, "/both", {"prod", "dev"}},    // 4
      {{"GET"}, "/x", {"prod"}},              // 5
      {{"GET"}, "/x", {"dev"}},               // 6 same template, disjoint stages
      {{"ANY"}, "/y", {"dev"}},               // 7
      {{"GET"}, "/z/{id}", {"prod"}},         // 8
      {{"GET"}, "/z/{id}/{more+}", {"dev"}},  // 9
      {{"GET"}, "/z/literal", {"dev"}},       // 10
  };
  const auto router = must_build(routes, {"prod", "dev", "canary"});
  ASSERT_NE(router, nullptr);
  const std::vector<Case> cases = {
      {"GET", "/prod", kFound, 0, {}, "", "prod"},
      {"GET", "/prod/", kFound, 0, {}, "", "prod"},
      {"GET", "/prod/items", kFound, 1, {}, "", "prod"},
      {"GET", "/dev/items", kFound, 1, {}, "", "dev"},
      {"GET", "/canary/items", kFound, 1, {}, "", "canary"},
      {"GET", "/prod/items/", kNotFound, -1, {}, "", "prod"},
      // Unknown or missing stage prefix.
      {"GET", "/items", kNotFound},
      {"GET", "/staging/items", kNotFound},
      {"GET", "/prodx", kNotFound},
      {"GET", "/Prod/items", kNotFound},
      {"GET", "/", kNotFound},
      {"GET", "//prod/items", kNotFound},
      {"GET", "", kNotFound},
      // Stage-restricted routes.
      {"GET", "/prod/debug", kNotFound, -1, {}, "", "prod"},
      {"GET", "/dev/debug", kFound, 2, {}, "", "dev"},
      {"POST", "/prod/items", kFound, 3, {}, "", "prod"},
      {"POST", "/dev/items", k405, -1, {}, "GET, HEAD", "dev"},
      {"DELETE", "/prod/items", k405, -1, {}, "GET, HEAD, POST", "prod"},
      {"GET", "/prod/both", kFound, 4, {}, "", "prod"},
      {"GET", "/dev/both", kFound, 4, {}, "", "dev"},
      {"GET", "/canary/both", kNotFound, -1, {}, "", "canary"},
      {"GET", "/prod/x", kFound, 5, {}, "", "prod"},
      {"GET", "/dev/x", kFound, 6, {}, "", "dev"},
      {"POST", "/prod/y", kNotFound, -1, {}, "", "prod"},
      {"POST", "/dev/y", kFound, 7, {}, "", "dev"},
      // Backtracking respects stages: the literal is dev-only, the param prod-only.
      {"GET", "/prod/z/literal", kFound, 8, {{"id", "literal"}}, "", "prod"},
      {"GET", "/dev/z/literal", kFound, 10, {}, "", "dev"},
      {"GET", "/dev/z/1", kNotFound, -1, {}, "", "dev"},
      {"GET", "/dev/z/1/a/b", kFound, 9, {{"id", "1"}, {"more", "a/b"}}, "", "dev"},
      {"GET", "/prod/z/1/a/b", kNotFound, -1, {}, "", "prod"},
  };
  for (const Case& c : cases) {
    expect_match(*router, c);
  }
}

TEST(Router, StageViewOutlivesRequestPath) {
  const auto router = must_build({{{"GET"}, "/", {}}}, {"prod"});
  ASSERT_NE(router, nullptr);
  Match m;
  {
    std::string path = "/prod";
    router->match("GET", path, m);
    path.assign(path.size(), 'x');
  }
  EXPECT_EQ(m.status, MatchStatus::kFound);
  EXPECT_EQ(m.stage, "prod");
}

TEST(Router, NoStagesMeansNoPrefix) {
  const auto router = must_build({{{"GET"}, "/prod/items", {}}});
  ASSERT_NE(router, nullptr);
  expect_match(*router, {"GET", "/prod/items", kFound, 0});
  expect_match(*router, {"GET", "/items", kNotFound});
}

std::string params_template(std::size_t n, bool greedy_last) {
  std::string t;
  for (std::size_t i = 0; i < n; ++i) {
    t += "/{p" + std::to_string(i) + (greedy_last && i + 1 == n ? "+}" : "}");
  }
  return t;
}

TEST(Router, ParamsAtTheLimit) {
  const auto router = must_build({{{"GET"}, params_template(kMaxPathParams, false), {}},
                                  {{"POST"}, params_template(kMaxPathParams, true), {}}});
  ASSERT_NE(router, nullptr);
  std::string path;
  for (std::size_t i = 0; i < kMaxPathParams; ++i) {
    path += "/v" + std::to_string(i);
  }
  Match m;
  router->match("GET", path, m);
  ASSERT_EQ(m.status, MatchStatus::kFound);
  ASSERT_EQ(m.param_count, kMaxPathParams);
  for (std::size_t i = 0; i < kMaxPathParams; ++i) {
    EXPECT_EQ(m.param("p" + std::to_string(i)), "v" + std::to_string(i));
  }
  const std::string longer = path + "/w/x";  // values point into it
  router->match("POST", longer, m);
  ASSERT_EQ(m.status, MatchStatus::kFound);
  ASSERT_EQ(m.param_count, kMaxPathParams);
  EXPECT_EQ(m.param("p15"), "v15/w/x");
  router->match("GET", path + "/w", m);
  EXPECT_EQ(m.status, MatchStatus::kMethodNotAllowed);
  EXPECT_EQ(m.allow, "POST");
}

struct BuildErrorCase {
  std::string name;
  std::vector<RouteSpec> routes;
  std::vector<std::string> stages;
  std::string message;  // expected substring
};

TEST(Router, BuildErrors) {
  const std::vector<BuildErrorCase> cases = {
      {"greedy-not-last (exact message)",
       {{{"GET"}, "/a", {}}, {{"GET"}, "/b", {}}, {{"GET"}, "/c", {}}, {{"GET"}, "/a/{x+}/b", {}}},
       {},
       "route 3 (/a/{x+}/b): greedy parameter must be the last segment"},
      {"greedy-before-trailing-slash", {{{"GET"}, "/{x+}/", {}}}, {}, "greedy parameter must be"},
      {"empty path", {{{"GET"}, "", {}}}, {}, "route 0 (): empty path"},
      {"no leading slash", {{{"GET"}, "items", {}}}, {}, "route 0 (items): path must start with"},
      {"empty segment first", {{{"GET"}, "//a", {}}}, {}, "route 0 (//a): empty segment"},
      {"empty segment middle", {{{"GET"}, "/a//b", {}}}, {}, "empty segment"},
      {"double slash", {{{"GET"}, "//", {}}}, {}, "empty segment"},
      {"brace inside literal", {{{"GET"}, "/a{b}", {}}}, {}, "misplaced braces"},
      {"brace after param", {{{"GET"}, "/{b}c", {}}}, {}, "misplaced braces"},
      {"unclosed", {{{"GET"}, "/{a", {}}}, {}, "braces"},
      {"unopened", {{{"GET"}, "/a}", {}}}, {}, "braces"},
      {"double close", {{{"GET"}, "/{a}}", {}}}, {}, "braces"},
      {"nested", {{{"GET"}, "/{{a}}", {}}}, {}, "braces"},
      {"empty name", {{{"GET"}, "/{}", {}}}, {}, "bad parameter name"},
      {"empty greedy name", {{{"GET"}, "/{+}", {}}}, {}, "bad parameter name"},
      {"dash in name", {{{"GET"}, "/{a-b}", {}}}, {}, "bad parameter name"},
      {"space in name", {{{"GET"}, "/{a b}", {}}}, {}, "bad parameter name"},
      {"plus inside name", {{{"GET"}, "/{a+b}", {}}}, {}, "bad parameter name"},
      {"double plus", {{{"GET"}, "/{a++}", {}}}, {}, "bad parameter name"},
      {"duplicate param", {{{"GET"}, "/{x}/{x}", {}}}, {}, "duplicate parameter name \"x\""},
      {"duplicate greedy", {{{"GET"}, "/{x}/a/{x+}", {}}}, {}, "duplicate parameter name"},
      {"too many params",
       {{{"GET"}, params_template(kMaxPathParams + 1, false), {}}},
       {},
       "more than 16 path parameters"},
      {"too many params with greedy",
       {{{"GET"}, params_template(kMaxPathParams + 1, true), {}}},
       {},
       "more than 16 path parameters"},
      {"unknown stage", {{{"GET"}, "/a", {"qa"}}}, {"prod"}, "route 0 (/a): unknown stage \"qa\""},
      {"stage without stages", {{{"GET"}, "/a", {"prod"}}}, {}, "unknown stage \"prod\""},
      {"duplicate route stage", {{{"GET"}, "/a", {"prod", "prod"}}}, {"prod"}, "duplicate stage"},
      {"empty methods", {{{}, "/a", {}}}, {}, "route 0 (/a): empty methods list"},
      {"lower-case method", {{{"get"}, "/a", {}}}, {}, "not an upper-case token"},
      {"empty method", {{{""}, "/a", {}}}, {}, "not an upper-case token"},
      {"space in method", {{{"GE T"}, "/a", {}}}, {}, "not an upper-case token"},
      {"ANY with others", {{{"GET", "ANY"}, "/a", {}}}, {}, "ANY cannot be combined"},
      {"duplicate method", {{{"GET", "POST", "GET"}, "/a", {}}}, {}, "duplicate method GET"},
      {"conflict: same literal",
       {{{"GET"}, "/a", {}}, {{"POST", "GET"}, "/a", {}}},
       {},
       "route 1 (/a): conflicts with route 0 (/a): same method GET"},
      {"conflict: renamed params",
       {{{"GET"}, "/a/{x}/{y+}", {}}, {{"GET"}, "/a/{p}/{q+}", {}}},
       {},
       "route 1 (/a/{p}/{q+}): conflicts with route 0 (/a/{x}/{y+})"},
      {"conflict: ANY vs ANY",
       {{{"ANY"}, "/a", {}}, {{"ANY"}, "/a", {}}},
       {},
       "conflicts with route 0 (/a): same method ANY"},
      {"conflict: all stages vs one",
       {{{"GET"}, "/a", {"prod"}}, {{"GET"}, "/a", {}}},
       {"prod", "dev"},
       "route 1 (/a): conflicts with route 0"},
      {"conflict: overlapping stages",
       {{{"GET"}, "/a", {"prod", "dev"}}, {{"GET"}, "/a", {"dev"}}},
       {"prod", "dev"},
       "conflicts with route 0"},
      {"conflict: root",
       {{{"GET"}, "/", {}}, {{"GET"}, "/", {}}},
       {},
       "conflicts with route 0 (/)"},
      {"empty stage name", {}, {"prod", ""}, "stage 1 (\"\"): empty stage name"},
      {"slash in stage name", {}, {"a/b"}, "stage 0 (\"a/b\"): a stage name is one path segment"},
      {"duplicate stage name", {}, {"prod", "dev", "prod"}, "stage 2 (\"prod\"): duplicate stage"},
  };
  for (const BuildErrorCase& c : cases) {
    SCOPED_TRACE(c.name);
    const auto r = Router::build(c.routes, c.stages);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, core::ErrorCode::kInvalidArgument);
    EXPECT_NE(r.error().message.find(c.message), std::string::npos) << r.error().message;
  }
}

TEST(Router, NotConflicts) {
  const std::vector<std::vector<RouteSpec>> tables = {
      {{{"GET"}, "/a", {}}, {{"ANY"}, "/a", {}}},
      {{{"GET"}, "/a", {}}, {{"HEAD"}, "/a", {}}},
      {{{"GET"}, "/a", {}}, {{"GET"}, "/a/", {}}},
      {{{"GET"}, "/a/{x}", {}}, {{"GET"}, "/a/{x+}", {}}},
      {{{"GET"}, "/a/{x}", {}}, {{"GET"}, "/a/x", {}}},
      {{{"GET"}, "/a", {"prod"}}, {{"GET"}, "/a", {"dev"}}},
      {{{"ANY"}, "/a", {"prod"}}, {{"ANY"}, "/a", {"dev"}}},
  };
  for (std::size_t i = 0; i < tables.size(); ++i) {
    SCOPED_TRACE(i);
    const auto r = Router::build(tables[i], {"prod", "dev"});
    EXPECT_TRUE(r.has_value()) << r.error().message;
  }
}

TEST(Router, ManyStagesBeyondOneWord) {
  std::vector<std::string> stages;
  stages.reserve(130);
  for (int i = 0; i < 130; ++i) {
    stages.push_back("s" + std::to_string(i));
  }
  const auto router =
      must_build({{{"GET"}, "/a", {"s0", "s64", "s129"}}, {{"GET"}, "/a", {"s1", "s128"}}}, stages);
  ASSERT_NE(router, nullptr);
  expect_match(*router, {"GET", "/s129/a", kFound, 0, {}, "", "s129"});
  expect_match(*router, {"GET", "/s128/a", kFound, 1, {}, "", "s128"});
  expect_match(*router, {"GET", "/s64/a", kFound, 0, {}, "", "s64"});
  expect_match(*router, {"GET", "/s65/a", kNotFound, -1, {}, "", "s65"});
  const auto conflict =
      Router::build({{{"GET"}, "/a", {"s0", "s129"}}, {{"GET"}, "/a", {"s129"}}}, stages);
  EXPECT_FALSE(conflict.has_value());
}

TEST(Router, ManyLiteralChildrenUseBinarySearch) {
  std::vector<RouteSpec> routes;
  routes.reserve(101);
  for (int i = 0; i < 100; ++i) {
    routes.push_back({{"GET"}, "/r/n" + std::to_string(i), {}});
  }
  routes.push_back({{"GET"}, "/r/{other}", {}});
  const auto router = must_build(routes);
  ASSERT_NE(router, nullptr);
  for (int i = 0; i < 100; ++i) {
    expect_match(*router, {"GET", "/r/n" + std::to_string(i), kFound, i});
  }
  expect_match(*router, {"GET", "/r/n100", kFound, 100, {{"other", "n100"}}});
  expect_match(*router, {"GET", "/r/", kNotFound});
}

TEST(Router, HostilePathsDoNotCrash) {
  const auto router = must_build(main_routes());
  ASSERT_NE(router, nullptr);
  const std::string long_segment(1 << 20, 'a');
  std::string ten_k_segments;
  for (int i = 0; i < 10000; ++i) {
    ten_k_segments += "/a";
  }
  expect_match(*router, {"GET", "/" + long_segment, kNotFound});
  expect_match(*router, {"GET", "/items/" + long_segment, kFound, 5, {{"id", long_segment}}});
  expect_match(*router, {"GET", "/files/" + long_segment, kFound, 8, {{"path", long_segment}}});
  expect_match(*router, {"GET", std::string(100000, '/'), kNotFound});
  expect_match(*router, {"GET", "//", kNotFound});
  expect_match(*router, {"GET", "///", kNotFound});
  expect_match(*router, {"GET", "/../", kNotFound});
  expect_match(*router, {"GET", "/..", kNotFound});
  expect_match(*router, {"GET", "/./items", kNotFound});
  expect_match(*router, {"GET", "/items/..", kFound, 5, {{"id", ".."}}});
  expect_match(*router, {"GET", ten_k_segments, kNotFound});
  expect_match(*router,
               {"GET", "/files" + ten_k_segments, kFound, 8, {{"path", ten_k_segments.substr(1)}}});
  expect_match(*router, {"GET", "/items" + ten_k_segments, kNotFound});
  expect_match(*router,
               {"GET", "/g" + ten_k_segments, kFound, 22, {{"rest", ten_k_segments.substr(1)}}});
  // NUL bytes are ordinary bytes.
  expect_match(*router,
               {"GET", std::string("/items/\0x", 9), kFound, 5, {{"id", std::string("\0x", 2)}}});
  expect_match(*router, {"GET", std::string("/it\0ems", 7), kNotFound});
  expect_match(*router, {"GET", std::string("/items\0", 7), kNotFound});
  expect_match(*router, {"GET", std::string("\0/items", 7), kNotFound});
  expect_match(*router, {std::string("GET\0", 4), "/items", k405, -1, {}, "GET, HEAD, POST"});
  expect_match(*router, {"", "/items", k405, -1, {}, "GET, HEAD, POST"});
  expect_match(*router, {"GET", "/items/\xff\xfe", kFound, 5, {{"id", "\xff\xfe"}}});

  const auto staged = must_build({{{"GET"}, "/{x+}", {}}}, {"prod"});
  ASSERT_NE(staged, nullptr);
  expect_match(
      *staged,
      {"GET", "/prod" + ten_k_segments, kFound, 0, {{"x", ten_k_segments.substr(1)}}, "", "prod"});
  expect_match(*staged, {"GET", std::string(100000, '/'), kNotFound});
  expect_match(*staged, {"GET", "/" + long_segment, kNotFound});
}

// ---------------------------------------------------------------------------------------------
// Differential test against a naive oracle: each route is matched on its own, and the winner is
// the matching route whose shape (literal < param < greedy, segment by segment) sorts first and
// serves the method; that is the order the trie walk defines.

struct OracleRoute {
  std::vector<std::string> segs;  // "{name}", "{name+}" or literal
  std::vector<std::string> methods;
  std::vector<std::string> stages;
};

std::vector<std::string> split_path(std::string_view path) {
  std::vector<std::string> out;
  if (path == "/") {
    return out;
  }
  std::size_t start = 1;
  while (true) {
    const std::size_t end = path.find('/', start);
    if (end == std::string_view::npos) {
      out.emplace_back(path.substr(start));
      return out;
    }
    out.emplace_back(path.substr(start, end - start));
    start = end + 1;
  }
}

int kind_of(const std::string& seg) {
  if (seg.size() > 2 && seg.front() == '{') {
    return seg[seg.size() - 2] == '+' ? 2 : 1;
  }
  return 0;
}

// Returns the shape key if `route` matches `segs`, with captured values.
bool oracle_matches(const OracleRoute& route, const std::vector<std::string>& segs,
                    std::vector<int>& shape, std::vector<std::string>& values) {
  shape.clear();
  values.clear();
  for (std::size_t i = 0; i < route.segs.size(); ++i) {
    const int k = kind_of(route.segs[i]);
    shape.push_back(k);
    if (i >= segs.size()) {
      return false;
    }
    if (k == 0 && route.segs[i] != segs[i]) {
      return false;
    }
    if (k == 1) {
      if (segs[i].empty()) {
        return false;
      }
      values.push_back(segs[i]);
    }
    if (k == 2) {
      if (segs[i].empty()) {
        return false;
      }
      std::string rest = segs[i];
      for (std::size_t j = i + 1; j < segs.size(); ++j) {
        rest += "/" + segs[j];
      }
      values.push_back(rest);
      return true;
    }
  }
  return segs.size() == route.segs.size();
}

bool has(const std::vector<std::string>& v, std::string_view s) {
  for (const auto& x : v) {
    if (x == s) {
      return true;
    }
  }
  return false;
}

TEST(Router, DifferentialAgainstOracle) {
  std::mt19937 rng(12345);
  const std::vector<std::string> literals = {"a", "b", "c"};
  const std::vector<std::string> query_methods = {"GET", "POST", "HEAD", "PUT"};
  const std::vector<std::string> stage_names = {"s1", "s2"};
  const auto pick = [&rng](std::size_t n) {
    return static_cast<std::size_t>(std::uniform_int_distribution<std::size_t>(0, n - 1)(rng));
  };
  std::array<int, 3> seen{};  // by MatchStatus: the random tables must exercise all three
  for (int round = 0; round < 200; ++round) {
    const bool staged = round % 2 == 1;
    std::vector<RouteSpec> specs;
    std::vector<OracleRoute> oracle;
    for (int attempt = 0; attempt < 25; ++attempt) {
      OracleRoute o;
      const std::size_t n = pick(4);
      std::string path;
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t r = pick(6);
        std::string seg;
        if (r < 3) {
          seg = literals[pick(literals.size())];
        } else if (r < 5 || i + 1 != n) {
          seg = "{p" + std::to_string(i) + "}";
        } else {
          seg = "{g" + std::to_string(i) + "+}";
        }
        o.segs.push_back(seg);
        path += "/" + seg;
      }
      if (n > 0 && kind_of(o.segs.back()) != 2 && pick(5) == 0) {
        o.segs.emplace_back("");
        path += "/";
      }
      if (path.empty()) {
        path = "/";
      }
      if (pick(4) == 0) {
        o.methods = {"ANY"};
      } else {
        for (const auto& m : {"GET", "POST", "HEAD"}) {
          if (pick(2) == 0) {
            o.methods.emplace_back(m);
          }
        }
        if (o.methods.empty()) {
          o.methods = {"GET"};
        }
      }
      if (staged && pick(2) == 0) {
        o.stages = {stage_names[pick(2)]};
      }
      specs.push_back({o.methods, path, o.stages});
      if (!Router::build(specs, staged ? stage_names : std::vector<std::string>{})) {
        specs.pop_back();  // a conflict: drop it
        continue;
      }
      oracle.push_back(std::move(o));
    }
    const auto router = must_build(specs, staged ? stage_names : std::vector<std::string>{});
    ASSERT_NE(router, nullptr);

    for (int q = 0; q < 200; ++q) {
      std::string path;
      const std::size_t n = pick(5);
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t r = pick(8);
        path += "/" + (r < 5 ? literals[pick(3)] : r < 7 ? std::string("d") : std::string());
      }
      if (path.empty()) {
        path = "/";
      }
      std::string stage;
      if (staged) {
        stage = stage_names[pick(2)];
        // "/s1" and "/s1/" both mean the stage root.
        std::string staged_path = "/";
        staged_path += stage;
        if (path != "/" || pick(2) == 0) {
          staged_path += path;
        }
        path = std::move(staged_path);
      }
      const std::string& method = query_methods[pick(query_methods.size())];
      const std::string_view rest = staged ? std::string_view(path).substr(stage.size() + 1) : path;
      const auto segs = split_path(rest.empty() ? "/" : rest);

      // Oracle: best shape that serves the method; else the Allow of the best shape overall.
      std::vector<int> best_shape;
      std::vector<int> best_any_shape;
      int best = -1;
      int best_any = -1;
      std::vector<std::string> best_values;
      for (std::size_t i = 0; i < oracle.size(); ++i) {
        std::vector<int> shape;
        std::vector<std::string> values;
        if (!oracle_matches(oracle[i], segs, shape, values)) {
          continue;
        }
        if (!oracle[i].stages.empty() && !has(oracle[i].stages, stage)) {
          continue;
        }
        if (best_any == -1 || shape < best_any_shape) {
          best_any = static_cast<int>(i);
          best_any_shape = shape;
        }
        const auto& ms = oracle[i].methods;
        // Within one shape: exact > GET (for HEAD) > ANY.
        const int rank = has(ms, method)                        ? 0
                         : (method == "HEAD" && has(ms, "GET")) ? 1
                         : has(ms, "ANY")                       ? 2
                                                                : -1;
        if (rank < 0) {
          continue;
        }
        const auto rank_of = [&](int idx) {
          const auto& bm = oracle[static_cast<std::size_t>(idx)].methods;
          return has(bm, method) ? 0 : (method == "HEAD" && has(bm, "GET")) ? 1 : 2;
        };
        if (best == -1 || shape < best_shape || (shape == best_shape && rank < rank_of(best))) {
          best = static_cast<int>(i);
          best_shape = shape;
          best_values = values;
        }
      }
      std::string trace = "round " + std::to_string(round);
      trace += ": ";
      trace += method;
      trace += " ";
      trace += path;
      SCOPED_TRACE(trace);
      Match m;
      router->match(method, path, m);
      ++seen[static_cast<std::size_t>(m.status)];
      EXPECT_EQ(m.stage, stage);
      if (best != -1) {
        ASSERT_EQ(m.status, MatchStatus::kFound);
        EXPECT_EQ(m.route, static_cast<std::uint32_t>(best));
        ASSERT_EQ(m.param_count, best_values.size());
        for (std::size_t i = 0; i < best_values.size(); ++i) {
          EXPECT_EQ(m.params[i].value, best_values[i]);
        }
      } else if (best_any != -1) {
        ASSERT_EQ(m.status, MatchStatus::kMethodNotAllowed);
        std::vector<std::string> allow;
        for (std::size_t i = 0; i < oracle.size(); ++i) {
          std::vector<int> shape;
          std::vector<std::string> values;
          if (oracle_matches(oracle[i], segs, shape, values) && shape == best_any_shape &&
              (oracle[i].stages.empty() || has(oracle[i].stages, stage))) {
            for (const auto& mm : oracle[i].methods) {
              allow.push_back(mm);
              if (mm == "GET") {
                allow.emplace_back("HEAD");
              }
            }
          }
        }
        std::sort(allow.begin(), allow.end());
        allow.erase(std::unique(allow.begin(), allow.end()), allow.end());
        std::string joined;
        for (const auto& a : allow) {
          joined += (joined.empty() ? "" : ", ") + a;
        }
        EXPECT_EQ(m.allow, joined);
      } else {
        EXPECT_EQ(m.status, MatchStatus::kNotFound);
      }
    }
  }
  for (const int n : seen) {
    EXPECT_GT(n, 2000) << seen[0] << " " << seen[1] << " " << seen[2];
  }
}

}  // namespace
}  // namespace gatehouse::http
