#pragma once
// gatehouse::identity — JSON Web Tokens: the JWS compact form (RFC 7515) of a JWT (RFC 7519),
// JSON Web Key sets (RFC 7517) and the two signature algorithms Gatehouse accepts:
//
//   EdDSA  Ed25519 (RFC 8037), libsodium; keys {"kty":"OKP","crv":"Ed25519","x":...}
//   RS256  RSASSA-PKCS1-v1_5 with SHA-256, OpenSSL; keys {"kty":"RSA","n":...,"e":...},
//          2048 to 8192 bits
//
// Nothing else is ever accepted: not "none", not HMAC (so a public key can never be used as an
// HMAC secret: there is no HMAC code at all), not ES*/PS*. A key only verifies the algorithm of
// its type (and its "alg" member when present), so a token cannot pick how its key is used.
// Header members that point at other keys (jku, jwk, x5u, x5c) are ignored: keys come only from
// the configured set. A "crit" header is refused (no extension is understood).
//
// Included only by the identity module, the gateway's JWT authorizer, tests, the fuzz target and
// the benchmark: keep it out of widely included headers.

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/core.h"

namespace gatehouse::identity {

// Bounds on untrusted input; anything over them is refused.
inline constexpr std::size_t kMaxTokenBytes = 8192;                    // the whole compact token
inline constexpr std::size_t kMaxJwksBytes = std::size_t{256} * 1024;  // a JWKS document
inline constexpr std::size_t kMaxJwksKeys = 64;                        // keys in one set
inline constexpr std::size_t kMaxClaims = 64;    // (name, value) pairs kept per token
inline constexpr std::size_t kMaxJsonDepth = 8;  // nesting inside a header or payload
inline constexpr std::size_t kMaxKidBytes = 256;

enum class Alg : std::uint8_t { kEdDSA = 1, kRS256 = 2 };
// A set of algorithms as a bit mask of Alg values.
using AlgSet = std::uint8_t;
inline constexpr AlgSet kAllAlgs =
    static_cast<AlgSet>(Alg::kEdDSA) | static_cast<AlgSet>(Alg::kRS256);
[[nodiscard]] constexpr bool contains(AlgSet set, Alg a) noexcept {
  return (set & static_cast<AlgSet>(a)) != 0;
}
// "EdDSA" or "RS256".
[[nodiscard]] std::string_view alg_name(Alg a) noexcept;
// The algorithm called exactly `name` ("EdDSA", "RS256"); nullopt for anything else ("none",
// "HS256", "ES256", "eddsa" ...).
[[nodiscard]] std::optional<Alg> alg_from_name(std::string_view name) noexcept;

// base64url without padding (RFC 7515 section 2).
[[nodiscard]] std::string base64url_encode(std::string_view bytes);
// Decodes `in` into `out` (replaced). False for padding, whitespace, any character outside the
// alphabet, a length of 1 mod 4, or non-zero unused trailing bits (so every byte string has one
// accepted spelling and a tampered spelling cannot verify).
[[nodiscard]] bool base64url_decode(std::string_view in, std::string& out);

// A set of verification keys. Immutable once built; thread-safe to share (shared_ptr<const>).
class Jwks {
 public:
  struct Key;  // one parsed key (jwt.cc)

  Jwks();
  ~Jwks();
  Jwks(Jwks&&) noexcept;
  Jwks& operator=(Jwks&&) noexcept;
  Jwks(const Jwks&) = delete;
  Jwks& operator=(const Jwks&) = delete;

  // Parses a JWKS document {"keys":[...]}. Keys Gatehouse cannot use are skipped and counted
  // in skipped(): other key types or curves (EC, oct, X25519), "use" other than "sig",
  // "key_ops" without "verify", an "alg" other than the one the key type implies. A usable key
  // must have a "kid" (1..kMaxKidBytes bytes, unique in the set). Errors (kBadRequest, with a
  // message naming the key): not JSON, over kMaxJwksBytes or kMaxJwksKeys, no "keys" array, a
  // duplicate kid, a malformed usable key (bad base64url, an Ed25519 "x" that is not 32 bytes,
  // an RSA modulus under 2048 or over 8192 bits, an even or tiny exponent, private members
  // such as "d" present: a public set must not carry private keys).
  [[nodiscard]] static core::Result<Jwks> parse(std::string_view json);

  // The key with this kid, or nullptr.
  [[nodiscard]] const Key* find(std::string_view kid) const noexcept;
  [[nodiscard]] std::size_t size() const noexcept;
  [[nodiscard]] std::size_t skipped() const noexcept { return skipped_; }
  // The algorithm key `k` verifies.
  [[nodiscard]] static Alg key_alg(const Key& k) noexcept;

 private:
  std::vector<std::unique_ptr<Key>> keys_;
  std::size_t skipped_ = 0;
};

// What a token must satisfy besides its signature.
enum class TokenUse : std::uint8_t { kAny, kAccess, kId };

struct VerifyPolicy {
  AlgSet algorithms = kAllAlgs;  // allow-list; a token with another alg is refused
  std::string issuer;            // "iss" must equal it exactly; "" = not checked
  // When not empty, the token is accepted only if its "aud" (a string or an array: any entry)
  // or its "client_id" equals one of these.
  std::vector<std::string> audiences;
  TokenUse token_use = TokenUse::kAny;  // kAccess / kId: "token_use" must be "access" / "id"
  // When not empty, the token's "scope" (space-separated) must hold at least one of these.
  std::vector<std::string> scopes;
  std::chrono::seconds leeway{60};  // tolerated clock skew for exp, nbf and iat; 0..300 s
  bool require_exp = true;          // a token without "exp" is refused
};

// Why a token was refused. kOk means accepted.
enum class JwtStatus : std::uint8_t {
  kOk,
  kMalformed,      // not three base64url segments of JSON objects, bad claim types, crit ...
  kTooLarge,       // over kMaxTokenBytes
  kAlgNotAllowed,  // "none", HS*, anything unknown, or not in the allow-list
  kUnknownKey,     // no "kid", or no key with that kid in the set
  kKeyMismatch,    // the key with that kid is for another algorithm
  kBadSignature,
  kExpired,      // now >= exp + leeway
  kNotYetValid,  // now < nbf - leeway, or iat in the future beyond the leeway
  kWrongIssuer,
  kWrongAudience,
  kWrongTokenUse,
  kInsufficientScope,
};
// A short English description ("the token has expired"), static storage.
[[nodiscard]] std::string_view describe(JwtStatus s) noexcept;
// Whether a refusal means "this credential is not valid" (401) rather than "it is valid but not
// for this" (403: audience, token_use, scope).
[[nodiscard]] bool is_authentication_failure(JwtStatus s) noexcept;

// The verified token. Reusable: verify() overwrites every member.
struct Claims {
  std::string sub;
  std::string iss;
  std::string client_id;
  std::string token_use;
  std::string username;  // "username" or "cognito:username"
  std::string kid;
  std::vector<std::string> aud;
  std::int64_t exp = 0;  // seconds since the epoch; 0 = absent
  std::int64_t nbf = 0;
  std::int64_t iat = 0;
  // Every top-level claim whose value is a string, a number or a boolean (numbers and booleans
  // as their JSON text), one pair per element for arrays of those, and "scope" split on spaces
  // into one pair per scope. Objects and nested arrays are left out. At most kMaxClaims pairs;
  // the rest are dropped. These become policy condition keys (docs/identity.md).
  std::vector<std::pair<std::string, std::string>> all;
};

// Verifies a compact JWS token against `keys` and `policy` at wall time `now`: size, form,
// header (alg allow-list, kid lookup, key/alg match), signature, then exp/nbf/iat with the
// leeway, iss, aud/client_id, token_use and scope, in that order, returning the first failure.
// Only on kOk is `out` complete. Never throws on bad input; thread-safe (keys are read-only).
[[nodiscard]] JwtStatus verify(std::string_view token, const Jwks& keys, const VerifyPolicy& policy,
                               std::chrono::system_clock::time_point now, Claims& out);

// A private signing key. Move-only; thread-safe to use from several threads once built.
class SigningKey {
 public:
  struct Impl;

  SigningKey(SigningKey&&) noexcept;
  SigningKey& operator=(SigningKey&&) noexcept;
  ~SigningKey();

  // A fresh key: Ed25519 from libsodium, RSA 2048 bits from OpenSSL. Errors: kInternal.
  [[nodiscard]] static core::Result<SigningKey> generate(Alg alg, std::string kid);
  // A key from private_text() of an earlier key. Errors: kInvalidArgument when malformed.
  [[nodiscard]] static core::Result<SigningKey> from_private(Alg alg, std::string kid,
                                                             std::string_view private_text);

  [[nodiscard]] Alg alg() const noexcept;
  [[nodiscard]] const std::string& kid() const noexcept;
  // The private key as text for the store: base64url of the 32-byte seed (Ed25519) or a
  // PKCS#8 PEM (RSA). Secret.
  [[nodiscard]] std::string private_text() const;
  // The public key as one JWK object: kty, (crv), kid, alg, use "sig", x or n/e.
  [[nodiscard]] std::string public_jwk() const;
  // A compact token: header {"alg","kid","typ":"JWT"} and `claims_json` (a JSON object, used
  // as given), signed. Errors: kInternal when the crypto library fails.
  [[nodiscard]] core::Result<std::string> sign(std::string_view claims_json) const;

 private:
  explicit SigningKey(std::unique_ptr<Impl> impl) noexcept;
  std::unique_ptr<Impl> impl_;
};

// Encodes header and payload JSON as given and appends `signature` (raw bytes): for tests that
// build hostile tokens, and for sign().
[[nodiscard]] std::string compact(std::string_view header_json, std::string_view payload_json,
                                  std::string_view signature);

}  // namespace gatehouse::identity
