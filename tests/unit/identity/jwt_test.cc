#include "identity/jwt.h"

#include <gtest/gtest.h>
#include <openssl/hmac.h>

#include <string>

namespace gatehouse::identity {
namespace {

using std::chrono::seconds;
using std::chrono::system_clock;

constexpr std::int64_t kNow = 1'800'000'000;  // 2027-01-15
const system_clock::time_point kNowTp = system_clock::time_point(seconds(kNow));

std::string jwks_of(std::initializer_list<const SigningKey*> keys) {
  std::string out = "{\"keys\":[";
  bool first = true;
  for (const SigningKey* k : keys) {
    out += first ? "" : ",";
    out += k->public_jwk();
    first = false;
  }
  return out + "]}";
}

std::string claims(std::int64_t exp = kNow + 600, std::string extra = "") {
  return "{\"sub\":\"u-1\",\"iss\":\"https://issuer.test\",\"aud\":\"web\",\"token_use\":\"id\","
         "\"iat\":" +
         std::to_string(kNow - 10) + ",\"exp\":" + std::to_string(exp) + extra + "}";
}

std::string hmac_sha256(std::string_view key, std::string_view data) {
  unsigned char out[32];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out, &len);
  return std::string(reinterpret_cast<char*>(out), len);
}

class JwtTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto e = SigningKey::generate(Alg::kEdDSA, "ed-1");
    ASSERT_TRUE(e);
    ed_ = std::make_unique<SigningKey>(std::move(*e));
    auto r = SigningKey::generate(Alg::kRS256, "rsa-1");
    ASSERT_TRUE(r);
    rsa_ = std::make_unique<SigningKey>(std::move(*r));
    auto set = Jwks::parse(jwks_of({ed_.get(), rsa_.get()}));
    ASSERT_TRUE(set) << set.error().message;
    jwks_ = std::make_unique<Jwks>(std::move(*set));
    policy_.issuer = "https://issuer.test";
    policy_.audiences = {"web"};
  }

  JwtStatus check(std::string_view token) { return verify(token, *jwks_, policy_, kNowTp, out_); }

  std::string sign(const SigningKey& k, const std::string& payload) {
    auto t = k.sign(payload);
    EXPECT_TRUE(t);
    return t ? *t : std::string();
  }

  std::unique_ptr<SigningKey> ed_;
  std::unique_ptr<SigningKey> rsa_;
  std::unique_ptr<Jwks> jwks_;
  VerifyPolicy policy_;
  Claims out_;
};

TEST_F(JwtTest, ValidTokensOfBothAlgorithmsVerify) {
  EXPECT_EQ(check(sign(*ed_, claims())), JwtStatus::kOk);
  EXPECT_EQ(out_.sub, "u-1");
  EXPECT_EQ(out_.kid, "ed-1");
  EXPECT_EQ(out_.exp, kNow + 600);
  EXPECT_EQ(check(sign(*rsa_, claims())), JwtStatus::kOk);
  EXPECT_EQ(out_.kid, "rsa-1");
}

TEST_F(JwtTest, AlgNoneIsRefused) {
  const std::string payload = claims();
  // The canonical attack: no signature at all.
  EXPECT_EQ(check(compact("{\"alg\":\"none\",\"typ\":\"JWT\"}", payload, "")),
            JwtStatus::kMalformed);
  EXPECT_EQ(check(base64url_encode("{\"alg\":\"none\"}") + "." + base64url_encode(payload) + "."),
            JwtStatus::kMalformed);
  // With some signature bytes and a known kid, "none" is still not an algorithm.
  for (const char* alg : {"none", "None", "NONE", "nOnE"}) {
    const std::string h = std::string("{\"alg\":\"") + alg + "\",\"kid\":\"ed-1\"}";
    EXPECT_EQ(check(compact(h, payload, "x")), JwtStatus::kAlgNotAllowed) << alg;
  }
}

TEST_F(JwtTest, Hs256SignedWithThePublicKeyIsRefused) {
  // Algorithm confusion: sign with HMAC using the verifier's public key as the secret, in every
  // form an implementation might feed to HMAC.
  const std::string payload = claims();
  for (const std::string& kid : {std::string("ed-1"), std::string("rsa-1")}) {
    for (const char* alg : {"HS256", "HS384", "HS512", "hs256"}) {
      const std::string header = std::string("{\"alg\":\"") + alg + "\",\"kid\":\"" + kid + "\"}";
      const std::string input = base64url_encode(header) + "." + base64url_encode(payload);
      const SigningKey& k = kid == "ed-1" ? *ed_ : *rsa_;
      for (const std::string& secret : {k.public_jwk(), jwks_of({&k})}) {
        const std::string token = input + "." + base64url_encode(hmac_sha256(secret, input));
        EXPECT_EQ(check(token), JwtStatus::kAlgNotAllowed) << alg << " " << kid;
      }
    }
  }
}

TEST_F(JwtTest, UnknownAlgorithmsAndAllowListAreEnforced) {
  const std::string payload = claims();
  for (const char* alg : {"ES256", "PS256", "RS512", "Ed25519", "eddsa", "rs256", ""}) {
    const std::string h = std::string("{\"alg\":\"") + alg + "\",\"kid\":\"ed-1\"}";
    EXPECT_EQ(check(compact(h, payload, "sig")), JwtStatus::kAlgNotAllowed) << alg;
  }
  EXPECT_EQ(check(compact("{\"alg\":5,\"kid\":\"ed-1\"}", payload, "sig")), JwtStatus::kMalformed);
  EXPECT_EQ(check(compact("{\"kid\":\"ed-1\"}", payload, "sig")), JwtStatus::kMalformed);
  policy_.algorithms = static_cast<AlgSet>(Alg::kEdDSA);
  EXPECT_EQ(check(sign(*rsa_, payload)), JwtStatus::kAlgNotAllowed);
  EXPECT_EQ(check(sign(*ed_, payload)), JwtStatus::kOk);
}

TEST_F(JwtTest, KeyIsBoundToItsAlgorithm) {
  // An RS256 header naming the Ed25519 key (and the reverse) never reaches a verifier.
  const std::string payload = claims();
  EXPECT_EQ(check(compact("{\"alg\":\"RS256\",\"kid\":\"ed-1\"}", payload, std::string(256, 'a'))),
            JwtStatus::kKeyMismatch);
  EXPECT_EQ(check(compact("{\"alg\":\"EdDSA\",\"kid\":\"rsa-1\"}", payload, std::string(64, 'a'))),
            JwtStatus::kKeyMismatch);
}

TEST_F(JwtTest, WrongOrMissingKidIsRefused) {
  auto other = SigningKey::generate(Alg::kEdDSA, "ed-2");
  ASSERT_TRUE(other);
  EXPECT_EQ(check(sign(*other, claims())), JwtStatus::kUnknownKey);
  // Same kid as a trusted key, different key material.
  auto impostor = SigningKey::generate(Alg::kEdDSA, "ed-1");
  ASSERT_TRUE(impostor);
  EXPECT_EQ(check(sign(*impostor, claims())), JwtStatus::kBadSignature);
  EXPECT_EQ(check(compact("{\"alg\":\"EdDSA\"}", claims(), std::string(64, 'a'))),
            JwtStatus::kUnknownKey);
  EXPECT_EQ(check(compact("{\"alg\":\"EdDSA\",\"kid\":7}", claims(), std::string(64, 'a'))),
            JwtStatus::kUnknownKey);
  // Keys named in the token itself are never used.
  const std::string h = "{\"alg\":\"EdDSA\",\"kid\":\"ed-9\",\"jwk\":" + other->public_jwk() +
                        ",\"jku\":\"http://127.0.0.1:1/jwks.json\"}";
  EXPECT_EQ(check(compact(h, claims(), std::string(64, 'a'))), JwtStatus::kUnknownKey);
}

TEST_F(JwtTest, TamperedPayloadOrSignatureFails) {
  for (const SigningKey* k : {ed_.get(), rsa_.get()}) {
    const std::string token = sign(*k, claims());
    const auto dot1 = token.find('.');
    const auto dot2 = token.rfind('.');
    // Swap in a different payload, keep header and signature.
    const std::string forged = token.substr(0, dot1 + 1) +
                               base64url_encode(claims(kNow + 600, ",\"admin\":true")) +
                               token.substr(dot2);
    EXPECT_EQ(check(forged), JwtStatus::kBadSignature);
    // Flip one bit of the signature.
    std::string sig;
    ASSERT_TRUE(base64url_decode(token.substr(dot2 + 1), sig));
    sig[sig.size() / 2] = static_cast<char>(sig[sig.size() / 2] ^ 1);
    EXPECT_EQ(check(token.substr(0, dot2 + 1) + base64url_encode(sig)), JwtStatus::kBadSignature);
    // Truncated and extended signatures.
    EXPECT_EQ(check(token.substr(0, dot2 + 1) + base64url_encode(sig.substr(1))),
              JwtStatus::kBadSignature);
    EXPECT_EQ(check(token + "AAAA"), JwtStatus::kBadSignature);
    // Header changed (a claim added): the signed input changes.
    EXPECT_EQ(check(base64url_encode("{\"alg\":\"" + std::string(alg_name(k->alg())) +
                                     "\",\"kid\":\"" + k->kid() + "\",\"x\":1}") +
                    token.substr(dot1)),
              JwtStatus::kBadSignature);
  }
}

TEST_F(JwtTest, NonCanonicalBase64IsRefused) {
  const std::string token = sign(*ed_, claims());
  // A 64-byte signature is 86 characters; the last one carries 2 unused bits.
  std::string bad = token;
  char& last = bad.back();
  last = last == 'A' ? 'B' : (last == 'Q' ? 'R' : static_cast<char>(last + 1));
  EXPECT_NE(check(bad), JwtStatus::kOk);
  EXPECT_EQ(check(token + "="), JwtStatus::kMalformed);
  EXPECT_EQ(check(" " + token), JwtStatus::kMalformed);
  std::string plus = token;
  plus[plus.find('.') - 1] = '+';
  EXPECT_EQ(check(plus), JwtStatus::kMalformed);
}

TEST_F(JwtTest, ExpiryAndNotBeforeWithBoundedLeeway) {
  policy_.leeway = seconds(30);
  EXPECT_EQ(check(sign(*ed_, claims(kNow - 31))), JwtStatus::kExpired);
  EXPECT_EQ(check(sign(*ed_, claims(kNow - 29))), JwtStatus::kOk);  // within the skew
  EXPECT_EQ(check(sign(*ed_, claims(kNow + 1, ",\"nbf\":" + std::to_string(kNow + 31)))),
            JwtStatus::kNotYetValid);
  EXPECT_EQ(check(sign(*ed_, claims(kNow + 100, ",\"nbf\":" + std::to_string(kNow + 29)))),
            JwtStatus::kOk);
  // iat in the future beyond the skew.
  const std::string future_iat =
      "{\"iss\":\"https://issuer.test\",\"aud\":\"web\",\"iat\":" + std::to_string(kNow + 120) +
      ",\"exp\":" + std::to_string(kNow + 600) + "}";
  EXPECT_EQ(check(sign(*ed_, future_iat)), JwtStatus::kNotYetValid);
  // The leeway is capped at 5 minutes whatever the policy says.
  policy_.leeway = seconds(1'000'000);
  EXPECT_EQ(check(sign(*ed_, claims(kNow - 301))), JwtStatus::kExpired);
  // A fractional NumericDate is floored; huge values saturate instead of overflowing.
  policy_.leeway = seconds(0);
  EXPECT_EQ(check(sign(*ed_, claims(kNow + 600, ",\"nbf\":1e300"))), JwtStatus::kNotYetValid);
  const std::string huge = "{\"iss\":\"https://issuer.test\",\"aud\":\"web\",\"exp\":-1e300}";
  EXPECT_EQ(check(sign(*ed_, huge)), JwtStatus::kExpired);
  const std::string frac =
      "{\"iss\":\"https://issuer.test\",\"aud\":\"web\",\"exp\":" + std::to_string(kNow) + ".9}";
  EXPECT_EQ(check(sign(*ed_, frac)), JwtStatus::kExpired);
}

TEST_F(JwtTest, ExpIsRequiredAndTyped) {
  EXPECT_EQ(check(sign(*ed_, "{\"iss\":\"https://issuer.test\",\"aud\":\"web\"}")),
            JwtStatus::kMalformed);
  EXPECT_EQ(check(sign(*ed_, "{\"iss\":\"https://issuer.test\",\"aud\":\"web\",\"exp\":\"" +
                                 std::to_string(kNow + 100) + "\"}")),
            JwtStatus::kMalformed);
  policy_.require_exp = false;
  EXPECT_EQ(check(sign(*ed_, "{\"iss\":\"https://issuer.test\",\"aud\":\"web\"}")), JwtStatus::kOk);
}

TEST_F(JwtTest, IssuerAudienceTokenUseAndScope) {
  policy_.issuer = "https://other.test";
  EXPECT_EQ(check(sign(*ed_, claims())), JwtStatus::kWrongIssuer);
  policy_.issuer = "https://issuer.test";
  policy_.audiences = {"mobile"};
  EXPECT_EQ(check(sign(*ed_, claims())), JwtStatus::kWrongAudience);
  EXPECT_FALSE(is_authentication_failure(JwtStatus::kWrongAudience));
  EXPECT_TRUE(is_authentication_failure(JwtStatus::kBadSignature));
  // aud as an array: any entry; access tokens carry client_id instead.
  EXPECT_EQ(
      check(sign(*ed_, "{\"iss\":\"https://issuer.test\",\"aud\":[\"a\",\"mobile\"],\"exp\":" +
                           std::to_string(kNow + 60) + "}")),
      JwtStatus::kOk);
  EXPECT_EQ(out_.aud.size(), 2u);
  const std::string access =
      "{\"iss\":\"https://issuer.test\",\"client_id\":\"mobile\","
      "\"token_use\":\"access\",\"scope\":\"openid  profile\",\"exp\":" +
      std::to_string(kNow + 60) + "}";
  EXPECT_EQ(check(sign(*ed_, access)), JwtStatus::kOk);
  policy_.token_use = TokenUse::kId;
  EXPECT_EQ(check(sign(*ed_, access)), JwtStatus::kWrongTokenUse);
  policy_.token_use = TokenUse::kAccess;
  EXPECT_EQ(check(sign(*ed_, access)), JwtStatus::kOk);
  policy_.scopes = {"admin"};
  EXPECT_EQ(check(sign(*ed_, access)), JwtStatus::kInsufficientScope);
  policy_.scopes = {"admin", "profile"};
  EXPECT_EQ(check(sign(*ed_, access)), JwtStatus::kOk);
  // aud of a wrong type.
  policy_.token_use = TokenUse::kAny;
  policy_.scopes.clear();
  EXPECT_EQ(check(sign(*ed_, "{\"aud\":{\"x\":1},\"exp\":" + std::to_string(kNow + 60) + "}")),
            JwtStatus::kMalformed);
}

TEST_F(JwtTest, ClaimsAreFlattenedForPolicies) {
  const std::string payload =
      "{\"sub\":\"u-1\",\"iss\":\"https://issuer.test\",\"aud\":\"web\",\"exp\":" +
      std::to_string(kNow + 60) +
      ",\"scope\":\"read write\",\"cognito:groups\":[\"admins\",\"ops\"],\"email_verified\":true,"
      "\"n\":1.5,\"address\":{\"street\":\"x\"},\"mixed\":[1,[2]],\"nul\":null}";
  ASSERT_EQ(check(sign(*ed_, payload)), JwtStatus::kOk);
  auto has = [&](std::string_view k, std::string_view v) {
    return std::find(out_.all.begin(), out_.all.end(),
                     std::pair<std::string, std::string>(std::string(k), std::string(v))) !=
           out_.all.end();
  };
  EXPECT_TRUE(has("sub", "u-1"));
  EXPECT_TRUE(has("scope", "read"));
  EXPECT_TRUE(has("scope", "write"));
  EXPECT_TRUE(has("cognito:groups", "admins"));
  EXPECT_TRUE(has("cognito:groups", "ops"));
  EXPECT_TRUE(has("email_verified", "true"));
  EXPECT_TRUE(has("n", "1.5"));
  for (const auto& [k, v] : out_.all) {
    EXPECT_NE(k, "address");
    EXPECT_NE(k, "mixed");
    EXPECT_NE(k, "nul");
  }
}

TEST_F(JwtTest, ClaimCountIsBounded) {
  std::string extra;
  for (int i = 0; i < 200; ++i) {
    extra += ",\"c" + std::to_string(i) + "\":\"v\"";
  }
  ASSERT_EQ(check(sign(*ed_, claims(kNow + 60, extra))), JwtStatus::kOk);
  EXPECT_EQ(out_.all.size(), kMaxClaims);
}

TEST_F(JwtTest, HostileStructureIsRefused) {
  const std::string good = sign(*ed_, claims());
  EXPECT_EQ(check(""), JwtStatus::kMalformed);
  EXPECT_EQ(check("."), JwtStatus::kMalformed);
  EXPECT_EQ(check(".."), JwtStatus::kMalformed);
  EXPECT_EQ(check("a.b"), JwtStatus::kMalformed);
  EXPECT_EQ(check(good + ".x"), JwtStatus::kMalformed);
  EXPECT_EQ(check("a.b.c.d.e"), JwtStatus::kMalformed);  // JWE compact form
  EXPECT_EQ(check(std::string(kMaxTokenBytes + 1, 'a')), JwtStatus::kTooLarge);
  // Header not an object / not JSON / repeated member / too deep / crit / bad UTF-8.
  EXPECT_EQ(check(compact("[\"EdDSA\"]", claims(), "s")), JwtStatus::kMalformed);
  EXPECT_EQ(check(compact("\"EdDSA\"", claims(), "s")), JwtStatus::kMalformed);
  EXPECT_EQ(check(compact("{\"alg\":\"EdDSA\"", claims(), "s")), JwtStatus::kMalformed);
  EXPECT_EQ(check(compact("{\"alg\":\"EdDSA\",\"kid\":\"ed-1\"} x", claims(), "s")),
            JwtStatus::kMalformed);
  EXPECT_EQ(check(compact("{\"alg\":\"none\",\"alg\":\"EdDSA\",\"kid\":\"ed-1\"}", claims(), "s")),
            JwtStatus::kMalformed);
  std::string deep = "{\"alg\":\"EdDSA\",\"kid\":\"ed-1\",\"x\":";
  for (int i = 0; i < 50; ++i) {
    deep += "[";
  }
  EXPECT_EQ(check(compact(deep, claims(), "s")), JwtStatus::kMalformed);
  EXPECT_EQ(check(compact("{\"alg\":\"EdDSA\",\"kid\":\"ed-1\",\"crit\":[\"b64\"]}", claims(),
                          std::string(64, 'a'))),
            JwtStatus::kMalformed);
  EXPECT_EQ(check(compact("{\"alg\":\"EdDSA\",\"kid\":\"ed-1\",\"x\":\"\xff\xfe\"}", claims(),
                          std::string(64, 'a'))),
            JwtStatus::kMalformed);
  // Payloads that verify but are not claim sets.
  for (const char* p : {"[]", "\"x\"", "12", "null", "{", "{\"exp\":1,\"exp\":2}",
                        "{\"sub\":\"a\",\"sub\":\"b\",\"exp\":9999999999}", "{\"iss\":[1]}",
                        "{\"sub\":5,\"exp\":9999999999}", "{\"\xc3\x28\":1}"}) {
    EXPECT_EQ(check(sign(*ed_, p)), JwtStatus::kMalformed) << p;
  }
}

TEST(Base64Url, RoundTripAndRejects) {
  std::string out;
  for (std::string s : {"", "f", "fo", "foo", "foob", "fooba", "foobar", "\xff\xfe\x00\x01"}) {
    ASSERT_TRUE(base64url_decode(base64url_encode(s), out));
    EXPECT_EQ(out, s);
  }
  EXPECT_EQ(base64url_encode("\xfb\xff"), "-_8");
  EXPECT_FALSE(base64url_decode("Zg==", out));
  EXPECT_FALSE(base64url_decode("Z", out));
  EXPECT_FALSE(base64url_decode("Zh", out));  // unused bits set
  EXPECT_TRUE(base64url_decode("Zg", out));
  EXPECT_FALSE(base64url_decode("Z g", out));
  EXPECT_FALSE(base64url_decode("Zm+v", out));
  EXPECT_FALSE(base64url_decode(std::string_view("Zm\0v", 4), out));
}

TEST(JwksParse, HostileDocuments) {
  auto k = SigningKey::generate(Alg::kEdDSA, "k1");
  ASSERT_TRUE(k);
  const std::string jwk = k->public_jwk();
  auto bad = [](std::string_view doc) { return !Jwks::parse(doc).has_value(); };
  EXPECT_TRUE(bad(""));
  EXPECT_TRUE(bad("[]"));
  EXPECT_TRUE(bad("{}"));
  EXPECT_TRUE(bad("{\"keys\":{}}"));
  EXPECT_TRUE(bad("{\"keys\":[1]}"));
  EXPECT_TRUE(bad("{\"keys\":[{}]}"));
  EXPECT_TRUE(bad("{\"keys\":[" + jwk + "," + jwk + "]}"));  // duplicate kid
  EXPECT_TRUE(
      bad("{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"a\",\"x\":\"AAAA\"}]}"));
  EXPECT_TRUE(bad("{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"" +
                  std::string(43, 'A') + "\"}]}"));  // no kid
  EXPECT_TRUE(bad("{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"a\",\"x\":\"" +
                  std::string(43, 'A') + "\",\"d\":\"" + std::string(43, 'A') + "\"}]}"));
  // RSA: a 1024-bit modulus, an even exponent.
  EXPECT_TRUE(bad("{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"r\",\"n\":\"" +
                  base64url_encode(std::string(128, '\xff')) + "\",\"e\":\"AQAB\"}]}"));
  EXPECT_TRUE(bad("{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"r\",\"n\":\"" +
                  base64url_encode(std::string(256, '\xff')) + "\",\"e\":\"Ag\"}]}"));
  EXPECT_TRUE(bad(std::string(kMaxJwksBytes + 1, ' ')));
  std::string many = "{\"keys\":[";
  for (std::size_t i = 0; i <= kMaxJwksKeys; ++i) {
    many += (i ? "," : "") + std::string("{\"kty\":\"EC\"}");
  }
  EXPECT_TRUE(bad(many + "]}"));

  // Keys Gatehouse cannot use are skipped, not fatal.
  auto set = Jwks::parse(
      "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"e\"},"
      "{\"kty\":\"oct\",\"k\":\"c2VjcmV0\",\"kid\":\"h\"}," +
      jwk + "]}");
  ASSERT_TRUE(set) << set.error().message;
  EXPECT_EQ(set->size(), 1u);
  EXPECT_EQ(set->skipped(), 2u);
  EXPECT_NE(set->find("k1"), nullptr);
  EXPECT_EQ(set->find("e"), nullptr);
  // use: enc, key_ops without verify, or an alg the key type does not imply: skipped.
  for (const char* extra : {",\"use\":\"enc\"", ",\"key_ops\":[\"encrypt\"]", ",\"alg\":\"HS256\"",
                            ",\"alg\":\"RS256\""}) {
    std::string j = jwk;
    j.insert(j.size() - 1, extra);
    auto s = Jwks::parse("{\"keys\":[" + j + "]}");
    ASSERT_TRUE(s) << extra;
    EXPECT_EQ(s->size(), 0u) << extra;
  }
}

TEST(SigningKeyTest, PrivateTextRoundTrips) {
  for (Alg alg : {Alg::kEdDSA, Alg::kRS256}) {
    auto k = SigningKey::generate(alg, "k");
    ASSERT_TRUE(k);
    auto again = SigningKey::from_private(alg, "k", k->private_text());
    ASSERT_TRUE(again) << again.error().message;
    EXPECT_EQ(again->public_jwk(), k->public_jwk());
    auto set = Jwks::parse("{\"keys\":[" + k->public_jwk() + "]}");
    ASSERT_TRUE(set);
    auto token = again->sign("{\"exp\":" + std::to_string(kNow + 60) + "}");
    ASSERT_TRUE(token);
    Claims c;
    EXPECT_EQ(verify(*token, *set, VerifyPolicy{}, kNowTp, c), JwtStatus::kOk);
  }
  EXPECT_FALSE(SigningKey::from_private(Alg::kEdDSA, "k", "short"));
  EXPECT_FALSE(SigningKey::from_private(Alg::kRS256, "k", "-----BEGIN PRIVATE KEY-----\nxx"));
  auto ed = SigningKey::generate(Alg::kEdDSA, "k");
  ASSERT_TRUE(ed);
  EXPECT_FALSE(SigningKey::from_private(Alg::kRS256, "k", ed->private_text()));
}

}  // namespace
}  // namespace gatehouse::identity
