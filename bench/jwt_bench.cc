// JWT verifications per second (identity::verify): Ed25519 and RS256 (2048-bit) access tokens
// of a realistic size, against a key set of a few keys, plus the refusals a flood of forged
// tokens costs (bad signature, unknown kid, malformed). Run on a quiet machine; numbers belong
// in docs/benchmarks.md, not here.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "identity/jwt.h"

namespace {

namespace id = gatehouse::identity;

struct Setup {
  std::vector<std::unique_ptr<id::SigningKey>> keys;
  std::unique_ptr<id::Jwks> jwks;
  id::VerifyPolicy policy;
  std::chrono::system_clock::time_point now = std::chrono::system_clock::now();

  Setup() {
    std::string doc = "{\"keys\":[";
    // Two of each, as during a rotation.
    for (auto [alg, kid] :
         {std::pair{id::Alg::kEdDSA, "ed-1"}, std::pair{id::Alg::kEdDSA, "ed-2"},
          std::pair{id::Alg::kRS256, "rsa-1"}, std::pair{id::Alg::kRS256, "rsa-2"}}) {
      auto k = id::SigningKey::generate(alg, kid);
      if (!k) {
        std::abort();
      }
      doc += (keys.empty() ? "" : ",") + k->public_jwk();
      keys.push_back(std::make_unique<id::SigningKey>(std::move(*k)));
    }
    auto set = id::Jwks::parse(doc + "]}");
    if (!set) {
      std::abort();
    }
    jwks = std::make_unique<id::Jwks>(std::move(*set));
    policy.issuer = "http://127.0.0.1:8080/auth/main";
    policy.audiences = {"web"};
    policy.token_use = id::TokenUse::kAccess;
  }

  std::string token(std::size_t key) const {
    const auto t = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
    const std::string claims =
        "{\"sub\":\"9902295f-f5bf-4b9c-ad05-055edf420488\",\"iss\":\"" + policy.issuer +
        "\",\"client_id\":\"web\",\"token_use\":\"access\",\"scope\":\"openid profile\","
        "\"auth_time\":" +
        std::to_string(t) + ",\"iat\":" + std::to_string(t) +
        ",\"exp\":" + std::to_string(t + 3600) +
        ",\"jti\":\"4f1c0a6e2b7d49d8a1c3e5f7a9b0c2d4\",\"username\":\"alice\"}";
    auto tok = keys[key]->sign(claims);
    if (!tok) {
      std::abort();
    }
    return *tok;
  }
};

const Setup& setup() {
  static const Setup s;
  return s;
}

void verify_loop(benchmark::State& state, const std::string& token, id::JwtStatus want) {
  const Setup& s = setup();
  id::Claims claims;
  for (auto _ : state) {
    const id::JwtStatus st = id::verify(token, *s.jwks, s.policy, s.now, claims);
    if (st != want) {
      state.SkipWithError("unexpected verification result");
      break;
    }
    benchmark::DoNotOptimize(claims.sub.data());
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_VerifyEdDSA(benchmark::State& state) {
  verify_loop(state, setup().token(1), id::JwtStatus::kOk);
}
BENCHMARK(BM_VerifyEdDSA)->ThreadRange(1, 2)->UseRealTime();

void BM_VerifyRS256(benchmark::State& state) {
  verify_loop(state, setup().token(3), id::JwtStatus::kOk);
}
BENCHMARK(BM_VerifyRS256)->ThreadRange(1, 2)->UseRealTime();

// A forged token: right shape and kid, wrong signature (the cost of refusing a forgery flood).
void BM_RefuseBadSignatureEdDSA(benchmark::State& state) {
  std::string t = setup().token(0);
  t[t.size() - 10] = t[t.size() - 10] == 'A' ? 'B' : 'A';
  verify_loop(state, t, id::JwtStatus::kBadSignature);
}
BENCHMARK(BM_RefuseBadSignatureEdDSA);

void BM_RefuseBadSignatureRS256(benchmark::State& state) {
  std::string t = setup().token(2);
  t[t.size() - 10] = t[t.size() - 10] == 'A' ? 'B' : 'A';
  verify_loop(state, t, id::JwtStatus::kBadSignature);
}
BENCHMARK(BM_RefuseBadSignatureRS256);

// Refused before any signature check.
void BM_RefuseUnknownKid(benchmark::State& state) {
  verify_loop(state,
              id::compact("{\"alg\":\"EdDSA\",\"kid\":\"nope\"}", "{}", std::string(64, 'x')),
              id::JwtStatus::kUnknownKey);
}
BENCHMARK(BM_RefuseUnknownKid);

void BM_RefuseMalformed(benchmark::State& state) {
  verify_loop(state, "not.a-token", id::JwtStatus::kMalformed);
}
BENCHMARK(BM_RefuseMalformed);

}  // namespace

BENCHMARK_MAIN();
