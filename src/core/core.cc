#include "core/core.h"

// The low-level SHA256_* calls are deprecated in OpenSSL 3 but stay supported: see sha256_raw().
#define OPENSSL_SUPPRESS_DEPRECATED

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <array>
#include <charconv>
#include <cstring>
#include <stdexcept>

namespace gatehouse::core {

namespace {

struct CodeInfo {
  int status;
  std::string_view name;
};

constexpr CodeInfo info(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::kBadRequest:
      return {400, "BadRequest"};
    case ErrorCode::kInvalidArgument:
      return {400, "InvalidArgument"};
    case ErrorCode::kUnauthenticated:
      return {401, "Unauthenticated"};
    case ErrorCode::kForbidden:
      return {403, "Forbidden"};
    case ErrorCode::kNotFound:
      return {404, "NotFound"};
    case ErrorCode::kRouteNotFound:
      return {404, "RouteNotFound"};
    case ErrorCode::kMethodNotAllowed:
      return {405, "MethodNotAllowed"};
    case ErrorCode::kRequestTimeout:
      return {408, "RequestTimeout"};
    case ErrorCode::kConflict:
      return {409, "Conflict"};
    case ErrorCode::kLengthRequired:
      return {411, "LengthRequired"};
    case ErrorCode::kPayloadTooLarge:
      return {413, "PayloadTooLarge"};
    case ErrorCode::kHeaderTooLarge:
      return {431, "RequestHeaderFieldsTooLarge"};
    case ErrorCode::kTooManyRequests:
      return {429, "TooManyRequests"};
    case ErrorCode::kInternal:
      return {500, "InternalError"};
    case ErrorCode::kNotImplemented:
      return {501, "NotImplemented"};
    case ErrorCode::kBadGateway:
      return {502, "BadGateway"};
    case ErrorCode::kUnavailable:
      return {503, "ServiceUnavailable"};
    case ErrorCode::kGatewayTimeout:
      return {504, "GatewayTimeout"};
    case ErrorCode::kConfig:
      return {500, "InvalidConfig"};
    case ErrorCode::kIo:
      return {500, "IoError"};
    case ErrorCode::kFunctionError:
      return {502, "FunctionError"};
    case ErrorCode::kFunctionTimedOut:
      return {504, "FunctionTimedOut"};
    case ErrorCode::kConcurrencyLimit:
      return {429, "ConcurrencyLimit"};
    case ErrorCode::kRecursiveInvocation:
      return {508, "RecursiveInvocationStopped"};
    case ErrorCode::kSignatureDoesNotMatch:
      return {403, "SignatureDoesNotMatch"};
    case ErrorCode::kInvalidAccessKeyId:
      return {403, "InvalidAccessKeyId"};
    case ErrorCode::kRequestTimeTooSkewed:
      return {403, "RequestTimeTooSkewed"};
    case ErrorCode::kRequestExpired:
      return {403, "AccessDenied"};
    case ErrorCode::kMissingAuthentication:
      return {403, "MissingAuthenticationToken"};
    case ErrorCode::kAuthorizationHeaderMalformed:
      return {400, "AuthorizationHeaderMalformed"};
    case ErrorCode::kAuthorizationQueryError:
      return {400, "AuthorizationQueryParametersError"};
    case ErrorCode::kContentSha256Mismatch:
      return {400, "XAmzContentSHA256Mismatch"};
    case ErrorCode::kInvalidChunk:
      return {400, "InvalidChunkSizeError"};
    case ErrorCode::kIncompleteBody:
      return {400, "IncompleteBody"};
    case ErrorCode::kBadDigest:
      return {400, "BadDigest"};
  }
  return {500, "InternalError"};
}

class SystemClock final : public Clock {
 public:
  std::chrono::steady_clock::time_point now() const noexcept override {
    return std::chrono::steady_clock::now();
  }
  std::chrono::system_clock::time_point wall() const noexcept override {
    return std::chrono::system_clock::now();
  }
};

constexpr char kHex[] = "0123456789abcdef";

}  // namespace

int http_status(ErrorCode code) noexcept { return info(code).status; }
std::string_view error_name(ErrorCode code) noexcept { return info(code).name; }

std::string_view reason_phrase(int status) noexcept {
  switch (status) {
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 411:
      return "Length Required";
    case 413:
      return "Payload Too Large";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 508:
      return "Loop Detected";
    default:
      return "Unknown";
  }
}

Clock& system_clock() noexcept {
  static SystemClock clock;
  return clock;
}

ManualClock::ManualClock()
    : mono_ns_(1'000'000'000), wall_ns_(1'767'225'600LL * 1'000'000'000LL) {}  // 2026-01-01

std::chrono::steady_clock::time_point ManualClock::now() const noexcept {
  return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(mono_ns_.load()));
}
std::chrono::system_clock::time_point ManualClock::wall() const noexcept {
  return std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(
          std::chrono::nanoseconds(wall_ns_.load())));
}
void ManualClock::advance(std::chrono::nanoseconds d) noexcept {
  mono_ns_.fetch_add(d.count());
  wall_ns_.fetch_add(d.count());
}
void ManualClock::set_wall(std::chrono::system_clock::time_point t) noexcept {
  wall_ns_.store(
      std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count());
}

void next_request_id(RequestId& out) noexcept {
  // Per thread: a random 24-bit prefix and a 40-bit counter, kept as hex text and incremented
  // in place, so ids never repeat in a process run (2^40 requests per thread) and rarely
  // across processes, at a few instructions each.
  thread_local RequestId current = [] {
    std::uint32_t prefix = 0;
    if (RAND_bytes(reinterpret_cast<unsigned char*>(&prefix), sizeof prefix) != 1) {
      prefix =
          static_cast<std::uint32_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    }
    const std::uint64_t v = static_cast<std::uint64_t>(prefix & 0xffffffu) << 40;
    RequestId id{};
    for (int i = 15; i >= 0; --i) {
      id[static_cast<std::size_t>(i)] = kHex[(v >> ((15 - i) * 4)) & 0xf];
    }
    return id;
  }();
  for (std::size_t i = current.size(); i-- > 0;) {
    char& c = current[i];
    if (c == 'f') {
      c = '0';  // carry into the next digit
      continue;
    }
    c = c == '9' ? 'a' : static_cast<char>(c + 1);
    break;
  }
  out = current;
}

std::string random_hex(std::size_t bytes) {
  std::string raw(bytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()), static_cast<int>(bytes)) != 1) {
    throw std::runtime_error("random_hex: the OS random source failed");
  }
  std::string out;
  out.reserve(bytes * 2);
  for (unsigned char c : raw) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 0xf]);
  }
  return out;
}

void json_escape(std::string& out, std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
      ++i;
    } else if (c < 0x20) {
      switch (c) {
        case '\n':
          out += "\\n";
          break;
        case '\r':
          out += "\\r";
          break;
        case '\t':
          out += "\\t";
          break;
        default: {
          char buf[7] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xf], 0};
          out.append(buf, 6);
        }
      }
      ++i;
    } else if (c < 0x80) {
      // A run of plain ASCII is appended at once (error codes and messages are all plain).
      std::size_t j = i + 1;
      while (j < n && p[j] >= 0x20 && p[j] < 0x80 && p[j] != '"' && p[j] != '\\') {
        ++j;
      }
      out.append(s.data() + i, j - i);
      i = j;
    } else {
      // Validate one UTF-8 sequence; copy it if well-formed, else emit U+FFFD for this byte.
      std::size_t len = 0;
      std::uint32_t cp = 0;
      if ((c & 0xe0) == 0xc0) {
        len = 2;
        cp = c & 0x1f;
      } else if ((c & 0xf0) == 0xe0) {
        len = 3;
        cp = c & 0x0f;
      } else if ((c & 0xf8) == 0xf0) {
        len = 4;
        cp = c & 0x07;
      }
      bool ok = len != 0 && i + len <= n;
      for (std::size_t k = 1; ok && k < len; ++k) {
        ok = (p[i + k] & 0xc0) == 0x80;
        cp = (cp << 6) | (p[i + k] & 0x3f);
      }
      if (ok) {
        // Reject overlong forms, surrogates and out-of-range code points.
        ok = !((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
               (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff);
      }
      if (ok) {
        out.append(s.data() + i, len);
        i += len;
      } else {
        out += "\xef\xbf\xbd";
        ++i;
      }
    }
  }
}

namespace {

// OpenSSL 3's one-shot SHA256() fetches the algorithm from the provider store on every call,
// which takes a lock and costs several thousand instructions; API keys are hashed on every
// request. The low-level interface runs the same (SHA-NI/AVX) block code with no fetch, no lock
// and no allocation.
void sha256_raw(std::string_view data, std::array<unsigned char, SHA256_DIGEST_LENGTH>& digest) {
  SHA256_CTX ctx;
  SHA256_Init(&ctx);
  SHA256_Update(&ctx, data.data(), data.size());
  SHA256_Final(digest.data(), &ctx);
  OPENSSL_cleanse(&ctx, sizeof(ctx));
}

}  // namespace

std::string sha256_hex(std::string_view data) {
  std::array<unsigned char, SHA256_DIGEST_LENGTH> digest{};
  sha256_raw(data, digest);
  std::string out;
  out.reserve(digest.size() * 2);
  for (unsigned char c : digest) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 0xf]);
  }
  return out;
}

void sha256(std::string_view data, std::array<unsigned char, 32>& out) noexcept {
  static_assert(SHA256_DIGEST_LENGTH == 32);
  sha256_raw(data, out);
}

void sha256_hex(std::string_view data, std::array<char, 64>& out) noexcept {
  std::array<unsigned char, SHA256_DIGEST_LENGTH> digest{};
  sha256_raw(data, digest);
  for (std::size_t i = 0; i < digest.size(); ++i) {
    out[2 * i] = kHex[digest[i] >> 4];
    out[2 * i + 1] = kHex[digest[i] & 0xf];
  }
}

bool constant_time_equal(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) {
    return false;
  }
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::size_t format_uint(char* out, std::uint64_t v) noexcept {
  // libstdc++'s to_chars writes two digits per step from a table.
  return static_cast<std::size_t>(std::to_chars(out, out + 20, v).ptr - out);
}

}  // namespace gatehouse::core
