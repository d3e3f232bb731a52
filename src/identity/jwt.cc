#include "identity/jwt.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <sodium.h>

#include <algorithm>
#include <boost/json.hpp>
#include <boost/json/basic_parser_impl.hpp>
#include <cmath>
#include <limits>

namespace gatehouse::identity {

namespace json = boost::json;

namespace {

// libsodium must be initialised once before use; sodium_init() is thread-safe and idempotent.
bool sodium_ready() {
  static const bool ok = sodium_init() >= 0;
  return ok;
}

// ---- base64url ----------------------------------------------------------------------------------

constexpr char kB64Url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// 0..63 for a base64url character, 64 otherwise.
constexpr std::array<std::uint8_t, 256> kB64Value = [] {
  std::array<std::uint8_t, 256> t{};
  for (auto& v : t) {
    v = 64;
  }
  for (std::uint8_t i = 0; i < 64; ++i) {
    t[static_cast<unsigned char>(kB64Url[i])] = i;
  }
  return t;
}();

// ---- a flat view of a JSON object ---------------------------------------------------------------
// JWT headers and payloads are read with a SAX handler rather than a DOM: a repeated top-level
// member is refused (RFC 7519 section 4 allows either refusing or taking the last; two readers of
// one token must never see two different claim sets), depth is bounded, and only the top level
// is kept. Arrays of scalars are flattened into their items; objects and nested arrays are
// recorded as present but their contents dropped.

enum class Kind : std::uint8_t { kString, kNumber, kBool, kNull, kArray, kObject };

struct Member {
  std::string name;
  Kind kind = Kind::kNull;
  std::string text;                // string value, number text, "true"/"false"
  double number = 0;               // kNumber
  std::vector<std::string> items;  // kArray: scalar items as text
  bool complex = false;            // kArray holding objects or arrays
};

constexpr std::size_t kMaxMembers = 256;

class FlatHandler {
 public:
  static constexpr std::size_t max_array_size = 4096;
  static constexpr std::size_t max_object_size = 4096;
  static constexpr std::size_t max_string_size = kMaxTokenBytes;
  static constexpr std::size_t max_key_size = 1024;

  explicit FlatHandler(std::vector<Member>& out) : out_(out) {}

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_object_begin(json::error_code& ec) {
    if (depth_ == 0) {
      ++depth_;
      return true;
    }
    return open(Kind::kObject, ec);
  }
  bool on_object_end(std::size_t, json::error_code&) {
    --depth_;
    return true;
  }
  bool on_array_begin(json::error_code& ec) {
    if (depth_ == 0) {
      ec = json::error::syntax;  // the document must be an object
      return false;
    }
    return open(Kind::kArray, ec);
  }
  bool on_array_end(std::size_t, json::error_code&) {
    --depth_;
    return true;
  }
  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    if (depth_ == 1) {
      key_.append(s.data(), s.size());
    }
    return true;
  }
  bool on_key(json::string_view s, std::size_t, json::error_code& ec) {
    if (depth_ != 1) {
      return true;
    }
    key_.append(s.data(), s.size());
    for (const Member& m : out_) {
      if (m.name == key_) {
        ec = json::error::syntax;  // repeated member
        return false;
      }
    }
    if (out_.size() >= kMaxMembers) {
      ec = json::error::object_too_large;
      return false;
    }
    out_.emplace_back();
    out_.back().name = std::move(key_);
    key_.clear();
    return true;
  }
  bool on_string_part(json::string_view s, std::size_t, json::error_code&) {
    text_.append(s.data(), s.size());
    return true;
  }
  bool on_string(json::string_view s, std::size_t, json::error_code& ec) {
    text_.append(s.data(), s.size());
    return scalar(Kind::kString, 0, ec);
  }
  bool on_number_part(json::string_view s, json::error_code&) {
    text_.append(s.data(), s.size());
    return true;
  }
  bool on_int64(std::int64_t v, json::string_view s, json::error_code& ec) {
    text_.append(s.data(), s.size());
    return scalar(Kind::kNumber, static_cast<double>(v), ec);
  }
  bool on_uint64(std::uint64_t v, json::string_view s, json::error_code& ec) {
    text_.append(s.data(), s.size());
    return scalar(Kind::kNumber, static_cast<double>(v), ec);
  }
  bool on_double(double v, json::string_view s, json::error_code& ec) {
    text_.append(s.data(), s.size());
    return scalar(Kind::kNumber, v, ec);
  }
  bool on_bool(bool v, json::error_code& ec) {
    text_ = v ? "true" : "false";
    return scalar(Kind::kBool, 0, ec);
  }
  bool on_null(json::error_code& ec) { return scalar(Kind::kNull, 0, ec); }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

 private:
  bool open(Kind kind, json::error_code& ec) {
    if (depth_ >= kMaxJsonDepth) {
      ec = json::error::too_deep;
      return false;
    }
    if (depth_ == 1) {
      out_.back().kind = kind;
    } else if (depth_ == 2 && out_.back().kind == Kind::kArray) {
      out_.back().complex = true;
    }
    ++depth_;
    return true;
  }
  bool scalar(Kind kind, double number, json::error_code& ec) {
    if (depth_ == 0) {
      ec = json::error::syntax;  // the document must be an object
      return false;
    }
    if (depth_ == 1) {
      Member& m = out_.back();
      m.kind = kind;
      m.number = number;
      m.text = std::move(text_);
    } else if (depth_ == 2 && out_.back().kind == Kind::kArray && kind != Kind::kNull) {
      out_.back().items.push_back(std::move(text_));
    }
    text_.clear();
    return true;
  }

  std::vector<Member>& out_;
  std::size_t depth_ = 0;
  std::string key_;
  std::string text_;
};

// Parses `text` as one JSON object into `out` (cleared first). False when it is not exactly one
// object, repeats a top-level member, nests deeper than kMaxJsonDepth or holds invalid UTF-8.
bool parse_flat(std::string_view text, std::vector<Member>& out) {
  out.clear();
  json::parse_options opts;
  opts.max_depth = kMaxJsonDepth + 1;
  json::basic_parser<FlatHandler> p(opts, out);
  json::error_code ec;
  const std::size_t used = p.write_some(false, text.data(), text.size(), ec);
  return !ec && used == text.size() && p.done();
}

const Member* member(const std::vector<Member>& ms, std::string_view name) {
  for (const Member& m : ms) {
    if (m.name == name) {
      return &m;
    }
  }
  return nullptr;
}

// A NumericDate as whole seconds, saturated to the int64 range (fractions are floored).
std::int64_t to_seconds(double v) {
  constexpr double kMax = 9.2e18;
  if (v >= kMax) {
    return std::numeric_limits<std::int64_t>::max();
  }
  if (v <= -kMax) {
    return std::numeric_limits<std::int64_t>::min();
  }
  return static_cast<std::int64_t>(std::floor(v));
}

// ---- OpenSSL helpers ----------------------------------------------------------------------------

// unique_ptr for OpenSSL objects, freed by their own function.
template <class T, auto Free>
struct Freer {
  void operator()(T* p) const noexcept { Free(p); }
};
template <class T, auto Free>
using Owned = std::unique_ptr<T, Freer<T, Free>>;
using PkeyPtr = Owned<EVP_PKEY, &EVP_PKEY_free>;
using BnPtr = Owned<BIGNUM, &BN_free>;
using MdCtxPtr = Owned<EVP_MD_CTX, &EVP_MD_CTX_free>;
using BioPtr = Owned<BIO, &BIO_free>;

constexpr int kMinRsaBits = 2048;
constexpr int kMaxRsaBits = 8192;

// An RSA public key from its modulus and exponent (big-endian bytes).
core::Result<PkeyPtr> rsa_public(std::string_view n, std::string_view e) {
  BnPtr bn_n(BN_bin2bn(reinterpret_cast<const unsigned char*>(n.data()), static_cast<int>(n.size()),
                       nullptr));
  BnPtr bn_e(BN_bin2bn(reinterpret_cast<const unsigned char*>(e.data()), static_cast<int>(e.size()),
                       nullptr));
  if (!bn_n || !bn_e) {
    return core::make_error(core::ErrorCode::kInternal, "out of memory");
  }
  const int bits = BN_num_bits(bn_n.get());
  if (bits < kMinRsaBits || bits > kMaxRsaBits) {
    return core::make_error(core::ErrorCode::kBadRequest, "RSA modulus of " + std::to_string(bits) +
                                                              " bits; 2048 to 8192 are accepted");
  }
  if (!BN_is_odd(bn_e.get()) || BN_num_bits(bn_e.get()) < 2 || BN_num_bits(bn_e.get()) > 64) {
    return core::make_error(core::ErrorCode::kBadRequest,
                            "RSA exponent must be odd, at least 3 and at most 64 bits");
  }
  OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
  if (bld == nullptr) {
    return core::make_error(core::ErrorCode::kInternal, "out of memory");
  }
  OSSL_PARAM* params = nullptr;
  if (OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n.get()) == 1 &&
      OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e.get()) == 1) {
    params = OSSL_PARAM_BLD_to_param(bld);
  }
  OSSL_PARAM_BLD_free(bld);
  if (params == nullptr) {
    return core::make_error(core::ErrorCode::kInternal, "cannot build RSA parameters");
  }
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr);
  EVP_PKEY* pkey = nullptr;
  const bool ok = ctx != nullptr && EVP_PKEY_fromdata_init(ctx) == 1 &&
                  EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) == 1;
  EVP_PKEY_CTX_free(ctx);
  OSSL_PARAM_free(params);
  if (!ok || pkey == nullptr) {
    EVP_PKEY_free(pkey);
    return core::make_error(core::ErrorCode::kBadRequest, "not a usable RSA public key");
  }
  return PkeyPtr(pkey);
}

bool rsa_verify(EVP_PKEY* pkey, std::string_view signed_part, std::string_view sig) {
  if (sig.size() != static_cast<std::size_t>(EVP_PKEY_get_size(pkey))) {
    return false;
  }
  MdCtxPtr ctx(EVP_MD_CTX_new());
  return ctx && EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, pkey) == 1 &&
         EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                          reinterpret_cast<const unsigned char*>(signed_part.data()),
                          signed_part.size()) == 1;
}

std::string bn_bytes(const BIGNUM* bn) {
  std::string out(static_cast<std::size_t>(BN_num_bytes(bn)), '\0');
  BN_bn2bin(bn, reinterpret_cast<unsigned char*>(out.data()));
  return out;
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  core::json_escape(out, s);
  out += '"';
  return out;
}

}  // namespace

// ---- public helpers -----------------------------------------------------------------------------

std::string_view alg_name(Alg a) noexcept { return a == Alg::kEdDSA ? "EdDSA" : "RS256"; }

std::optional<Alg> alg_from_name(std::string_view name) noexcept {
  if (name == "EdDSA") {
    return Alg::kEdDSA;
  }
  if (name == "RS256") {
    return Alg::kRS256;
  }
  return std::nullopt;
}

std::string base64url_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() * 4 + 2) / 3);
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const std::uint32_t v = (std::uint32_t{p[i]} << 16) | (std::uint32_t{p[i + 1]} << 8) | p[i + 2];
    out.push_back(kB64Url[(v >> 18) & 63]);
    out.push_back(kB64Url[(v >> 12) & 63]);
    out.push_back(kB64Url[(v >> 6) & 63]);
    out.push_back(kB64Url[v & 63]);
  }
  const std::size_t rest = bytes.size() - i;
  if (rest == 1) {
    const std::uint32_t v = std::uint32_t{p[i]} << 16;
    out.push_back(kB64Url[(v >> 18) & 63]);
    out.push_back(kB64Url[(v >> 12) & 63]);
  } else if (rest == 2) {
    const std::uint32_t v = (std::uint32_t{p[i]} << 16) | (std::uint32_t{p[i + 1]} << 8);
    out.push_back(kB64Url[(v >> 18) & 63]);
    out.push_back(kB64Url[(v >> 12) & 63]);
    out.push_back(kB64Url[(v >> 6) & 63]);
  }
  return out;
}

bool base64url_decode(std::string_view in, std::string& out) {
  out.clear();
  if (in.size() % 4 == 1) {
    return false;
  }
  out.reserve(in.size() * 3 / 4);
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    const std::uint8_t v = kB64Value[static_cast<unsigned char>(c)];
    if (v == 64) {
      return false;
    }
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  // The unused low bits of the last character must be zero: one spelling per byte string.
  return (acc & ((1u << bits) - 1)) == 0;
}

std::string compact(std::string_view header_json, std::string_view payload_json,
                    std::string_view signature) {
  std::string out = base64url_encode(header_json);
  out += '.';
  out += base64url_encode(payload_json);
  out += '.';
  out += base64url_encode(signature);
  return out;
}

std::string_view describe(JwtStatus s) noexcept {
  switch (s) {
    case JwtStatus::kOk:
      return "the token is valid";
    case JwtStatus::kMalformed:
      return "the token is malformed";
    case JwtStatus::kTooLarge:
      return "the token is too large";
    case JwtStatus::kAlgNotAllowed:
      return "the token's signature algorithm is not accepted";
    case JwtStatus::kUnknownKey:
      return "the token's signing key (kid) is unknown";
    case JwtStatus::kKeyMismatch:
      return "the token's key is for another algorithm";
    case JwtStatus::kBadSignature:
      return "the token's signature does not verify";
    case JwtStatus::kExpired:
      return "the token has expired";
    case JwtStatus::kNotYetValid:
      return "the token is not valid yet";
    case JwtStatus::kWrongIssuer:
      return "the token is from another issuer";
    case JwtStatus::kWrongAudience:
      return "the token is not meant for this audience";
    case JwtStatus::kWrongTokenUse:
      return "this kind of token (token_use) is not accepted here";
    case JwtStatus::kInsufficientScope:
      return "the token lacks a required scope";
  }
  return "the token is invalid";
}

bool is_authentication_failure(JwtStatus s) noexcept {
  return s != JwtStatus::kOk && s != JwtStatus::kWrongAudience && s != JwtStatus::kWrongTokenUse &&
         s != JwtStatus::kInsufficientScope;
}

// ---- Jwks ---------------------------------------------------------------------------------------

struct Jwks::Key {
  std::string kid;
  Alg alg = Alg::kEdDSA;
  std::array<unsigned char, crypto_sign_PUBLICKEYBYTES> ed25519{};
  PkeyPtr rsa;
};

Jwks::Jwks() = default;
Jwks::~Jwks() = default;
Jwks::Jwks(Jwks&&) noexcept = default;
Jwks& Jwks::operator=(Jwks&&) noexcept = default;

std::size_t Jwks::size() const noexcept { return keys_.size(); }
Alg Jwks::key_alg(const Key& k) noexcept { return k.alg; }

const Jwks::Key* Jwks::find(std::string_view kid) const noexcept {
  for (const auto& k : keys_) {
    if (k->kid == kid) {
      return k.get();
    }
  }
  return nullptr;
}

core::Result<Jwks> Jwks::parse(std::string_view text) {
  auto fail = [](std::string msg) {
    return core::make_error(core::ErrorCode::kBadRequest, std::move(msg));
  };
  if (text.size() > kMaxJwksBytes) {
    return fail("the JWKS is " + std::to_string(text.size()) + " bytes; the limit is " +
                std::to_string(kMaxJwksBytes));
  }
  json::parse_options opts;
  opts.max_depth = kMaxJsonDepth;
  json::error_code ec;
  const json::value doc = json::parse(json::string_view(text.data(), text.size()), ec, {}, opts);
  if (ec || !doc.is_object()) {
    return fail("the JWKS is not a JSON object");
  }
  const json::value* keys = doc.get_object().if_contains("keys");
  if (keys == nullptr || !keys->is_array()) {
    return fail("the JWKS has no \"keys\" array");
  }
  if (keys->get_array().size() > kMaxJwksKeys) {
    return fail("the JWKS has " + std::to_string(keys->get_array().size()) +
                " keys; the limit is " + std::to_string(kMaxJwksKeys));
  }
  if (!sodium_ready()) {
    return core::make_error(core::ErrorCode::kInternal, "libsodium failed to initialise");
  }
  Jwks out;
  std::size_t index = 0;
  for (const json::value& kv : keys->get_array()) {
    const std::string where = "keys[" + std::to_string(index++) + "]";
    if (!kv.is_object()) {
      return fail(where + ": not an object");
    }
    const json::object& o = kv.get_object();
    auto str = [&](const char* name) -> std::optional<std::string_view> {
      const json::value* v = o.if_contains(name);
      if (v == nullptr || !v->is_string()) {
        return std::nullopt;
      }
      return std::string_view(v->get_string().data(), v->get_string().size());
    };
    const auto kty = str("kty");
    if (!kty) {
      return fail(where + ": no \"kty\"");
    }
    std::optional<Alg> implied;
    if (*kty == "OKP" && str("crv") == std::optional<std::string_view>("Ed25519")) {
      implied = Alg::kEdDSA;
    } else if (*kty == "RSA") {
      implied = Alg::kRS256;
    }
    if (const json::value* use = o.if_contains("use"); use != nullptr && implied) {
      if (!use->is_string() || use->get_string() != "sig") {
        implied.reset();
      }
    }
    if (const json::value* ops = o.if_contains("key_ops"); ops != nullptr && implied) {
      bool verify = false;
      if (ops->is_array()) {
        for (const auto& op : ops->get_array()) {
          verify = verify || (op.is_string() && op.get_string() == "verify");
        }
      }
      if (!verify) {
        implied.reset();
      }
    }
    if (const json::value* alg = o.if_contains("alg"); alg != nullptr && implied) {
      if (!alg->is_string() ||
          alg_from_name(std::string_view(alg->get_string().data(), alg->get_string().size())) !=
              implied) {
        implied.reset();
      }
    }
    if (!implied) {
      ++out.skipped_;
      continue;
    }
    const auto kid = str("kid");
    if (!kid || kid->empty() || kid->size() > kMaxKidBytes) {
      return fail(where + ": a signing key needs a \"kid\" of 1 to " +
                  std::to_string(kMaxKidBytes) + " bytes");
    }
    if (out.find(*kid) != nullptr) {
      return fail(where + ": duplicate kid \"" + std::string(*kid) + "\"");
    }
    for (const char* priv : {"d", "p", "q", "dp", "dq", "qi", "k"}) {
      if (o.contains(priv)) {
        return fail(where + ": holds private key material (\"" + priv +
                    "\"); publish only public keys");
      }
    }
    auto key = std::make_unique<Key>();
    key->kid = std::string(*kid);
    key->alg = *implied;
    std::string raw;
    if (*implied == Alg::kEdDSA) {
      const auto x = str("x");
      if (!x || !base64url_decode(*x, raw) || raw.size() != crypto_sign_PUBLICKEYBYTES) {
        return fail(where + ": \"x\" must be 32 bytes of base64url");
      }
      std::copy(raw.begin(), raw.end(), key->ed25519.begin());
    } else {
      const auto n = str("n");
      const auto e = str("e");
      std::string raw_e;
      if (!n || !e || !base64url_decode(*n, raw) || !base64url_decode(*e, raw_e) || raw.empty() ||
          raw_e.empty()) {
        return fail(where + ": \"n\" and \"e\" must be base64url");
      }
      auto pk = rsa_public(raw, raw_e);
      if (!pk) {
        return fail(where + ": " + pk.error().message);
      }
      key->rsa = std::move(*pk);
    }
    out.keys_.push_back(std::move(key));
  }
  return out;
}

// ---- verify -------------------------------------------------------------------------------------

namespace {

// Scratch buffers reused by verify() on each thread, so a refused token costs no allocation once
// the thread has seen a token of that size.
struct Scratch {
  std::string header;
  std::string payload;
  std::string signature;
  std::vector<Member> header_members;
  std::vector<Member> claims;
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

bool optional_string(const std::vector<Member>& ms, std::string_view name, std::string& out) {
  out.clear();
  const Member* m = member(ms, name);
  if (m == nullptr) {
    return true;
  }
  if (m->kind != Kind::kString) {
    return false;
  }
  out = m->text;
  return true;
}

bool optional_date(const std::vector<Member>& ms, std::string_view name, std::int64_t& out,
                   bool& present) {
  out = 0;
  const Member* m = member(ms, name);
  present = m != nullptr;
  if (m == nullptr) {
    return true;
  }
  if (m->kind != Kind::kNumber) {
    return false;
  }
  out = to_seconds(m->number);
  return true;
}

void add_claim(Claims& out, const std::string& name, std::string value) {
  if (out.all.size() < kMaxClaims) {
    out.all.emplace_back(name, std::move(value));
  }
}

}  // namespace

JwtStatus verify(std::string_view token, const Jwks& keys, const VerifyPolicy& policy,
                 std::chrono::system_clock::time_point now, Claims& out) {
  if (token.size() > kMaxTokenBytes) {
    return JwtStatus::kTooLarge;
  }
  const std::size_t dot1 = token.find('.');
  if (dot1 == std::string_view::npos) {
    return JwtStatus::kMalformed;
  }
  const std::size_t dot2 = token.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || token.find('.', dot2 + 1) != std::string_view::npos) {
    return JwtStatus::kMalformed;
  }
  const std::string_view header_b64 = token.substr(0, dot1);
  const std::string_view payload_b64 = token.substr(dot1 + 1, dot2 - dot1 - 1);
  const std::string_view sig_b64 = token.substr(dot2 + 1);
  if (header_b64.empty() || payload_b64.empty() || sig_b64.empty()) {
    // An empty signature is what "alg":"none" tokens carry: refused as malformed before the
    // header is even read.
    return JwtStatus::kMalformed;
  }
  Scratch& s = scratch();
  if (!base64url_decode(header_b64, s.header) || !parse_flat(s.header, s.header_members)) {
    return JwtStatus::kMalformed;
  }
  const Member* alg_m = member(s.header_members, "alg");
  if (alg_m == nullptr || alg_m->kind != Kind::kString) {
    return JwtStatus::kMalformed;
  }
  const std::optional<Alg> alg = alg_from_name(alg_m->text);
  if (!alg || !contains(policy.algorithms, *alg)) {
    return JwtStatus::kAlgNotAllowed;
  }
  if (member(s.header_members, "crit") != nullptr) {
    return JwtStatus::kMalformed;  // RFC 7515 4.1.11: extensions we do not understand
  }
  const Member* kid_m = member(s.header_members, "kid");
  if (kid_m == nullptr || kid_m->kind != Kind::kString) {
    return JwtStatus::kUnknownKey;
  }
  const Jwks::Key* key = keys.find(kid_m->text);
  if (key == nullptr) {
    return JwtStatus::kUnknownKey;
  }
  if (Jwks::key_alg(*key) != *alg) {
    return JwtStatus::kKeyMismatch;
  }
  if (!base64url_decode(sig_b64, s.signature)) {
    return JwtStatus::kMalformed;
  }
  const std::string_view signed_part = token.substr(0, dot2);
  bool good = false;
  if (*alg == Alg::kEdDSA) {
    good = s.signature.size() == crypto_sign_BYTES && sodium_ready() &&
           crypto_sign_verify_detached(reinterpret_cast<const unsigned char*>(s.signature.data()),
                                       reinterpret_cast<const unsigned char*>(signed_part.data()),
                                       signed_part.size(), key->ed25519.data()) == 0;
  } else {
    good = rsa_verify(key->rsa.get(), signed_part, s.signature);
  }
  if (!good) {
    return JwtStatus::kBadSignature;
  }

  // The signature holds: now read the claims.
  if (!base64url_decode(payload_b64, s.payload) || !parse_flat(s.payload, s.claims)) {
    return JwtStatus::kMalformed;
  }
  const std::vector<Member>& c = s.claims;
  bool has_exp = false;
  bool has_nbf = false;
  bool has_iat = false;
  if (!optional_string(c, "sub", out.sub) || !optional_string(c, "iss", out.iss) ||
      !optional_string(c, "client_id", out.client_id) ||
      !optional_string(c, "token_use", out.token_use) ||
      !optional_date(c, "exp", out.exp, has_exp) || !optional_date(c, "nbf", out.nbf, has_nbf) ||
      !optional_date(c, "iat", out.iat, has_iat)) {
    return JwtStatus::kMalformed;
  }
  if (!optional_string(c, "username", out.username) || out.username.empty()) {
    if (!optional_string(c, "cognito:username", out.username)) {
      return JwtStatus::kMalformed;
    }
  }
  out.aud.clear();
  if (const Member* aud = member(c, "aud"); aud != nullptr) {
    if (aud->kind == Kind::kString) {
      out.aud.push_back(aud->text);
    } else if (aud->kind == Kind::kArray && !aud->complex) {
      out.aud = aud->items;
    } else {
      return JwtStatus::kMalformed;
    }
  }
  out.kid = kid_m->text;

  // Times, with the leeway on the side that accepts more (RFC 7519 4.1.4-4.1.6). `now` and the
  // leeway are small, so these comparisons cannot overflow whatever the token says.
  const std::int64_t t =
      std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  const std::int64_t leeway = std::clamp<std::int64_t>(policy.leeway.count(), 0, 300);
  if (!has_exp && policy.require_exp) {
    return JwtStatus::kMalformed;
  }
  if (has_exp && t - leeway >= out.exp) {
    return JwtStatus::kExpired;
  }
  if ((has_nbf && t + leeway < out.nbf) || (has_iat && out.iat > t + leeway)) {
    return JwtStatus::kNotYetValid;
  }
  if (!policy.issuer.empty() && out.iss != policy.issuer) {
    return JwtStatus::kWrongIssuer;
  }
  if (!policy.audiences.empty()) {
    const auto& want = policy.audiences;
    const bool ok = std::any_of(out.aud.begin(), out.aud.end(),
                                [&](const std::string& a) {
                                  return std::find(want.begin(), want.end(), a) != want.end();
                                }) ||
                    (!out.client_id.empty() &&
                     std::find(want.begin(), want.end(), out.client_id) != want.end());
    if (!ok) {
      return JwtStatus::kWrongAudience;
    }
  }
  if ((policy.token_use == TokenUse::kAccess && out.token_use != "access") ||
      (policy.token_use == TokenUse::kId && out.token_use != "id")) {
    return JwtStatus::kWrongTokenUse;
  }

  out.all.clear();
  for (const Member& m : c) {
    if (m.name == "scope" && m.kind == Kind::kString) {
      std::string_view rest = m.text;
      while (!rest.empty()) {
        const std::size_t sp = rest.find(' ');
        const std::string_view one = rest.substr(0, sp);
        if (!one.empty()) {
          add_claim(out, m.name, std::string(one));
        }
        rest = sp == std::string_view::npos ? std::string_view() : rest.substr(sp + 1);
      }
    } else if (m.kind == Kind::kString || m.kind == Kind::kNumber || m.kind == Kind::kBool) {
      add_claim(out, m.name, m.text);
    } else if (m.kind == Kind::kArray && !m.complex) {
      for (const auto& item : m.items) {
        add_claim(out, m.name, item);
      }
    }
  }
  if (!policy.scopes.empty()) {
    const bool ok = std::any_of(out.all.begin(), out.all.end(), [&](const auto& kv) {
      return kv.first == "scope" && std::find(policy.scopes.begin(), policy.scopes.end(),
                                              kv.second) != policy.scopes.end();
    });
    if (!ok) {
      return JwtStatus::kInsufficientScope;
    }
  }
  return JwtStatus::kOk;
}

// ---- SigningKey ---------------------------------------------------------------------------------

struct SigningKey::Impl {
  Alg alg = Alg::kEdDSA;
  std::string kid;
  std::array<unsigned char, crypto_sign_SECRETKEYBYTES> ed_secret{};  // seed || public key
  std::array<unsigned char, crypto_sign_PUBLICKEYBYTES> ed_public{};
  PkeyPtr rsa;

  ~Impl() { sodium_memzero(ed_secret.data(), ed_secret.size()); }
};

SigningKey::SigningKey(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
SigningKey::SigningKey(SigningKey&&) noexcept = default;
SigningKey& SigningKey::operator=(SigningKey&&) noexcept = default;
SigningKey::~SigningKey() = default;

Alg SigningKey::alg() const noexcept { return impl_->alg; }
const std::string& SigningKey::kid() const noexcept { return impl_->kid; }

core::Result<SigningKey> SigningKey::generate(Alg alg, std::string kid) {
  if (!sodium_ready()) {
    return core::make_error(core::ErrorCode::kInternal, "libsodium failed to initialise");
  }
  auto impl = std::make_unique<Impl>();
  impl->alg = alg;
  impl->kid = std::move(kid);
  if (alg == Alg::kEdDSA) {
    crypto_sign_keypair(impl->ed_public.data(), impl->ed_secret.data());
  } else {
    EVP_PKEY* pkey = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(kMinRsaBits));
    if (pkey == nullptr) {
      return core::make_error(core::ErrorCode::kInternal, "RSA key generation failed");
    }
    impl->rsa.reset(pkey);
  }
  return SigningKey(std::move(impl));
}

core::Result<SigningKey> SigningKey::from_private(Alg alg, std::string kid,
                                                  std::string_view private_text) {
  if (!sodium_ready()) {
    return core::make_error(core::ErrorCode::kInternal, "libsodium failed to initialise");
  }
  auto impl = std::make_unique<Impl>();
  impl->alg = alg;
  impl->kid = std::move(kid);
  if (alg == Alg::kEdDSA) {
    std::string seed;
    if (!base64url_decode(private_text, seed) || seed.size() != crypto_sign_SEEDBYTES) {
      sodium_memzero(seed.data(), seed.size());
      return core::make_error(core::ErrorCode::kInvalidArgument,
                              "an Ed25519 private key is 32 bytes of base64url");
    }
    crypto_sign_seed_keypair(impl->ed_public.data(), impl->ed_secret.data(),
                             reinterpret_cast<const unsigned char*>(seed.data()));
    sodium_memzero(seed.data(), seed.size());
  } else {
    BioPtr bio(BIO_new_mem_buf(private_text.data(), static_cast<int>(private_text.size())));
    EVP_PKEY* pkey = bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr;
    if (pkey == nullptr || EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA ||
        EVP_PKEY_get_bits(pkey) < kMinRsaBits) {
      EVP_PKEY_free(pkey);
      return core::make_error(core::ErrorCode::kInvalidArgument,
                              "not an RSA private key (PEM) of at least 2048 bits");
    }
    impl->rsa.reset(pkey);
  }
  return SigningKey(std::move(impl));
}

std::string SigningKey::private_text() const {
  if (impl_->alg == Alg::kEdDSA) {
    return base64url_encode(std::string_view(reinterpret_cast<const char*>(impl_->ed_secret.data()),
                                             crypto_sign_SEEDBYTES));
  }
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), impl_->rsa.get(), nullptr, nullptr, 0, nullptr,
                                       nullptr) != 1) {
    return {};
  }
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return n > 0 ? std::string(data, static_cast<std::size_t>(n)) : std::string();
}

std::string SigningKey::public_jwk() const {
  std::string out = "{";
  if (impl_->alg == Alg::kEdDSA) {
    out += "\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"";
    out += base64url_encode(std::string_view(reinterpret_cast<const char*>(impl_->ed_public.data()),
                                             impl_->ed_public.size()));
    out += "\",";
  } else {
    BIGNUM* n = nullptr;
    BIGNUM* e = nullptr;
    EVP_PKEY_get_bn_param(impl_->rsa.get(), OSSL_PKEY_PARAM_RSA_N, &n);
    EVP_PKEY_get_bn_param(impl_->rsa.get(), OSSL_PKEY_PARAM_RSA_E, &e);
    BnPtr hold_n(n);
    BnPtr hold_e(e);
    out += "\"kty\":\"RSA\",\"n\":\"";
    out += n != nullptr ? base64url_encode(bn_bytes(n)) : std::string();
    out += "\",\"e\":\"";
    out += e != nullptr ? base64url_encode(bn_bytes(e)) : std::string();
    out += "\",";
  }
  out += "\"kid\":" + json_string(impl_->kid) + ",\"alg\":\"" + std::string(alg_name(impl_->alg)) +
         "\",\"use\":\"sig\"}";
  return out;
}

core::Result<std::string> SigningKey::sign(std::string_view claims_json) const {
  const std::string header = "{\"alg\":\"" + std::string(alg_name(impl_->alg)) +
                             "\",\"kid\":" + json_string(impl_->kid) + ",\"typ\":\"JWT\"}";
  std::string token = base64url_encode(header);
  token += '.';
  token += base64url_encode(claims_json);
  std::string sig;
  if (impl_->alg == Alg::kEdDSA) {
    sig.resize(crypto_sign_BYTES);
    crypto_sign_detached(reinterpret_cast<unsigned char*>(sig.data()), nullptr,
                         reinterpret_cast<const unsigned char*>(token.data()), token.size(),
                         impl_->ed_secret.data());
  } else {
    MdCtxPtr ctx(EVP_MD_CTX_new());
    std::size_t len = 0;
    if (!ctx ||
        EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, impl_->rsa.get()) != 1 ||
        EVP_DigestSign(ctx.get(), nullptr, &len,
                       reinterpret_cast<const unsigned char*>(token.data()), token.size()) != 1) {
      return core::make_error(core::ErrorCode::kInternal, "RSA signing failed");
    }
    sig.resize(len);
    if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                       reinterpret_cast<const unsigned char*>(token.data()), token.size()) != 1) {
      return core::make_error(core::ErrorCode::kInternal, "RSA signing failed");
    }
    sig.resize(len);
  }
  token += '.';
  token += base64url_encode(sig);
  return token;
}

}  // namespace gatehouse::identity
