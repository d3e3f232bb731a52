// libFuzzer target for JWT verification, JWKS parsing and base64url. The first byte picks:
//   0: the rest is a compact token, verified against a fixed Ed25519 + RSA key set;
//   1: the rest is a JWKS document;
//   2: the rest is a claim set, signed with the fixed Ed25519 key and verified (reaches the
//      claim parser, which an unsigned token never does);
//   3: base64url, differentially: whatever decodes must encode back to the same text.
// Any input must give a status or an error, never a crash, a hang or an exception.
// Seeds: tests/fuzz/corpus/jwt/.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "identity/jwt.h"

namespace {

namespace id = gatehouse::identity;

struct Fixture {
  std::unique_ptr<id::SigningKey> ed;
  std::unique_ptr<id::SigningKey> rsa;
  std::unique_ptr<id::Jwks> jwks;
  id::VerifyPolicy policy;

  Fixture() {
    // A fixed Ed25519 seed keeps runs reproducible; the RSA key is only used as a verifier.
    auto e = id::SigningKey::from_private(id::Alg::kEdDSA, "ed",
                                          "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8");
    auto r = id::SigningKey::generate(id::Alg::kRS256, "rsa");
    if (!e || !r) {
      std::abort();
    }
    ed = std::make_unique<id::SigningKey>(std::move(*e));
    rsa = std::make_unique<id::SigningKey>(std::move(*r));
    auto set = id::Jwks::parse("{\"keys\":[" + ed->public_jwk() + "," + rsa->public_jwk() + "]}");
    if (!set) {
      std::abort();
    }
    jwks = std::make_unique<id::Jwks>(std::move(*set));
    policy.issuer = "https://issuer.test";
    policy.audiences = {"web"};
    policy.scopes = {"read"};
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Fixture f;
  if (size == 0) {
    return 0;
  }
  const std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1'800'000'000));
  id::Claims claims;
  switch (data[0] % 4) {
    case 0:
      (void)id::verify(in, *f.jwks, f.policy, now, claims);
      break;
    case 1: {
      auto set = id::Jwks::parse(in);
      if (set && set->size() > id::kMaxJwksKeys) {
        std::abort();
      }
      break;
    }
    case 2: {
      auto token = f.ed->sign(in);
      if (!token) {
        std::abort();
      }
      const id::JwtStatus s = id::verify(*token, *f.jwks, f.policy, now, claims);
      // A correctly signed token can fail on its claims, never on its signature or form.
      if (s == id::JwtStatus::kBadSignature || s == id::JwtStatus::kUnknownKey ||
          s == id::JwtStatus::kAlgNotAllowed) {
        std::abort();
      }
      if (s == id::JwtStatus::kOk && claims.all.size() > id::kMaxClaims) {
        std::abort();
      }
      break;
    }
    default: {
      std::string decoded;
      if (id::base64url_decode(in, decoded) && id::base64url_encode(decoded) != in) {
        std::abort();
      }
      break;
    }
  }
  return 0;
}
