// AWS Signature Version 4 verification: Authorization header and presigned query, canonical
// request as AWS builds it, signing-key cache, payload checks and the aws-chunked decoder.
// Reference:
// https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html and
// the S3 pages on streaming uploads (sigv4-streaming.html, sigv4-streaming-trailers.html).
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "auth/auth.h"
#include "auth/sigv4_util.h"

namespace gatehouse::auth {

using core::ErrorCode;
using core::make_error;

namespace {

constexpr std::string_view kAlgorithm = "AWS4-HMAC-SHA256";
constexpr std::string_view kTerminator = "aws4_request";
constexpr std::string_view kEmptyHash =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
constexpr std::string_view kUnsignedPayload = "UNSIGNED-PAYLOAD";
constexpr std::string_view kStreamingSigned = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
constexpr std::string_view kStreamingUnsignedTrailer = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
constexpr std::size_t kMaxQueryParams = 256;
constexpr std::size_t kMaxIdLen = 128;

using Key = std::array<unsigned char, 32>;

bool is_lower_hex(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

using core::iequals;

bool istarts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  return s;
}

// First value of a header (case-insensitive); `found` tells absent from empty.
std::string_view header(const SigV4Request& r, std::string_view name, bool* found = nullptr) {
  for (const auto& h : r.headers) {
    if (iequals(h.name, name)) {
      if (found != nullptr) {
        *found = true;
      }
      return h.value;
    }
  }
  if (found != nullptr) {
    *found = false;
  }
  return {};
}

bool unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.' || c == '~';
}

// RFC 3986 percent-encoding with upper-case hex, as SigV4 wants; '/' kept when `keep_slash`.
void uri_encode(std::string& out, std::string_view s, bool keep_slash) {
  static constexpr char kHexUp[] = "0123456789ABCDEF";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (unreserved(c) || (keep_slash && c == '/')) {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHexUp[c >> 4]);
      out.push_back(kHexUp[c & 0xf]);
    }
  }
}

using core::hex_value;

// Percent-decoding, appended to `out`; a '%' not followed by two hex digits stays literal.
void uri_decode(std::string& out, std::string_view s) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      const int hi = hex_value(s[i + 1]);
      const int lo = hex_value(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
        continue;
      }
    }
    out.push_back(s[i]);
  }
}

struct QueryParam {
  std::string name;   // encoded
  std::string value;  // encoded
  std::string raw_name;
  std::string raw_value;  // decoded
};

// Buffers reused from one request to the next (a verifier's, or a one-off for the static
// helpers), so a warm verification allocates nothing for them.
struct Scratch {
  std::vector<QueryParam> params;  // the first n_params are this request's
  std::size_t n_params = 0;
  std::vector<const QueryParam*> sorted;
  std::vector<std::string_view> names;
  std::vector<std::string_view> segs;
  std::string seg;
};

// Canonical URI. S3: each segment decoded then encoded once (no normalisation: "a//b" and
// "a/./b" are distinct keys). Other services: dot segments removed and empty segments dropped
// (RFC 3986 section 6 as the test suite expects), then the path as sent is encoded again.
void canonical_uri(std::string& out, std::string_view path, bool s3, Scratch& sc) {
  if (path.empty()) {
    out.push_back('/');
    return;
  }
  if (s3) {
    std::size_t start = 0;
    while (start <= path.size()) {
      const std::size_t slash = path.find('/', start);
      const std::size_t end = slash == std::string_view::npos ? path.size() : slash;
      sc.seg.clear();
      uri_decode(sc.seg, path.substr(start, end - start));
      uri_encode(out, sc.seg, false);
      if (slash == std::string_view::npos) {
        break;
      }
      out.push_back('/');
      start = slash + 1;
    }
    return;
  }
  std::vector<std::string_view>& segs = sc.segs;
  segs.clear();
  std::size_t start = 0;
  while (true) {
    const std::size_t slash = path.find('/', start);
    const std::size_t end = slash == std::string_view::npos ? path.size() : slash;
    const std::string_view seg = path.substr(start, end - start);
    if (seg == "..") {
      if (!segs.empty()) {
        segs.pop_back();
      }
    } else if (!seg.empty() && seg != ".") {
      segs.push_back(seg);
    }
    if (slash == std::string_view::npos) {
      break;
    }
    start = slash + 1;
  }
  // A path that ends in a directory ("/a/", "/a/.", "/a/b/..") keeps its trailing slash.
  const std::string_view last = path.substr(path.rfind('/') + 1);
  const bool trailing = last.empty() || last == "." || last == "..";
  out.push_back('/');
  for (std::size_t i = 0; i < segs.size(); ++i) {
    if (i > 0) {
      out.push_back('/');
    }
    uri_encode(out, segs[i], false);
  }
  if (!segs.empty() && trailing) {
    out.push_back('/');
  }
}

// Splits the query into sc.params[0, sc.n_params), reusing the elements' storage.
core::Result<void> parse_query(std::string_view q, Scratch& sc) {
  std::vector<QueryParam>& out = sc.params;
  std::size_t& n = sc.n_params;
  n = 0;
  while (!q.empty()) {
    const std::size_t amp = q.find('&');
    const std::string_view part = q.substr(0, amp);
    q = amp == std::string_view::npos ? std::string_view() : q.substr(amp + 1);
    if (part.empty()) {
      continue;
    }
    if (n >= kMaxQueryParams) {
      return make_error(ErrorCode::kAuthorizationQueryError, "too many query parameters");
    }
    const std::size_t eq = part.find('=');
    if (n == out.size()) {
      out.emplace_back();
    }
    QueryParam& p = out[n++];
    p.raw_name.clear();
    p.raw_value.clear();
    p.name.clear();
    p.value.clear();
    uri_decode(p.raw_name, part.substr(0, eq));
    if (eq != std::string_view::npos) {
      uri_decode(p.raw_value, part.substr(eq + 1));
    }
    uri_encode(p.name, p.raw_name, false);
    uri_encode(p.value, p.raw_value, false);
  }
  return {};
}

// Appends "name:value" for one signed header: every value of the name, in order, trimmed, with
// runs of spaces folded into one, joined by ','.
void canonical_header(std::string& out, const SigV4Request& r, std::string_view name) {
  out.append(name);
  out.push_back(':');
  bool first = true;
  for (const auto& h : r.headers) {
    if (!iequals(h.name, name)) {
      continue;
    }
    if (!first) {
      out.push_back(',');
    }
    first = false;
    const std::string_view v = trim(h.value);
    bool space = false;
    for (char c : v) {
      if (c == ' ' || c == '\t') {
        space = true;
        continue;
      }
      if (space) {
        out.push_back(' ');
        space = false;
      }
      out.push_back(c);
    }
  }
  out.push_back('\n');
}

bool valid_header_name(std::string_view n) {
  if (n.empty() || n.size() > 256) {
    return false;
  }
  return std::all_of(n.begin(), n.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
  });
}

// Splits and checks "a;b;c": lower-case tokens, strictly ascending, at most the limit.
bool split_signed_headers(std::string_view s, std::vector<std::string_view>& out) {
  out.clear();
  while (true) {
    const std::size_t semi = s.find(';');
    const std::string_view n = s.substr(0, semi);
    if (!valid_header_name(n) || out.size() >= kSigV4MaxSignedHeaders ||
        (!out.empty() && !(out.back() < n))) {
      return false;
    }
    out.push_back(n);
    if (semi == std::string_view::npos) {
      return true;
    }
    s.remove_prefix(semi + 1);
  }
}

void to_hex(std::string& out, const unsigned char* p, std::size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (std::size_t i = 0; i < n; ++i) {
    out.push_back(kHex[p[i] >> 4]);
    out.push_back(kHex[p[i] & 0xf]);
  }
}

Key hmac(std::span<const unsigned char> key, std::string_view data) {
  Key out{};
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(), &len);
  return out;
}

// HMAC-SHA256 of `data` as 64 lower-case hex digits, without allocating.
std::array<char, 64> hmac_hex(const Key& key, std::string_view data) {
  static constexpr char kHex[] = "0123456789abcdef";
  const Key mac = hmac(key, data);
  std::array<char, 64> out;
  for (std::size_t i = 0; i < mac.size(); ++i) {
    out[2 * i] = kHex[mac[i] >> 4];
    out[2 * i + 1] = kHex[mac[i] & 0xf];
  }
  return out;
}

std::string_view view(const std::array<char, 64>& a) { return {a.data(), a.size()}; }

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

// "YYYYMMDDTHHMMSSZ" → seconds since the epoch.
bool parse_amz_date(std::string_view s, std::int64_t& out) {
  if (s.size() != 16 || s[8] != 'T' || s[15] != 'Z') {
    return false;
  }
  auto num = [&](std::size_t pos, std::size_t len, unsigned& v) {
    v = 0;
    for (std::size_t i = pos; i < pos + len; ++i) {
      if (s[i] < '0' || s[i] > '9') {
        return false;
      }
      v = v * 10 + static_cast<unsigned>(s[i] - '0');
    }
    return true;
  };
  unsigned y, mo, d, h, mi, se;
  if (!num(0, 4, y) || !num(4, 2, mo) || !num(6, 2, d) || !num(9, 2, h) || !num(11, 2, mi) ||
      !num(13, 2, se) || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60) {
    return false;
  }
  out = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se;
  return true;
}

// The parsed signature parameters, from the header or the query: views into the Authorization
// header or the decoded query parameters (Scratch::params), valid while those are.
struct AuthParams {
  std::string_view access_key_id;
  std::string_view date;  // YYYYMMDD of the scope
  std::string_view region;
  std::string_view service;
  std::string_view signed_headers;
  std::string_view signature;
  std::string_view amz_date;
  std::int64_t expires = -1;  // presigned only
  bool presigned = false;
};

core::Result<void> parse_credential(std::string_view cred, AuthParams& p, ErrorCode code) {
  std::array<std::string_view, 5> parts;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const std::size_t slash = cred.find('/');
    if ((slash == std::string_view::npos) != (i == parts.size() - 1)) {
      return make_error(code,
                        "the Credential must be <key id>/<date>/<region>/<service>/"
                        "aws4_request");
    }
    parts[i] = cred.substr(0, slash);
    cred = slash == std::string_view::npos ? std::string_view() : cred.substr(slash + 1);
  }
  if (parts[0].empty() || parts[0].size() > kMaxIdLen || parts[1].size() != 8 ||
      !std::all_of(parts[1].begin(), parts[1].end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      parts[2].empty() || parts[2].size() > 64 || parts[3].empty() || parts[3].size() > 64 ||
      parts[4] != kTerminator) {
    return make_error(code,
                      "the Credential must be <key id>/<date>/<region>/<service>/"
                      "aws4_request");
  }
  p.access_key_id = parts[0];
  p.date = parts[1];
  p.region = parts[2];
  p.service = parts[3];
  return {};
}

core::Result<AuthParams> parse_authorization(std::string_view v) {
  constexpr auto kMalformed = ErrorCode::kAuthorizationHeaderMalformed;
  AuthParams p;
  v = trim(v);
  if (v.substr(0, kAlgorithm.size()) != kAlgorithm || v.size() == kAlgorithm.size() ||
      v[kAlgorithm.size()] != ' ') {
    return make_error(kMalformed, "the Authorization header must start with AWS4-HMAC-SHA256");
  }
  v.remove_prefix(kAlgorithm.size() + 1);
  bool have_cred = false, have_signed = false, have_sig = false;
  while (!v.empty()) {
    const std::size_t comma = v.find(',');
    const std::string_view item = trim(v.substr(0, comma));
    v = comma == std::string_view::npos ? std::string_view() : v.substr(comma + 1);
    const std::size_t eq = item.find('=');
    if (eq == std::string_view::npos) {
      return make_error(kMalformed, "Authorization header components must be name=value");
    }
    const std::string_view name = item.substr(0, eq);
    const std::string_view value = item.substr(eq + 1);
    if (name == "Credential" && !have_cred) {
      have_cred = true;
      if (auto r = parse_credential(value, p, kMalformed); !r) {
        return tl::unexpected(r.error());
      }
    } else if (name == "SignedHeaders" && !have_signed) {
      have_signed = true;
      p.signed_headers = value;
    } else if (name == "Signature" && !have_sig) {
      have_sig = true;
      p.signature = value;
    } else {
      return make_error(kMalformed, "unknown or repeated Authorization header component");
    }
  }
  if (!have_cred || !have_signed || !have_sig) {
    return make_error(kMalformed,
                      "the Authorization header needs Credential, SignedHeaders "
                      "and Signature");
  }
  return p;
}

core::Result<AuthParams> parse_presigned(std::span<const QueryParam> q) {
  constexpr auto kBad = ErrorCode::kAuthorizationQueryError;
  AuthParams p;
  p.presigned = true;
  const std::string* algo = nullptr;
  const std::string* cred = nullptr;
  const std::string* expires = nullptr;
  bool have_signed = false, have_sig = false, have_date = false;
  for (const auto& param : q) {
    const std::string& n = param.raw_name;
    auto once = [&](bool& seen) {
      const bool first = !seen;
      seen = true;
      return first;
    };
    bool dup = false;
    if (n == "X-Amz-Algorithm") {
      dup = algo != nullptr;
      algo = &param.raw_value;
    } else if (n == "X-Amz-Credential") {
      dup = cred != nullptr;
      cred = &param.raw_value;
    } else if (n == "X-Amz-Expires") {
      dup = expires != nullptr;
      expires = &param.raw_value;
    } else if (n == "X-Amz-SignedHeaders") {
      dup = !once(have_signed);
      p.signed_headers = param.raw_value;
    } else if (n == "X-Amz-Signature") {
      dup = !once(have_sig);
      p.signature = param.raw_value;
    } else if (n == "X-Amz-Date") {
      dup = !once(have_date);
      p.amz_date = param.raw_value;
    } else if (n == "X-Amz-Security-Token") {
      return make_error(ErrorCode::kInvalidArgument,
                        "session tokens (X-Amz-Security-Token) are not accepted");
    }
    if (dup) {
      return make_error(kBad, "a presigned query parameter is repeated");
    }
  }
  if (algo == nullptr || *algo != kAlgorithm) {
    return make_error(kBad, "X-Amz-Algorithm must be AWS4-HMAC-SHA256");
  }
  if (cred == nullptr || !have_signed || !have_sig || !have_date || expires == nullptr) {
    return make_error(kBad,
                      "a presigned URL needs X-Amz-Credential, X-Amz-Date, X-Amz-Expires, "
                      "X-Amz-SignedHeaders and X-Amz-Signature");
  }
  if (auto r = parse_credential(*cred, p, kBad); !r) {
    return tl::unexpected(r.error());
  }
  if (expires->empty() || expires->size() > 7 ||
      !std::all_of(expires->begin(), expires->end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return make_error(kBad, "X-Amz-Expires must be a number of seconds");
  }
  p.expires = std::stoll(*expires);
  if (p.expires < 1 || p.expires > kSigV4MaxPresignSeconds) {
    return make_error(kBad, "X-Amz-Expires must be between 1 and 604800 seconds (7 days)");
  }
  return p;
}

}  // namespace

// ------------------------------------------------------------------------------------------------

struct SigV4Verifier::Cache {
  struct Entry {
    std::string tag;  // access key id + '/' + date/region/service
    std::string secret;
    Key key{};
  };
  std::array<Entry, 64> entries;
  Scratch presign;    // the presigned query's parameters (AuthParams views them)
  Scratch canonical;  // canonical_request's buffers
  std::string tag;
};

SigV4Verifier::SigV4Verifier(std::string region)
    : region_(std::move(region)), cache_(std::make_unique<Cache>()) {}

SigV4Verifier::~SigV4Verifier() {
  for (auto& e : cache_->entries) {
    OPENSSL_cleanse(e.key.data(), e.key.size());
  }
}

namespace {

// The canonical request of `req` into `out` (replacing its content), up to and including
// `payload_hash`.
core::Result<void> build_canonical(const SigV4Request& req, std::string_view signed_headers,
                                   std::string_view payload_hash, bool s3, bool presigned,
                                   Scratch& sc, std::string& out) {
  if (!split_signed_headers(signed_headers, sc.names)) {
    return make_error(
        presigned ? ErrorCode::kAuthorizationQueryError : ErrorCode::kAuthorizationHeaderMalformed,
        "SignedHeaders must be 1 to 64 lower-case header names, sorted, separated "
        "by ';'");
  }
  if (auto r = parse_query(req.query, sc); !r) {
    return r;
  }
  out.clear();
  out.append(req.method);
  out.push_back('\n');
  canonical_uri(out, req.path, s3, sc);
  out.push_back('\n');
  sc.sorted.clear();
  for (std::size_t i = 0; i < sc.n_params; ++i) {
    const QueryParam& p = sc.params[i];
    if (presigned && p.raw_name == "X-Amz-Signature") {
      continue;
    }
    sc.sorted.push_back(&p);
  }
  std::sort(sc.sorted.begin(), sc.sorted.end(), [](const QueryParam* a, const QueryParam* b) {
    return a->name != b->name ? a->name < b->name : a->value < b->value;
  });
  for (std::size_t i = 0; i < sc.sorted.size(); ++i) {
    if (i > 0) {
      out.push_back('&');
    }
    out.append(sc.sorted[i]->name);
    out.push_back('=');
    out.append(sc.sorted[i]->value);
  }
  out.push_back('\n');
  for (const auto n : sc.names) {
    canonical_header(out, req, n);
  }
  out.push_back('\n');
  out.append(signed_headers);
  out.push_back('\n');
  out.append(payload_hash);
  return {};
}

// The string to sign, appended to `out`.
void append_string_to_sign(std::string& out, std::string_view amz_date, std::string_view scope,
                           std::string_view canonical) {
  out.append(kAlgorithm);
  out.push_back('\n');
  out.append(amz_date);
  out.push_back('\n');
  out.append(scope);
  out.push_back('\n');
  std::array<char, 64> h;
  core::sha256_hex(canonical, h);
  out.append(h.data(), h.size());
}

}  // namespace

core::Result<std::string> SigV4Verifier::canonical_request(const SigV4Request& req,
                                                           std::string_view signed_headers,
                                                           std::string_view payload_hash, bool s3,
                                                           bool presigned) {
  Scratch sc;
  std::string out;
  if (auto r = build_canonical(req, signed_headers, payload_hash, s3, presigned, sc, out); !r) {
    return tl::unexpected(r.error());
  }
  return out;
}

std::string SigV4Verifier::string_to_sign(std::string_view amz_date, std::string_view scope,
                                          std::string_view canonical) {
  std::string out;
  append_string_to_sign(out, amz_date, scope, canonical);
  return out;
}

namespace {

// The final step shared by begin() and finish(): string to sign, HMAC, constant-time compare.
core::Result<void> check_signature(SigV4State& st, std::string_view payload_hash) {
  // Per thread: a verifier is used by one thread at a time, and this is used at once.
  thread_local std::string sts;
  const std::size_t base = st.canonical.size();
  st.canonical.append(payload_hash);
  sts.clear();
  append_string_to_sign(sts, st.amz_date, st.scope, st.canonical);
  st.canonical.resize(base);
  if (!core::constant_time_equal(view(hmac_hex(st.signing_key, sts)), st.signature)) {
    return make_error(ErrorCode::kSignatureDoesNotMatch,
                      "the request signature we calculated does not match the signature you "
                      "provided; check your key and signing method");
  }
  st.verified = true;
  return {};
}

}  // namespace

core::Result<void> SigV4Verifier::begin(const SigV4Request& req, const CredentialIndex& keys,
                                        std::chrono::system_clock::time_point now, SigV4State& st) {
  st.mode = PayloadMode::kNone;
  st.verified = false;
  st.principal.clear();
  st.access_key_id.clear();
  st.has_decoded_length = false;
  st.decoded_length = 0;
  st.trailer.clear();
  st.declared_hash.clear();

  bool has_authz = false;
  const std::string_view authz = header(req, "authorization", &has_authz);
  const bool presigned_query = req.query.find("X-Amz-Algorithm=") != std::string_view::npos ||
                               req.query.find("X-Amz-Signature=") != std::string_view::npos;
  if (has_authz && presigned_query) {
    return make_error(ErrorCode::kInvalidArgument,
                      "only one authentication mechanism is allowed: the Authorization header or "
                      "the X-Amz-* query parameters");
  }
  if (!has_authz && !presigned_query) {
    return make_error(ErrorCode::kMissingAuthentication,
                      "this route requires an AWS Signature Version 4");
  }
  core::Result<AuthParams> parsed;
  if (has_authz) {
    parsed = parse_authorization(authz);
  } else {
    Scratch& q = cache_->presign;
    if (auto r = parse_query(req.query, q); !r) {
      return r;
    }
    parsed = parse_presigned(std::span<const QueryParam>(q.params.data(), q.n_params));
  }
  if (!parsed) {
    return tl::unexpected(parsed.error());
  }
  AuthParams& p = *parsed;
  const auto malformed =
      p.presigned ? ErrorCode::kAuthorizationQueryError : ErrorCode::kAuthorizationHeaderMalformed;
  if (p.signature.size() != 64 || !is_lower_hex(p.signature)) {
    return make_error(malformed, "the Signature must be 64 lower-case hex digits");
  }
  bool has_token = false;
  (void)header(req, "x-amz-security-token", &has_token);
  if (has_token) {
    return make_error(ErrorCode::kInvalidArgument,
                      "session tokens (X-Amz-Security-Token) are not accepted");
  }
  if (!p.presigned) {
    p.amz_date = header(req, "x-amz-date");
  }
  std::int64_t t = 0;
  if (!parse_amz_date(p.amz_date, t)) {
    return make_error(malformed, p.presigned ? "X-Amz-Date must be YYYYMMDDTHHMMSSZ"
                                             : "the X-Amz-Date header (YYYYMMDDTHHMMSSZ) is "
                                               "required");
  }
  if (p.amz_date.substr(0, 8) != p.date) {
    return make_error(malformed, "the Credential date must be the date of X-Amz-Date");
  }
  if (p.region != region_) {
    return make_error(malformed, "the region '" + std::string(p.region) +
                                     "' is wrong; expecting '" + region_ + "'");
  }
  std::vector<std::string_view>& names = cache_->canonical.names;
  if (!split_signed_headers(p.signed_headers, names)) {
    return make_error(malformed,
                      "SignedHeaders must be 1 to 64 lower-case header names, sorted, "
                      "separated by ';'");
  }
  if (!std::binary_search(names.begin(), names.end(), std::string_view("host"))) {
    return make_error(malformed, "the host header must be signed");
  }
  for (const auto& h : req.headers) {
    if (istarts_with(h.name, "x-amz-")) {
      // Lower-cased on the stack: a name longer than any signable one cannot be signed.
      std::array<char, 256> buf;
      const std::size_t len = std::min(h.name.size(), buf.size());
      std::transform(h.name.begin(), h.name.begin() + static_cast<std::ptrdiff_t>(len), buf.begin(),
                     core::ascii_lower);
      const std::string_view n(buf.data(), len);
      if (h.name.size() > buf.size() || !std::binary_search(names.begin(), names.end(), n)) {
        return make_error(malformed,
                          "every x-amz-* header must be signed (" + std::string(n) + " is not)");
      }
    }
  }

  // The key before the time: an unknown key is the more useful answer.
  const Credential* cred = keys.find(p.access_key_id);
  if (cred == nullptr) {
    return make_error(ErrorCode::kInvalidAccessKeyId,
                      "the access key id does not exist in our records");
  }
  const std::int64_t now_s =
      std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  const std::int64_t skew = std::chrono::seconds(kSigV4MaxSkew).count();
  if (p.presigned) {
    if (t - now_s > skew) {
      return make_error(ErrorCode::kRequestTimeTooSkewed,
                        "the presigned URL's X-Amz-Date is in the future");
    }
    if (now_s > t + p.expires) {
      return make_error(ErrorCode::kRequestExpired, "request has expired");
    }
  } else if (t - now_s > skew || now_s - t > skew) {
    return make_error(ErrorCode::kRequestTimeTooSkewed,
                      "the difference between the request time and the current time is too "
                      "large (over 15 minutes)");
  }

  // Payload mode.
  bool has_sha = false;
  const std::string_view sha = trim(header(req, "x-amz-content-sha256", &has_sha));
  std::string_view payload_hash;
  if (!has_sha) {
    // A presigned S3 URL covers UNSIGNED-PAYLOAD; other services' presigned URLs (botocore's
    // SigV4QueryAuth) cover the payload's hash, like a signed header would.
    if (p.presigned && p.service == "s3") {
      st.mode = PayloadMode::kUnsigned;
      payload_hash = kUnsignedPayload;
    } else if (req.body_expected) {
      st.mode = PayloadMode::kBodyHash;
    } else {
      st.mode = PayloadMode::kNone;
      payload_hash = kEmptyHash;
    }
  } else if (sha == kUnsignedPayload) {
    st.mode = PayloadMode::kUnsigned;
    payload_hash = sha;
  } else if (sha.size() == 64 && is_lower_hex(sha)) {
    st.mode = req.body_expected ? PayloadMode::kDeclaredHash : PayloadMode::kNone;
    if (!req.body_expected && sha != kEmptyHash) {
      return make_error(ErrorCode::kContentSha256Mismatch,
                        "the x-amz-content-sha256 you specified did not match what we received");
    }
    st.declared_hash = sha;
    payload_hash = sha;
  } else if (sha == kStreamingSigned || sha == kStreamingUnsignedTrailer) {
    st.mode = sha == kStreamingSigned ? PayloadMode::kStreamingSigned
                                      : PayloadMode::kStreamingUnsignedTrailer;
    payload_hash = sha;
    if (!req.body_expected) {
      return make_error(ErrorCode::kIncompleteBody, "a streaming upload without a body");
    }
    const std::string_view dl = trim(header(req, "x-amz-decoded-content-length"));
    if (!dl.empty()) {
      if (dl.size() > 15 ||
          !std::all_of(dl.begin(), dl.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return make_error(ErrorCode::kInvalidArgument,
                          "x-amz-decoded-content-length must be a decimal number");
      }
      st.decoded_length = std::stoull(std::string(dl));
      st.has_decoded_length = true;
    } else if (st.mode == PayloadMode::kStreamingSigned) {
      return make_error(ErrorCode::kLengthRequired,
                        "a streaming upload needs x-amz-decoded-content-length");
    }
    if (st.mode == PayloadMode::kStreamingUnsignedTrailer) {
      const std::string_view tr = trim(header(req, "x-amz-trailer"));
      std::string n(tr);
      std::transform(n.begin(), n.end(), n.begin(), core::ascii_lower);
      if (n != "x-amz-checksum-crc32" && n != "x-amz-checksum-crc32c" &&
          n != "x-amz-checksum-sha1" && n != "x-amz-checksum-sha256") {
        return make_error(ErrorCode::kInvalidArgument,
                          "x-amz-trailer must name x-amz-checksum-crc32, -crc32c, -sha1 or "
                          "-sha256");
      }
      st.trailer = std::move(n);
    }
  } else if (sha.substr(0, 10) == "STREAMING-") {
    return make_error(ErrorCode::kNotImplemented,
                      "this x-amz-content-sha256 streaming mode is not supported");
  } else {
    return make_error(ErrorCode::kInvalidArgument,
                      "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, a supported STREAMING- "
                      "value or the hex SHA-256 of the payload");
  }

  // Canonical request up to the payload hash.
  const bool s3 = p.service == "s3";
  if (auto c = build_canonical(req, p.signed_headers, "", s3, p.presigned, cache_->canonical,
                               st.canonical);
      !c) {
    return c;
  }
  st.amz_date.assign(p.amz_date);
  st.scope.clear();
  st.scope.append(p.date).append("/").append(p.region).append("/").append(p.service);
  st.scope.append("/").append(kTerminator);
  st.signature.assign(p.signature);
  st.access_key_id.assign(p.access_key_id);

  // Signing key, from the cache when this key already signed for this day, region and service.
  std::string& tag = cache_->tag;
  tag.clear();
  tag.append(p.access_key_id).append("/").append(st.scope);
  auto& e = cache_->entries[std::hash<std::string>{}(tag) % cache_->entries.size()];
  if (e.tag != tag || e.secret != cred->secret) {
    const std::string k0 = "AWS4" + cred->secret;
    const Key k_date = hmac({reinterpret_cast<const unsigned char*>(k0.data()), k0.size()}, p.date);
    const Key k_region = hmac(k_date, p.region);
    const Key k_service = hmac(k_region, p.service);
    e.key = hmac(k_service, kTerminator);
    e.tag = tag;
    e.secret = cred->secret;
  }
  st.signing_key = e.key;

  if (st.mode != PayloadMode::kBodyHash) {
    if (auto r = check_signature(st, payload_hash); !r) {
      return r;
    }
  }
  st.principal.assign(cred->key.principal);
  return {};
}

core::Result<void> SigV4Verifier::finish(SigV4State& st, std::string_view body,
                                         std::string& payload) {
  switch (st.mode) {
    case PayloadMode::kNone:
      if (!body.empty()) {
        return make_error(ErrorCode::kContentSha256Mismatch,
                          "a body arrived that the signature does not cover");
      }
      return {};
    case PayloadMode::kUnsigned:
      return {};
    case PayloadMode::kBodyHash: {
      std::array<char, 64> h;
      core::sha256_hex(body, h);
      return check_signature(st, std::string_view(h.data(), h.size()));
    }
    case PayloadMode::kDeclaredHash: {
      std::array<char, 64> h;
      core::sha256_hex(body, h);
      if (!core::constant_time_equal(std::string_view(h.data(), h.size()), st.declared_hash)) {
        return make_error(ErrorCode::kContentSha256Mismatch,
                          "the x-amz-content-sha256 you specified did not match what we "
                          "received");
      }
      return {};
    }
    case PayloadMode::kStreamingSigned:
    case PayloadMode::kStreamingUnsignedTrailer: {
      payload.clear();
      ChunkDecoder d(st);
      if (auto r = d.feed(body, payload); !r) {
        return r;
      }
      return d.finish();
    }
  }
  return {};
}

// ------------------------------------------------------------------------------------------------
// aws-chunked

struct ChunkDecoder::Digest {
  EVP_MD_CTX* chunk = nullptr;    // SHA-256 of the current chunk (signed mode)
  EVP_MD_CTX* payload = nullptr;  // sha1/sha256 of the whole payload (trailer mode)
  ~Digest() {
    EVP_MD_CTX_free(chunk);
    EVP_MD_CTX_free(payload);
  }
};

ChunkDecoder::ChunkDecoder(const SigV4State& st)
    : st_(st),
      signed_(st.mode == PayloadMode::kStreamingSigned),
      prev_sig_(st.signature),
      digest_(std::make_unique<Digest>()) {
  if (signed_) {
    digest_->chunk = EVP_MD_CTX_new();
  } else if (st.trailer == "x-amz-checksum-sha256" || st.trailer == "x-amz-checksum-sha1") {
    digest_->payload = EVP_MD_CTX_new();
    EVP_DigestInit_ex(digest_->payload,
                      st.trailer == "x-amz-checksum-sha1" ? EVP_sha1() : EVP_sha256(), nullptr);
  }
}

ChunkDecoder::~ChunkDecoder() = default;

core::Result<void> ChunkDecoder::start_chunk() {
  // line_ is the size line without CRLF: "<hex>[;chunk-signature=<64 hex>]" (signed) or
  // "<hex>[;extensions]" (unsigned).
  const std::size_t semi = line_.find(';');
  const std::string_view hex = std::string_view(line_).substr(0, semi);
  if (hex.empty() || hex.size() > 8) {
    return make_error(ErrorCode::kInvalidChunk, "malformed aws-chunked chunk size");
  }
  std::uint64_t n = 0;
  for (char c : hex) {
    const int v = hex_value(c);
    if (v < 0) {
      return make_error(ErrorCode::kInvalidChunk, "malformed aws-chunked chunk size");
    }
    n = n * 16 + static_cast<std::uint64_t>(v);
  }
  if (n > kSigV4MaxChunkBytes) {
    return make_error(ErrorCode::kInvalidChunk, "an aws-chunked chunk exceeds 16 MiB");
  }
  if (signed_) {
    constexpr std::string_view kExt = ";chunk-signature=";
    const std::string_view rest =
        semi == std::string::npos ? std::string_view() : std::string_view(line_).substr(semi);
    if (rest.size() != kExt.size() + 64 || rest.substr(0, kExt.size()) != kExt ||
        !is_lower_hex(rest.substr(kExt.size()))) {
      return make_error(ErrorCode::kInvalidChunk, "an aws-chunked chunk lacks its chunk-signature");
    }
    chunk_sig_ = rest.substr(kExt.size());
    EVP_DigestInit_ex(digest_->chunk, EVP_sha256(), nullptr);
  }
  want_ = n;
  return {};
}

core::Result<void> ChunkDecoder::end_chunk() {
  if (!signed_) {
    return {};
  }
  std::array<unsigned char, 32> h{};
  unsigned int len = 0;
  EVP_DigestFinal_ex(digest_->chunk, h.data(), &len);
  std::string sts;
  sts.reserve(256);
  sts.append("AWS4-HMAC-SHA256-PAYLOAD\n");
  sts.append(st_.amz_date);
  sts.push_back('\n');
  sts.append(st_.scope);
  sts.push_back('\n');
  sts.append(prev_sig_);
  sts.push_back('\n');
  sts.append(kEmptyHash);
  sts.push_back('\n');
  to_hex(sts, h.data(), h.size());
  const std::array<char, 64> mine = hmac_hex(st_.signing_key, sts);
  if (!core::constant_time_equal(view(mine), chunk_sig_)) {
    return make_error(ErrorCode::kSignatureDoesNotMatch,
                      "an aws-chunked chunk signature does not match");
  }
  prev_sig_.assign(mine.data(), mine.size());
  return {};
}

core::Result<void> ChunkDecoder::check_trailer() {
  std::string mine;
  if (st_.trailer == "x-amz-checksum-crc32" || st_.trailer == "x-amz-checksum-crc32c") {
    const unsigned char be[4] = {
        static_cast<unsigned char>(crc_ >> 24), static_cast<unsigned char>(crc_ >> 16),
        static_cast<unsigned char>(crc_ >> 8), static_cast<unsigned char>(crc_)};
    mine = sigv4_util::base64({be, 4});
  } else {
    std::array<unsigned char, EVP_MAX_MD_SIZE> h{};
    unsigned int len = 0;
    EVP_DigestFinal_ex(digest_->payload, h.data(), &len);
    mine = sigv4_util::base64({h.data(), len});
  }
  if (!core::constant_time_equal(mine, trailer_value_)) {
    return make_error(ErrorCode::kBadDigest, "the " + st_.trailer +
                                                 " you specified did not match the calculated "
                                                 "checksum");
  }
  return {};
}

core::Result<void> ChunkDecoder::feed(std::string_view bytes, std::string& out) {
  constexpr std::size_t kMaxLine = 256;
  const bool crc32c = st_.trailer == "x-amz-checksum-crc32c";
  while (!bytes.empty()) {
    switch (phase_) {
      case Phase::kSize:
      case Phase::kTrailer:
      case Phase::kDataEnd: {
        const std::size_t nl = bytes.find('\n');
        const std::string_view part = bytes.substr(0, nl);
        if (line_.size() + part.size() > kMaxLine) {
          return make_error(ErrorCode::kInvalidChunk, "an aws-chunked line is too long");
        }
        line_.append(part);
        if (nl == std::string_view::npos) {
          return {};
        }
        bytes.remove_prefix(nl + 1);
        if (line_.empty() || line_.back() != '\r') {
          return make_error(ErrorCode::kInvalidChunk, "aws-chunked lines end with CRLF");
        }
        line_.pop_back();
        if (phase_ == Phase::kDataEnd) {
          if (!line_.empty()) {
            return make_error(ErrorCode::kInvalidChunk, "chunk data is longer than its size");
          }
          line_.clear();
          if (auto r = end_chunk(); !r) {
            return r;
          }
          phase_ = want_ == 0 ? Phase::kDone : Phase::kSize;
          continue;
        }
        if (phase_ == Phase::kTrailer) {
          if (line_.empty()) {
            if (!trailer_seen_) {
              return make_error(ErrorCode::kIncompleteBody,
                                "the trailer " + st_.trailer + " is missing");
            }
            phase_ = Phase::kDone;
            if (auto r = check_trailer(); !r) {
              return r;
            }
            continue;
          }
          const std::size_t colon = line_.find(':');
          std::string name = line_.substr(0, colon);
          std::transform(name.begin(), name.end(), name.begin(), core::ascii_lower);
          if (colon == std::string::npos || (name != st_.trailer && name.rfind("x-amz-", 0) != 0)) {
            return make_error(ErrorCode::kInvalidChunk, "malformed aws-chunked trailer");
          }
          if (name == st_.trailer) {
            if (trailer_seen_) {
              return make_error(ErrorCode::kInvalidChunk, "repeated trailer");
            }
            trailer_seen_ = true;
            trailer_value_ = trim(std::string_view(line_).substr(colon + 1));
          }
          line_.clear();
          continue;
        }
        if (auto r = start_chunk(); !r) {
          return r;
        }
        line_.clear();
        if (want_ == 0 && !signed_) {
          phase_ = Phase::kTrailer;
        } else {
          phase_ = want_ == 0 ? Phase::kDataEnd : Phase::kData;
        }
        continue;
      }
      case Phase::kData: {
        const std::size_t n =
            static_cast<std::size_t>(std::min<std::uint64_t>(want_, bytes.size()));
        const std::string_view data = bytes.substr(0, n);
        total_ += n;
        if (st_.has_decoded_length && total_ > st_.decoded_length) {
          return make_error(ErrorCode::kIncompleteBody,
                            "the payload is longer than x-amz-decoded-content-length");
        }
        out.append(data);
        if (signed_) {
          EVP_DigestUpdate(digest_->chunk, data.data(), data.size());
        } else if (digest_->payload != nullptr) {
          EVP_DigestUpdate(digest_->payload, data.data(), data.size());
        } else {
          crc_ = crc32c ? sigv4_util::crc32c(crc_, data) : sigv4_util::crc32(crc_, data);
        }
        bytes.remove_prefix(n);
        want_ -= n;
        if (want_ == 0) {
          phase_ = Phase::kDataEnd;
          // want_ must stay non-zero-meaning for the transition: remember it was a data chunk.
          want_ = 1;
        }
        continue;
      }
      case Phase::kDone:
        return make_error(ErrorCode::kInvalidChunk, "bytes after the final aws-chunked chunk");
    }
  }
  return {};
}

core::Result<void> ChunkDecoder::finish() const {
  if (phase_ != Phase::kDone) {
    return make_error(ErrorCode::kIncompleteBody, "the aws-chunked body ended early");
  }
  if (st_.has_decoded_length && total_ != st_.decoded_length) {
    return make_error(ErrorCode::kIncompleteBody,
                      "the payload length differs from x-amz-decoded-content-length");
  }
  return {};
}

}  // namespace gatehouse::auth
