// SigV4 verifications per second (auth::SigV4Verifier, one worker's verifier): a GET signed in
// the Authorization header with the signing key in the verifier's cache (one key calling again
// and again), the same cold (1024 keys in turn, more than the 64-entry cache holds, so every
// verification derives its signing key: four more HMACs), a presigned URL, and the refusal of a
// wrong signature. Each benchmark checks its decision before timing it. Run:
//   cmake -B build-bench -DGH_BENCH=ON -DCMAKE_BUILD_TYPE=Release && cmake --build build-bench
//   build-bench/bench/sigv4_bench
#include <benchmark/benchmark.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "auth/auth.h"

namespace {

namespace auth = gatehouse::auth;

constexpr std::string_view kDate = "20260101T120000Z";
const auto kNow = std::chrono::system_clock::time_point(std::chrono::seconds(1767268800));

std::array<unsigned char, 32> mac(std::span<const unsigned char> key, std::string_view data) {
  std::array<unsigned char, 32> out{};
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(), &len);
  return out;
}

std::string hex(std::span<const unsigned char> b) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s;
  for (unsigned char c : b) {
    s += kDigits[c >> 4];
    s += kDigits[c & 15];
  }
  return s;
}

// A signed request: owns the strings its SigV4Request views.
struct Signed {
  std::string query;
  std::vector<std::pair<std::string, std::string>> headers;
  std::vector<auth::SigV4Header> views;
  auth::SigV4Request request() {
    views.clear();
    for (const auto& [n, v] : headers) {
      views.push_back(auth::SigV4Header{n, v});
    }
    return auth::SigV4Request{"GET", "/orders/42", query, views, false};
  }
};

std::string key_id(int i) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "GHIABENCH%011d", i);
  return buf;
}
std::string secret(int i) { return "secret-" + std::to_string(i) + std::string(30, 'x'); }

std::string signature(const auth::SigV4Request& req, std::string_view signed_headers, int i,
                      bool presigned) {
  constexpr std::string_view kEmpty =
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
  auto creq = auth::SigV4Verifier::canonical_request(
      req, signed_headers, presigned ? "UNSIGNED-PAYLOAD" : kEmpty, presigned, presigned);
  if (!creq) {
    std::abort();
  }
  const std::string service = presigned ? "s3" : "execute-api";
  const std::string scope =
      std::string(kDate.substr(0, 8)) + "/us-east-1/" + service + "/aws4_request";
  const std::string k0 = "AWS4" + secret(i);
  auto k = mac({reinterpret_cast<const unsigned char*>(k0.data()), k0.size()}, kDate.substr(0, 8));
  k = mac(k, "us-east-1");
  k = mac(k, service);
  k = mac(k, "aws4_request");
  return hex(mac(k, auth::SigV4Verifier::string_to_sign(kDate, scope, *creq)));
}

Signed header_request(int i) {
  Signed s;
  s.query = "page=2&sort=desc";
  s.headers = {
      {"Host", "api.example.com"}, {"X-Amz-Date", std::string(kDate)}, {"User-Agent", "bench"}};
  const std::string sig = signature(s.request(), "host;x-amz-date", i, false);
  s.headers.emplace_back("Authorization",
                         "AWS4-HMAC-SHA256 Credential=" + key_id(i) + "/" +
                             std::string(kDate.substr(0, 8)) +
                             "/us-east-1/execute-api/aws4_request, SignedHeaders=host;x-amz-date, "
                             "Signature=" +
                             sig);
  return s;
}

Signed presigned_request(int i) {
  Signed s;
  s.headers = {{"Host", "bucket.example.com"}};
  s.query = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=" + key_id(i) + "%2F" +
            std::string(kDate.substr(0, 8)) +
            "%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=" + std::string(kDate) +
            "&X-Amz-Expires=900&X-Amz-SignedHeaders=host";
  s.query += "&X-Amz-Signature=" + signature(s.request(), "host", i, true);
  return s;
}

const auth::CredentialIndex& index() {
  static const auth::CredentialIndex idx = [] {
    auth::CredentialIndex out;
    for (int i = 0; i < 1024; ++i) {
      auth::AccessKey k;
      k.id = key_id(i);
      k.role = "bench";
      k.principal = "arn:gatehouse:iam::000000000000:role/bench";
      out.add(auth::Credential{k, secret(i)});
    }
    return out;
  }();
  return idx;
}

bool verifies(auth::SigV4Verifier& v, Signed& s, auth::SigV4State& st) {
  auto r = v.begin(s.request(), index(), kNow, st);
  return r && st.verified;
}

// Verifies `s` again and again with one verifier: its signing key stays cached.
void run_cached(benchmark::State& state, Signed s) {
  auth::SigV4Verifier v("us-east-1");
  auth::SigV4State st;
  if (!verifies(v, s, st)) {
    state.SkipWithError("the signed request does not verify");
    return;
  }
  const auth::SigV4Request req = s.request();
  for (auto _ : state) {
    auto r = v.begin(req, index(), kNow, st);
    benchmark::DoNotOptimize(r);
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_HeaderCachedKey(benchmark::State& state) { run_cached(state, header_request(7)); }
BENCHMARK(BM_HeaderCachedKey);

void BM_HeaderColdKey(benchmark::State& state) {
  auth::SigV4Verifier v("us-east-1");
  auth::SigV4State st;
  std::vector<Signed> all;
  for (int i = 0; i < 1024; ++i) {
    all.push_back(header_request(i));
  }
  for (auto& s : all) {
    if (!verifies(v, s, st)) {
      state.SkipWithError("a signed request does not verify");
      return;
    }
  }
  std::vector<auth::SigV4Request> reqs;
  for (auto& s : all) {
    reqs.push_back(s.request());
  }
  std::size_t i = 0;
  for (auto _ : state) {
    auto r = v.begin(reqs[i], index(), kNow, st);
    benchmark::DoNotOptimize(r);
    i = (i + 1) % reqs.size();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HeaderColdKey);

void BM_PresignedCachedKey(benchmark::State& state) { run_cached(state, presigned_request(3)); }
BENCHMARK(BM_PresignedCachedKey);

void BM_WrongSignatureRefused(benchmark::State& state) {
  auth::SigV4Verifier v("us-east-1");
  auth::SigV4State st;
  Signed s = header_request(9);
  std::string& authz = s.headers.back().second;
  authz.back() = authz.back() == '0' ? '1' : '0';
  const auth::SigV4Request req = s.request();
  auto first = v.begin(req, index(), kNow, st);
  if (first || first.error().code != gatehouse::core::ErrorCode::kSignatureDoesNotMatch) {
    state.SkipWithError("the forged request is not refused with SignatureDoesNotMatch");
    return;
  }
  for (auto _ : state) {
    auto r = v.begin(req, index(), kNow, st);
    benchmark::DoNotOptimize(r);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_WrongSignatureRefused);

}  // namespace

BENCHMARK_MAIN();
