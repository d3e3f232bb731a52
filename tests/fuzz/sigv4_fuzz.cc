// libFuzzer target for SigV4 parsing (src/auth/sigv4.cc): the Authorization header, the
// presigned query string, the canonical request of any path and query, and the aws-chunked
// decoder (signed and trailer modes). Any bytes must give a result or one error with a message,
// never a crash, a hang or an exception. The decoder is also checked differentially against
// itself: feeding the body in two pieces at any split gives the same outcome and payload as
// feeding it at once. Seeds: tests/fuzz/corpus/sigv4/.
//
// Input: byte 0 picks the target, byte 1 the split point, the rest is the subject.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "auth/auth.h"

namespace {

namespace auth = gatehouse::auth;

constexpr std::string_view kId = "GHIAABCDEFGHIJKLMNOP";
constexpr std::string_view kSecret = "0123456789012345678901234567890123456789";
// 2015-08-30T12:36:00Z, the date of the published vectors and of the seeds.
const auto kNow = std::chrono::system_clock::time_point(std::chrono::seconds(1440938160));

const auth::CredentialIndex& keys() {
  static const auth::CredentialIndex index = [] {
    auth::CredentialIndex idx;
    auth::AccessKey k;
    k.id = std::string(kId);
    k.role = "fuzz";
    k.principal = "arn:gatehouse:iam::000000000000:role/fuzz";
    idx.add(auth::Credential{k, std::string(kSecret)});
    return idx;
  }();
  return index;
}

void check(bool ok) {
  if (!ok) {
    std::abort();
  }
}

// begin() and, when it passes, finish() on a request built around `authz` / `query`.
void verify(std::string_view authz, std::string_view query, std::string_view body) {
  static auth::SigV4Verifier verifier("us-east-1");
  std::vector<auth::SigV4Header> headers{{"Host", "example.amazonaws.com"},
                                         {"X-Amz-Date", "20150830T123600Z"}};
  if (!authz.empty()) {
    headers.push_back({"Authorization", authz});
  }
  const auth::SigV4Request req{"POST", "/a/b", query, headers, !body.empty()};
  auth::SigV4State st;
  auto r = verifier.begin(req, keys(), kNow, st);
  if (!r) {
    check(!r.error().message.empty());
    return;
  }
  check(st.verified || st.mode == auth::PayloadMode::kBodyHash);
  std::string payload;
  auto f = verifier.finish(st, body, payload);
  check(f || !f.error().message.empty());
}

// The decoder on `body`, whole and in two pieces.
void decode(auth::PayloadMode mode, std::string_view trailer, std::string_view body,
            std::size_t split) {
  auth::SigV4State st;
  st.mode = mode;
  st.verified = true;
  st.amz_date = "20130524T000000Z";
  st.scope = "20130524/us-east-1/s3/aws4_request";
  st.signature = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
  st.signing_key.fill(0x5a);
  st.trailer = std::string(trailer);
  auto run = [&](std::size_t at, std::string& out) {
    auth::ChunkDecoder d(st);
    auto r = d.feed(body.substr(0, at), out);
    if (r) {
      r = d.feed(body.substr(at), out);
    }
    if (r) {
      r = d.finish();
    }
    if (!r) {
      check(!r.error().message.empty());
    }
    return r.has_value();
  };
  std::string whole;
  std::string parts;
  const bool a = run(body.size(), whole);
  const bool b = run(split % (body.size() + 1), parts);
  check(a == b);
  if (a) {
    check(whole == parts);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) {
    return 0;
  }
  const std::uint8_t target = data[0];
  const std::size_t split = data[1];
  const std::string_view s(reinterpret_cast<const char*>(data) + 2, size - 2);
  switch (target % 6) {
    case 0:
      verify(s, "", "");
      break;
    case 1: {
      // Authorization header and body, split at the first NUL.
      const std::size_t nul = s.find('\0');
      verify(s.substr(0, nul), "", nul == std::string_view::npos ? "" : s.substr(nul + 1));
      break;
    }
    case 2:
      verify("", s, "");
      break;
    case 3: {
      // Path and query for the canonical request, split at the first '?'.
      const std::size_t q = s.find('?');
      std::vector<auth::SigV4Header> headers{{"Host", "h"}, {"X-Amz-Date", "20150830T123600Z"}};
      const auth::SigV4Request req{"GET", s.substr(0, q),
                                   q == std::string_view::npos ? "" : s.substr(q + 1), headers,
                                   false};
      for (bool s3 : {false, true}) {
        auto c = auth::SigV4Verifier::canonical_request(req, "host;x-amz-date", "UNSIGNED-PAYLOAD",
                                                        s3, split % 2 == 1);
        check(c || !c.error().message.empty());
      }
      break;
    }
    case 4:
      decode(auth::PayloadMode::kStreamingSigned, "", s, split);
      break;
    default: {
      static constexpr std::string_view kTrailers[] = {
          "x-amz-checksum-crc32", "x-amz-checksum-crc32c", "x-amz-checksum-sha1",
          "x-amz-checksum-sha256"};
      decode(auth::PayloadMode::kStreamingUnsignedTrailer, kTrailers[split % 4], s, split);
      break;
    }
  }
  return 0;
}
