#pragma once
// gatehouse::core — the vocabulary every module shares: Result/Error, the error-code table
// (HTTP status, wire code), an injectable Clock, request ids, JSON escaping and hashing.
// Everything here is thread-safe unless a class says otherwise.

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <tl/expected.hpp>

namespace gatehouse::core {

// One table maps each code to its HTTP status and its wire name (see error.cc).
enum class ErrorCode : std::uint8_t {
  kBadRequest,           // 400 BadRequest: malformed input
  kInvalidArgument,      // 400 InvalidArgument: well-formed but unacceptable values
  kUnauthenticated,      // 401 Unauthenticated
  kForbidden,            // 403 Forbidden (identity known, policy refuses)
  kNotFound,             // 404 NotFound (a resource)
  kRouteNotFound,        // 404 RouteNotFound (no route matches the path)
  kMethodNotAllowed,     // 405 MethodNotAllowed (path matches, method does not)
  kRequestTimeout,       // 408 RequestTimeout (headers or body too slow)
  kConflict,             // 409 Conflict / already exists
  kLengthRequired,       // 411 LengthRequired
  kPayloadTooLarge,      // 413 PayloadTooLarge
  kHeaderTooLarge,       // 431 RequestHeaderFieldsTooLarge
  kTooManyRequests,      // 429 TooManyRequests (generic throttle)
  kInternal,             // 500 InternalError
  kNotImplemented,       // 501 NotImplemented
  kBadGateway,           // 502 BadGateway (upstream failed)
  kUnavailable,          // 503 ServiceUnavailable (draining, overloaded)
  kGatewayTimeout,       // 504 GatewayTimeout (upstream too slow)
  kConfig,               // configuration invalid (startup / reload only)
  kIo,                   // filesystem / store failure
  kFunctionError,        // 502 FunctionError (a function failed, crashed or ran out of memory)
  kFunctionTimedOut,     // 504 FunctionTimedOut (killed at its deadline: Task.TimedOut)
  kConcurrencyLimit,     // 429 ConcurrencyLimit (a function's workers and queue are full)
  kRecursiveInvocation,  // 508 RecursiveInvocationStopped (lineage depth over the maximum)
  // AWS Signature Version 4 (auth/sigv4.cc), with the names AWS uses on the wire.
  kSignatureDoesNotMatch,         // 403 SignatureDoesNotMatch
  kInvalidAccessKeyId,            // 403 InvalidAccessKeyId (unknown or revoked)
  kRequestTimeTooSkewed,          // 403 RequestTimeTooSkewed (over 15 minutes off)
  kRequestExpired,                // 403 AccessDenied ("Request has expired": presigned URL)
  kMissingAuthentication,         // 403 MissingAuthenticationToken (no signature at all)
  kAuthorizationHeaderMalformed,  // 400 AuthorizationHeaderMalformed
  kAuthorizationQueryError,       // 400 AuthorizationQueryParametersError (presigned URL)
  kContentSha256Mismatch,         // 400 XAmzContentSHA256Mismatch
  kInvalidChunk,                  // 400 InvalidChunkSizeError / bad aws-chunked framing
  kIncompleteBody,                // 400 IncompleteBody (decoded length differs)
  kBadDigest,                     // 400 BadDigest (a trailing checksum does not match)
};

// HTTP status for `code` (500 for codes that never reach the wire).
[[nodiscard]] int http_status(ErrorCode code) noexcept;
// Stable wire name, e.g. "RouteNotFound"; used in {"error":{"code":...}}.
[[nodiscard]] std::string_view error_name(ErrorCode code) noexcept;
// Standard reason phrase for an HTTP status ("Too Many Requests"); "Unknown" if not known.
[[nodiscard]] std::string_view reason_phrase(int status) noexcept;

struct Error {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
};

template <class T>
using Result = tl::expected<T, Error>;

[[nodiscard]] inline tl::unexpected<Error> make_error(ErrorCode code, std::string message) {
  return tl::unexpected<Error>(Error{code, std::move(message)});
}

// Time source. Monotonic time drives deadlines and limiters; wall time drives logs, quota
// periods and tokens. Implementations are thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  [[nodiscard]] virtual std::chrono::steady_clock::time_point now() const noexcept = 0;
  [[nodiscard]] virtual std::chrono::system_clock::time_point wall() const noexcept = 0;
};

// The real clocks. The returned reference lives for the whole program.
[[nodiscard]] Clock& system_clock() noexcept;

// A clock for tests: time moves only when advance() or set_wall() is called. Thread-safe.
class ManualClock final : public Clock {
 public:
  ManualClock();
  [[nodiscard]] std::chrono::steady_clock::time_point now() const noexcept override;
  [[nodiscard]] std::chrono::system_clock::time_point wall() const noexcept override;
  void advance(std::chrono::nanoseconds d) noexcept;
  void set_wall(std::chrono::system_clock::time_point t) noexcept;

 private:
  std::atomic<std::int64_t> mono_ns_;
  std::atomic<std::int64_t> wall_ns_;
};

// Request ids: 16 lowercase hex characters, unique within the process and unlikely to repeat
// across processes (random 24-bit prefix per thread + per-thread counter). Allocation-free.
using RequestId = std::array<char, 16>;
void next_request_id(RequestId& out) noexcept;
[[nodiscard]] inline std::string_view view(const RequestId& id) noexcept {
  return {id.data(), id.size()};
}

// A random identifier of `bytes` random bytes, hex encoded (2*bytes characters), from the
// OS CSPRNG. For keys, tokens and ids that must not be guessable.
[[nodiscard]] std::string random_hex(std::size_t bytes);

// Appends `s` to `out` as the inside of a JSON string (quotes not included). Control characters,
// quotes and backslashes are escaped; invalid UTF-8 bytes are replaced with U+FFFD.
void json_escape(std::string& out, std::string_view s);

// SHA-256 of `data` as 64 lowercase hex characters.
[[nodiscard]] std::string sha256_hex(std::string_view data);
// The same into a caller's buffer, without allocating (for the request path).
void sha256_hex(std::string_view data, std::array<char, 64>& out) noexcept;
// The raw 32-byte digest, without allocating (for the request path).
void sha256(std::string_view data, std::array<unsigned char, 32>& out) noexcept;
// Compares two byte strings in time that depends only on their lengths.
[[nodiscard]] bool constant_time_equal(std::string_view a, std::string_view b) noexcept;

// Writes the decimal form of `v` into `out` (at least 20 bytes); returns the length.
std::size_t format_uint(char* out, std::uint64_t v) noexcept;

// ASCII case folding and case-insensitive equality: HTTP header names and methods, auth schemes,
// IAM condition keys. Byte-exact otherwise (no locale, NUL compared like any byte).
[[nodiscard]] constexpr char ascii_lower(char c) noexcept {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}
[[nodiscard]] constexpr bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (ascii_lower(a[i]) != ascii_lower(b[i])) {
      return false;
    }
  }
  return true;
}

// The value of hex digit `c` (either case), or -1 when `c` is not one.
[[nodiscard]] constexpr int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

}  // namespace gatehouse::core
