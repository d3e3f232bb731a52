#include "gateway/identity_service.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <mutex>

#include "identity/identity.h"

namespace gatehouse::gateway {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr unsigned kWorkers = 2;

// A request carrying `authorization` (when not empty) for route `route`.
struct Call {
  std::vector<http::Header> headers;
  http::Request req;
  RequestContext ctx;
  Refusal out;

  Call(std::uint32_t route, std::string authorization) : auth_(std::move(authorization)) {
    if (!auth_.empty()) {
      headers.push_back({"Authorization", auth_});
    }
    req.method = "GET";
    req.headers = headers;
    ctx.request = &req;
    ctx.route_index = route;
    ctx.worker = 1;
  }

 private:
  std::string auth_;
};

class IdentityServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("gh-identity-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    auto ext = identity::SigningKey::generate(identity::Alg::kEdDSA, "ext-1");
    ASSERT_TRUE(ext);
    external_ = std::make_unique<identity::SigningKey>(std::move(*ext));
    std::ofstream(dir_ / "jwks.json") << "{\"keys\":[" << external_->public_jwk() << "]}";
    auto st = store::open("sqlite://:memory:", clock_);
    ASSERT_TRUE(st);
    store_ = std::move(*st);
    auto c = config::load_string(yaml(dir_ / "jwks.json"), "t.yaml");
    ASSERT_TRUE(c) << c.error().front().to_string();
    config_ = std::move(*c);
    svc_ = std::make_unique<IdentityService>(*store_, clock_, kWorkers);
    auto ci = svc_->compile(config_);
    ASSERT_TRUE(ci) << ci.error().message;
    ci_ = *ci;
    ASSERT_TRUE(svc_->activate(config_));
    // Posts are queued and run on this thread (the "workers") before each authentication, as
    // a worker's io_context would run them between requests.
    svc_->start([this](std::function<void(unsigned)> fn) {
      std::lock_guard lock(posted_mu_);
      posted_.push_back(std::move(fn));
    });
    // Users of the same pool, through the same store (the service's keys are there).
    pools_ = std::make_unique<identity::UserPools>(config_, *store_, clock_);
    ASSERT_TRUE(pools_->load_keys(false));
    ASSERT_TRUE(pools_->sign_up("main", "alice", "long-passw0rd-1", {{"email", "a@x.test"}}));
    auto t = pools_->sign_in("main", "alice", "long-passw0rd-1", "web", "10.0.0.1");
    ASSERT_TRUE(t) << t.error().message;
    tokens_ = *t;
  }

  void TearDown() override {
    svc_->stop();
    fs::remove_all(dir_);
  }

  static std::string yaml(const fs::path& jwks) {
    return R"(user_pools:
  - name: main
    clients: [web]
    argon2: {ops_limit: 1, memory: 8KiB}
account_id: "123456789012"
region: eu-west-1
routes:
  - name: pool
    path: /pool
    method: GET
    auth: jwt
    jwt: {jwks: pool main}
    target: {static: {body: p}}
  - name: ext
    path: /ext
    method: GET
    auth: jwt
    jwt: {jwks: file )" +
           jwks.string() + R"(, issuer: "https://idp.test/", audience: api}
    target: {static: {body: e}}
  - name: open
    path: /open
    method: GET
    target: {static: {body: o}}
  - name: url
    path: /url
    method: GET
    auth: jwt
    jwt: {jwks: "url http://127.0.0.1:1/jwks.json", issuer: x, audience: api}
    target: {static: {body: u}}
)";
  }

  Verdict run(Call& c) {
    std::vector<std::function<void(unsigned)>> posted;
    {
      std::lock_guard lock(posted_mu_);
      posted.swap(posted_);
    }
    for (auto& fn : posted) {
      for (unsigned w = 0; w < kWorkers; ++w) {
        fn(w);
      }
    }
    return svc_->authenticate(*ci_, c.ctx, c.out);
  }

  std::string external_token(const std::string& claims) {
    auto t = external_->sign(claims);
    EXPECT_TRUE(t);
    return t ? *t : std::string();
  }

  fs::path dir_;
  core::ManualClock clock_;
  std::unique_ptr<store::Store> store_;
  config::Config config_;
  std::unique_ptr<IdentityService> svc_;
  std::shared_ptr<const CompiledIdentity> ci_;
  std::unique_ptr<identity::SigningKey> external_;
  std::unique_ptr<identity::UserPools> pools_;
  identity::TokenSet tokens_;
  std::mutex posted_mu_;
  std::vector<std::function<void(unsigned)>> posted_;
};

TEST_F(IdentityServiceTest, PoolTokenSetsPrincipalAndClaims) {
  Call c(0, "Bearer " + tokens_.access_token);
  ASSERT_EQ(run(c), Verdict::kContinue) << c.out.message;
  EXPECT_EQ(c.ctx.principal.kind, "user");
  EXPECT_TRUE(c.ctx.principal.id.starts_with(
      "arn:gatehouse:cognito-idp:eu-west-1:123456789012:userpool/main/user/"));
  EXPECT_EQ(c.ctx.user_pool, "main");
  bool has_username = false;
  for (const auto& [k, v] : c.ctx.claims) {
    has_username = has_username || (k == "username" && v == "alice");
  }
  EXPECT_TRUE(has_username);
  // Routes without auth: jwt are not this stage's business.
  Call open(2, "");
  EXPECT_EQ(run(open), Verdict::kContinue);
}

TEST_F(IdentityServiceTest, RefusalsMapToStatusesAndCodes) {
  Call none(0, "");
  ASSERT_EQ(run(none), Verdict::kRefuse);
  EXPECT_EQ(none.out.status, 401);
  EXPECT_EQ(none.out.code, "Unauthenticated");
  EXPECT_NE(none.out.extra_headers.find("WWW-Authenticate: Bearer"), std::string_view::npos);
  Call basic(0, "Basic " + tokens_.access_token);
  ASSERT_EQ(run(basic), Verdict::kRefuse);
  EXPECT_EQ(basic.out.status, 401);
  Call junk(0, "Bearer not-a-token");
  ASSERT_EQ(run(junk), Verdict::kRefuse);
  EXPECT_EQ(junk.out.code, "InvalidToken");
  Call id_token(0, "Bearer " + tokens_.id_token);  // token_use access is required
  ASSERT_EQ(run(id_token), Verdict::kRefuse);
  EXPECT_EQ(id_token.out.status, 403);
  EXPECT_EQ(id_token.out.code, "TokenNotAccepted");
  // A pool token on the external route: its kid is not in that set.
  Call cross(1, "Bearer " + tokens_.access_token);
  ASSERT_EQ(run(cross), Verdict::kRefuse);
  EXPECT_EQ(cross.out.status, 401);
  // The url key set never loaded (nothing listens there): 503.
  Call url(3, "Bearer " + tokens_.access_token);
  ASSERT_EQ(run(url), Verdict::kRefuse);
  EXPECT_EQ(url.out.status, 503);
  EXPECT_EQ(url.out.code, "JwksUnavailable");
  // Expired.
  clock_.advance(2h);
  Call late(0, "Bearer " + tokens_.access_token);
  ASSERT_EQ(run(late), Verdict::kRefuse);
  EXPECT_EQ(late.out.message, "the token has expired");
}

TEST_F(IdentityServiceTest, RememberedTokensStillExpireAndStayPerRoute) {
  for (int i = 0; i < 3; ++i) {  // the first verifies, the others are answered from the cache
    Call c(0, "Bearer " + tokens_.access_token);
    ASSERT_EQ(run(c), Verdict::kContinue) << i;
    EXPECT_TRUE(c.ctx.principal.id.ends_with("/user/" + c.ctx.claims.front().second));
    EXPECT_EQ(c.ctx.user_pool, "main");
  }
  Call other_route(1, "Bearer " + tokens_.access_token);
  ASSERT_EQ(run(other_route), Verdict::kRefuse);
  // A token differing in one byte is not mistaken for the remembered one.
  std::string forged = tokens_.access_token;
  forged[forged.size() - 3] = forged[forged.size() - 3] == 'A' ? 'B' : 'A';
  Call f(0, "Bearer " + forged);
  ASSERT_EQ(run(f), Verdict::kRefuse);
  EXPECT_EQ(f.out.status, 401);
  clock_.advance(1h + 61s);  // past exp (1 h) and the leeway (60 s)
  Call late(0, "Bearer " + tokens_.access_token);
  ASSERT_EQ(run(late), Verdict::kRefuse);
  EXPECT_EQ(late.out.message, "the token has expired");
}

TEST_F(IdentityServiceTest, ExternalIssuerFromAFile) {
  const auto now =
      std::chrono::duration_cast<std::chrono::seconds>(clock_.wall().time_since_epoch()).count();
  const std::string exp = std::to_string(now + 300);
  Call ok(1, "Bearer " + external_token("{\"iss\":\"https://idp.test/\",\"aud\":\"api\",\"sub\":"
                                        "\"s-1\",\"exp\":" +
                                        exp + "}"));
  ASSERT_EQ(run(ok), Verdict::kContinue) << ok.out.message;
  EXPECT_EQ(ok.ctx.principal.id, "arn:gatehouse:iam::123456789012:oidc-provider/idp.test/user/s-1");
  EXPECT_EQ(ok.ctx.user_pool, "");
  Call no_sub(1, "Bearer " + external_token("{\"iss\":\"https://idp.test/\",\"aud\":\"api\","
                                            "\"exp\":" +
                                            exp + "}"));
  ASSERT_EQ(run(no_sub), Verdict::kRefuse);
  EXPECT_EQ(no_sub.out.status, 401);
  Call aud(1, "Bearer " + external_token("{\"iss\":\"https://idp.test/\",\"aud\":\"web\","
                                         "\"sub\":\"s\",\"exp\":" +
                                         exp + "}"));
  ASSERT_EQ(run(aud), Verdict::kRefuse);
  EXPECT_EQ(aud.out.status, 403);
  // A remembered token is dropped at its own exp (+ leeway), not at the cache's 5 minutes.
  const std::string short_lived = "Bearer " + external_token(
                                                  "{\"iss\":\"https://idp.test/\",\"aud\":"
                                                  "\"api\",\"sub\":\"s\",\"exp\":" +
                                                  std::to_string(now + 100) + "}");
  Call first(1, short_lived);
  ASSERT_EQ(run(first), Verdict::kContinue);
  clock_.advance(150s);
  Call cached(1, short_lived);
  ASSERT_EQ(run(cached), Verdict::kContinue);  // within exp + 60 s of leeway
  clock_.advance(15s);
  Call expired(1, short_lived);
  ASSERT_EQ(run(expired), Verdict::kRefuse);
  EXPECT_EQ(expired.out.message, "the token has expired");
}

TEST_F(IdentityServiceTest, AdminRotationIsPublishedToWorkers) {
  auto r = svc_->admin("POST", "/user-pools/main/keys/rotate");
  ASSERT_EQ(r.status, 200) << r.body;
  // A token of the new key (signed by another reader of the store) verifies on the workers.
  ASSERT_TRUE(pools_->load_keys(false));
  auto fresh = pools_->sign_in("main", "alice", "long-passw0rd-1", "web", "10.0.0.1");
  ASSERT_TRUE(fresh);
  Call c(0, "Bearer " + fresh->access_token);
  EXPECT_EQ(run(c), Verdict::kContinue) << c.out.message;
  Call old(0, "Bearer " + tokens_.access_token);
  EXPECT_EQ(run(old), Verdict::kContinue) << old.out.message;
  auto keys = svc_->admin("GET", "/user-pools/main/keys");
  EXPECT_EQ(keys.status, 200);
  EXPECT_NE(keys.body.find("\"active\":false"), std::string::npos);
  EXPECT_EQ(svc_->admin("GET", "/user-pools/nope/keys").status, 404);
  EXPECT_EQ(svc_->admin("DELETE", "/user-pools/main/keys").status, 404);
  EXPECT_EQ(svc_->admin("POST", "/user-pools/main/users/bob/confirm").status, 404);
}

TEST_F(IdentityServiceTest, MissingKeyFileRefusesTheConfig) {
  auto c = config::load_string(yaml(dir_ / "missing.json"), "t.yaml");
  ASSERT_TRUE(c);
  auto ci = svc_->compile(*c);
  ASSERT_FALSE(ci);
  EXPECT_EQ(ci.error().code, core::ErrorCode::kConfig);
  EXPECT_NE(ci.error().message.find("t.yaml:14: routes[1].jwt.jwks: cannot open"),
            std::string::npos)
      << ci.error().message;
  // The service keeps serving the set it had.
  Call ok(0, "Bearer " + tokens_.access_token);
  EXPECT_EQ(run(ok), Verdict::kContinue);
}

TEST_F(IdentityServiceTest, EndpointPaths) {
  EXPECT_TRUE(IdentityService::owns(*ci_, "/auth/main/signin"));
  EXPECT_TRUE(IdentityService::owns(*ci_, "/auth/x"));
  EXPECT_FALSE(IdentityService::owns(*ci_, "/auth"));
  EXPECT_FALSE(IdentityService::owns(*ci_, "/auth/"));
  EXPECT_FALSE(IdentityService::owns(*ci_, "/authx/main"));
  EXPECT_FALSE(IdentityService::owns(*ci_, "/pool"));
}

}  // namespace
}  // namespace gatehouse::gateway
