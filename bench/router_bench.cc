// Router::match among ~50 realistic routes (a REST API, a function gateway, object storage).
// One iteration is one match; Google Benchmark reports the time per match.

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "http/http.h"

namespace gatehouse::http {
namespace {

std::vector<RouteSpec> realistic_routes() {
  std::vector<RouteSpec> r = {
      {{"GET"}, "/", {}},
      {{"GET"}, "/healthz", {}},
      {{"GET"}, "/readyz", {}},
      {{"GET"}, "/metrics", {}},
      {{"GET"}, "/v1/users", {}},
      {{"POST"}, "/v1/users", {}},
      {{"GET"}, "/v1/users/me", {}},
      {{"GET", "PUT", "PATCH", "DELETE"}, "/v1/users/{user_id}", {}},
      {{"GET"}, "/v1/users/{user_id}/keys", {}},
      {{"POST"}, "/v1/users/{user_id}/keys", {}},
      {{"DELETE"}, "/v1/users/{user_id}/keys/{key_id}", {}},
      {{"GET"}, "/v1/orgs", {}},
      {{"GET", "PATCH"}, "/v1/orgs/{org}", {}},
      {{"GET"}, "/v1/orgs/{org}/members", {}},
      {{"PUT", "DELETE"}, "/v1/orgs/{org}/members/{user}", {}},
      {{"GET", "POST"}, "/v1/orgs/{org}/repos", {}},
      {{"GET", "PATCH", "DELETE"}, "/v1/orgs/{org}/repos/{repo}", {}},
      {{"GET", "POST"}, "/v1/orgs/{org}/repos/{repo}/issues", {}},
      {{"GET", "PATCH"}, "/v1/orgs/{org}/repos/{repo}/issues/{number}", {}},
      {{"GET", "POST"}, "/v1/orgs/{org}/repos/{repo}/issues/{number}/comments", {}},
      {{"GET"}, "/v1/orgs/{org}/repos/{repo}/contents/{path+}", {}},
      {{"GET"}, "/v1/orgs/{org}/repos/{repo}/releases/latest", {}},
      {{"GET"}, "/v1/orgs/{org}/repos/{repo}/releases/{tag}", {}},
      {{"GET"}, "/v1/functions", {}},
      {{"PUT", "GET", "DELETE"}, "/v1/functions/{name}", {}},
      {{"POST"}, "/v1/functions/{name}/invoke", {}},
      {{"GET"}, "/v1/functions/{name}/versions", {}},
      {{"GET"}, "/v1/functions/{name}/versions/{version}", {}},
      {{"GET"}, "/v1/functions/{name}/logs", {}},
      {{"GET"}, "/v1/workflows", {}},
      {{"PUT", "GET", "DELETE"}, "/v1/workflows/{name}", {}},
      {{"POST", "GET"}, "/v1/workflows/{name}/executions", {}},
      {{"GET"}, "/v1/workflows/{name}/executions/{id}", {}},
      {{"POST"}, "/v1/workflows/{name}/executions/{id}/stop", {}},
      {{"GET"}, "/v1/buckets", {}},
      {{"PUT", "GET", "DELETE"}, "/v1/buckets/{bucket}", {}},
      {{"GET"}, "/v1/buckets/{bucket}/objects", {}},
      {{"PUT", "GET", "HEAD", "DELETE"}, "/v1/buckets/{bucket}/objects/{key+}", {}},
      {{"GET"}, "/v1/tables", {}},
      {{"PUT", "GET", "DELETE"}, "/v1/tables/{table}", {}},
      {{"POST"}, "/v1/tables/{table}/query", {}},
      {{"PUT", "GET", "DELETE"}, "/v1/tables/{table}/items/{pk}", {}},
      {{"PUT", "GET", "DELETE"}, "/v1/tables/{table}/items/{pk}/{sk}", {}},
      {{"GET"}, "/v1/plans", {}},
      {{"GET", "PUT"}, "/v1/plans/{plan}", {}},
      {{"GET"}, "/v1/usage/{key_id}", {}},
      {{"POST"}, "/v1/auth/token", {}},
      {{"POST"}, "/v1/auth/revoke", {}},
      {{"GET"}, "/.well-known/jwks.json", {}},
      {{"ANY"}, "/hooks/{name}", {}},
      {{"GET"}, "/static/{file+}", {}},
  };
  return r;
}

const Router& router() {
  static const std::unique_ptr<Router> r = [] {
    auto built = Router::build(realistic_routes(), {});
    if (!built) {
      std::cerr << "router_bench: " << built.error().message << "\n";
      std::abort();
    }
    return std::move(*built);
  }();
  return *r;
}

const Router& staged_router() {
  static const std::unique_ptr<Router> r = [] {
    auto built = Router::build(realistic_routes(), {"prod", "staging", "dev"});
    if (!built) {
      std::cerr << "router_bench: " << built.error().message << "\n";
      std::abort();
    }
    return std::move(*built);
  }();
  return *r;
}

void run(benchmark::State& state, const Router& r, std::string_view method, std::string_view path,
         MatchStatus want) {
  Match m;
  r.match(method, path, m);
  if (m.status != want) {
    state.SkipWithError("unexpected match status");
    return;
  }
  for (auto _ : state) {
    r.match(method, path, m);
    benchmark::DoNotOptimize(m);
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_Literal(benchmark::State& state) {
  run(state, router(), "GET", "/healthz", MatchStatus::kFound);
}
void BM_OneParam(benchmark::State& state) {
  run(state, router(), "GET", "/v1/users/8c1f4b2e9a", MatchStatus::kFound);
}
void BM_DeepParams(benchmark::State& state) {
  run(state, router(), "POST", "/v1/orgs/acme/repos/widgets/issues/1234/comments",
      MatchStatus::kFound);
}
void BM_Greedy(benchmark::State& state) {
  run(state, router(), "GET", "/v1/buckets/photos/objects/2024/06/01/cat.jpg", MatchStatus::kFound);
}
void BM_Backtrack(benchmark::State& state) {
  // /v1/users/me has no DELETE: falls back to /v1/users/{user_id}.
  run(state, router(), "DELETE", "/v1/users/me", MatchStatus::kFound);
}
void BM_Staged(benchmark::State& state) {
  run(state, staged_router(), "GET", "/prod/v1/functions/resize/versions/7", MatchStatus::kFound);
}
void BM_NotFound(benchmark::State& state) {
  run(state, router(), "GET", "/v1/nothing/here/at/all", MatchStatus::kNotFound);
}
void BM_MethodNotAllowed(benchmark::State& state) {
  // The only case that allocates (the Allow list).
  run(state, router(), "POST", "/v1/orgs/acme/repos/widgets/issues/1234",
      MatchStatus::kMethodNotAllowed);
}

void BM_Mixed(benchmark::State& state) {
  const std::vector<std::pair<std::string_view, std::string_view>> reqs = {
      {"GET", "/healthz"},
      {"GET", "/v1/users/me"},
      {"PATCH", "/v1/users/u_123"},
      {"POST", "/v1/functions/thumbnail/invoke"},
      {"GET", "/v1/orgs/acme/repos/widgets/contents/src/http/router.cc"},
      {"PUT", "/v1/tables/orders/items/o-991/line-3"},
      {"GET", "/v1/workflows/checkout/executions/e-42"},
      {"POST", "/hooks/github"},
      {"HEAD", "/static/css/site.css"},
      {"GET", "/.well-known/jwks.json"},
      {"GET", "/v1/usage/k_abc"},
      {"GET", "/favicon.ico"},
  };
  const Router& r = router();
  Match m;
  std::size_t i = 0;
  for (auto _ : state) {
    const auto& [method, path] = reqs[i];
    r.match(method, path, m);
    benchmark::DoNotOptimize(m);
    i = i + 1 == reqs.size() ? 0 : i + 1;
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_Build(benchmark::State& state) {
  const auto routes = realistic_routes();
  for (auto _ : state) {
    auto built = Router::build(routes, {});
    benchmark::DoNotOptimize(built);
  }
}

BENCHMARK(BM_Literal);
BENCHMARK(BM_OneParam);
BENCHMARK(BM_DeepParams);
BENCHMARK(BM_Greedy);
BENCHMARK(BM_Backtrack);
BENCHMARK(BM_Staged);
BENCHMARK(BM_NotFound);
BENCHMARK(BM_MethodNotAllowed);
BENCHMARK(BM_Mixed);
BENCHMARK(BM_Build);

}  // namespace
}  // namespace gatehouse::http

BENCHMARK_MAIN();
