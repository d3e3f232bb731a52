#include <gtest/gtest.h>

#include "identity/identity.h"

namespace gatehouse::identity {
namespace {

using namespace std::chrono_literals;

config::Config make_config(std::string confirmation = "auto", std::string alg = "EdDSA") {
  config::Config c;
  config::UserPool p;
  p.name = "main";
  p.issuer = "http://127.0.0.1:8080/auth/main";
  p.clients = {"web", "cli"};
  p.confirmation = std::move(confirmation);
  p.signing_alg = std::move(alg);
  p.password_policy.min_length = 8;
  p.password_policy.require_digits = true;
  p.argon2.ops_limit = 1;
  p.argon2.memory = 8 * 1024;  // cheap hashes: these tests are about behaviour, not cost
  p.sign_in_throttle.free_attempts = 2;
  p.sign_in_throttle.base_delay = 1s;
  p.sign_in_throttle.max_delay = 4s;
  p.sign_in_throttle.reset_after = 60s;
  p.tokens.access = 10min;
  p.tokens.id = 10min;
  p.tokens.refresh = 2h;
  c.user_pools.push_back(p);
  return c;
}

class UserPoolTest : public ::testing::Test {
 protected:
  void SetUp() override { open(make_config()); }

  void open(const config::Config& c) {
    pools_.reset();
    if (!store_) {
      auto st = store::open("sqlite://:memory:", clock_);
      ASSERT_TRUE(st) << st.error().message;
      store_ = std::move(*st);
    }
    config_ = c;
    pools_ = std::make_unique<UserPools>(config_, *store_, clock_);
    auto r = pools_->load_keys();
    ASSERT_TRUE(r) << r.error().message;
  }

  TokenSet sign_in_ok(std::string_view user, std::string_view password = "passw0rd-1",
                      std::string_view client = "web") {
    auto t = pools_->sign_in("main", user, password, client, "10.0.0.1");
    EXPECT_TRUE(t) << (t ? "" : t.error().message);
    return t ? *t : TokenSet{};
  }

  JwtStatus check(const std::string& token, TokenUse use, Claims& out) {
    VerifyPolicy policy;
    policy.issuer = "http://127.0.0.1:8080/auth/main";
    policy.audiences = {"web", "cli"};
    policy.token_use = use;
    auto keys = pools_->jwks("main");
    EXPECT_NE(keys, nullptr);
    return keys ? verify(token, *keys, policy, clock_.wall(), out) : JwtStatus::kUnknownKey;
  }

  core::ManualClock clock_;
  std::unique_ptr<store::Store> store_;
  config::Config config_;
  std::unique_ptr<UserPools> pools_;
};

TEST_F(UserPoolTest, SignUpSignInTokens) {
  auto u = pools_->sign_up("main", "alice", "passw0rd-1", {{"email", "a@example.com"}});
  ASSERT_TRUE(u) << u.error().message;
  EXPECT_TRUE(u->confirmed);
  EXPECT_EQ(u->sub.size(), 36u);
  const TokenSet t = sign_in_ok("alice");
  EXPECT_EQ(t.expires_in, 600);
  Claims c;
  ASSERT_EQ(check(t.access_token, TokenUse::kAccess, c), JwtStatus::kOk);
  EXPECT_EQ(c.sub, u->sub);
  EXPECT_EQ(c.client_id, "web");
  EXPECT_EQ(c.username, "alice");
  EXPECT_EQ(c.exp, c.iat + 600);
  ASSERT_EQ(check(t.id_token, TokenUse::kId, c), JwtStatus::kOk);
  EXPECT_EQ(c.aud, std::vector<std::string>{"web"});
  EXPECT_EQ(c.username, "alice");  // cognito:username
  EXPECT_NE(std::find(c.all.begin(), c.all.end(),
                      std::pair<std::string, std::string>("email", "a@example.com")),
            c.all.end());
  // The tokens expire.
  clock_.advance(11min);
  EXPECT_EQ(check(t.access_token, TokenUse::kAccess, c), JwtStatus::kExpired);
}

TEST_F(UserPoolTest, SignUpValidation) {
  ASSERT_TRUE(pools_->sign_up("main", "alice", "passw0rd-1", {}));
  auto dup = pools_->sign_up("main", "alice", "passw0rd-2", {});
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().status, 409);
  EXPECT_EQ(dup.error().code, "UsernameExists");
  EXPECT_EQ(pools_->sign_up("main", "bob", "short1", {}).error().code, "InvalidPassword");
  EXPECT_EQ(pools_->sign_up("main", "bob", "no-digits-here", {}).error().code, "InvalidPassword");
  EXPECT_EQ(pools_->sign_up("main", "bob", std::string(2000, '1'), {}).error().code,
            "InvalidPassword");
  for (std::string bad : {std::string(""), std::string("a/b"), std::string("a b"),
                          std::string(200, 'a'), std::string("\xc3\xa9")}) {
    EXPECT_EQ(pools_->sign_up("main", bad, "passw0rd-1", {}).error().code, "InvalidParameter")
        << bad;
  }
  EXPECT_EQ(pools_->sign_up("main", "bob", "passw0rd-1", {{"sub", "forged"}}).error().code,
            "InvalidParameter");
  EXPECT_EQ(pools_->sign_up("main", "bob", "passw0rd-1", {{"token_use", "id"}}).error().code,
            "InvalidParameter");
  EXPECT_EQ(
      pools_->sign_up("main", "bob", "passw0rd-1", {{"x", std::string(2000, 'v')}}).error().code,
      "InvalidParameter");
  EXPECT_EQ(pools_->sign_up("nope", "bob", "passw0rd-1", {}).error().status, 404);
}

TEST_F(UserPoolTest, WrongPasswordAndUnknownUserLookAlike) {
  ASSERT_TRUE(pools_->sign_up("main", "alice", "passw0rd-1", {}));
  auto wrong = pools_->sign_in("main", "alice", "passw0rd-2", "web", "10.0.0.1");
  auto unknown = pools_->sign_in("main", "mallory", "passw0rd-1", "web", "10.0.0.2");
  ASSERT_FALSE(wrong);
  ASSERT_FALSE(unknown);
  EXPECT_EQ(wrong.error().status, 401);
  EXPECT_EQ(wrong.error().code, unknown.error().code);
  EXPECT_EQ(wrong.error().message, unknown.error().message);
  EXPECT_EQ(pools_->sign_in("main", "alice", "passw0rd-1", "mobile", "10.0.0.1").error().code,
            "InvalidClient");
}

TEST_F(UserPoolTest, AdminConfirmation) {
  open(make_config("admin"));
  auto u = pools_->sign_up("main", "carol", "passw0rd-1", {});
  ASSERT_TRUE(u);
  EXPECT_FALSE(u->confirmed);
  auto early = pools_->sign_in("main", "carol", "passw0rd-1", "web", "10.0.0.1");
  ASSERT_FALSE(early);
  EXPECT_EQ(early.error().status, 403);
  EXPECT_EQ(early.error().code, "UserNotConfirmed");
  // A wrong password does not reveal the confirmation state.
  EXPECT_EQ(pools_->sign_in("main", "carol", "passw0rd-9", "web", "10.0.0.1").error().status, 401);
  ASSERT_TRUE(pools_->admin_confirm("main", "carol"));
  sign_in_ok("carol");
  EXPECT_EQ(pools_->admin_confirm("main", "nobody").error().code, "UserNotFound");
  auto users = pools_->list_users("main");
  ASSERT_TRUE(users);
  ASSERT_EQ(users->size(), 1u);
  EXPECT_TRUE((*users)[0].confirmed);
}

TEST_F(UserPoolTest, RefreshAndGlobalSignOut) {
  ASSERT_TRUE(pools_->sign_up("main", "alice", "passw0rd-1", {}));
  const TokenSet t = sign_in_ok("alice");
  const TokenSet other = sign_in_ok("alice", "passw0rd-1", "cli");
  ASSERT_FALSE(t.refresh_token.empty());
  auto r = pools_->refresh("main", t.refresh_token, "web");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_TRUE(r->refresh_token.empty());
  Claims c;
  EXPECT_EQ(check(r->access_token, TokenUse::kAccess, c), JwtStatus::kOk);
  EXPECT_EQ(c.client_id, "web");
  // Another client's refresh token is not ours to use.
  EXPECT_EQ(pools_->refresh("main", other.refresh_token, "web").error().status, 401);
  // Tampered secret, wrong shapes.
  std::string bad = t.refresh_token;
  bad[40] = bad[40] == 'a' ? 'b' : 'a';
  EXPECT_EQ(pools_->refresh("main", bad, "").error().code, "NotAuthorized");
  for (std::string_view junk : {"", "x", "..", "a.b.c", "0.0.0"}) {
    EXPECT_EQ(pools_->refresh("main", junk, "").error().status, 401) << junk;
  }
  // Global sign-out, proven by an access token: every refresh token of the user stops working.
  auto out = pools_->sign_out("main", t.access_token);
  ASSERT_TRUE(out) << out.error().message;
  EXPECT_EQ(pools_->refresh("main", t.refresh_token, "web").error().status, 401);
  EXPECT_EQ(pools_->refresh("main", other.refresh_token, "cli").error().status, 401);
  // A new sign-in works and gets a working refresh token.
  const TokenSet again = sign_in_ok("alice");
  EXPECT_TRUE(pools_->refresh("main", again.refresh_token, ""));
  // Sign-out needs a real access token of this pool.
  EXPECT_EQ(pools_->sign_out("main", t.id_token).error().status, 401);
  EXPECT_EQ(pools_->sign_out("main", "garbage").error().status, 401);
  // Admin sign-out.
  ASSERT_TRUE(pools_->admin_sign_out("main", "alice"));
  EXPECT_EQ(pools_->refresh("main", again.refresh_token, "").error().status, 401);
}

TEST_F(UserPoolTest, RefreshTokensExpire) {
  ASSERT_TRUE(pools_->sign_up("main", "alice", "passw0rd-1", {}));
  const TokenSet t = sign_in_ok("alice");
  clock_.advance(2h + 1s);
  EXPECT_EQ(pools_->refresh("main", t.refresh_token, "").error().status, 401);
}

TEST_F(UserPoolTest, FailedSignInsAreThrottledWithGrowingBackoff) {
  ASSERT_TRUE(pools_->sign_up("main", "alice", "passw0rd-1", {}));
  auto attempt = [&](std::string_view pw, const std::string& ip = "10.0.0.1") {
    return pools_->sign_in("main", "alice", pw, "web", ip);
  };
  EXPECT_EQ(attempt("bad-pass-1").error().status, 401);
  EXPECT_EQ(attempt("bad-pass-2").error().status, 401);  // free attempts used up
  EXPECT_EQ(attempt("bad-pass-3").error().status, 401);  // locks for 1 s
  auto locked = attempt("passw0rd-1");                   // even the right password waits
  ASSERT_FALSE(locked);
  EXPECT_EQ(locked.error().status, 429);
  EXPECT_EQ(locked.error().code, "TooManyFailedAttempts");
  EXPECT_EQ(locked.error().retry_after, 1s);
  // The user is locked from any address.
  EXPECT_EQ(attempt("passw0rd-1", "10.9.9.9").error().status, 429);
  clock_.advance(1s);
  EXPECT_EQ(attempt("bad-pass-4").error().status, 401);  // locks for 2 s
  clock_.advance(1s);
  EXPECT_EQ(attempt("passw0rd-1").error().status, 429);
  clock_.advance(1s);
  EXPECT_EQ(attempt("bad-pass-5").error().status, 401);  // 4 s (the cap)
  clock_.advance(3s);
  EXPECT_EQ(attempt("passw0rd-1").error().retry_after, 1s);
  clock_.advance(1s);
  EXPECT_EQ(attempt("bad-pass-6").error().status, 401);  // still 4 s: capped
  EXPECT_EQ(attempt("passw0rd-1").error().retry_after, 4s);
  clock_.advance(4s);
  // Success clears the user's count.
  EXPECT_TRUE(attempt("passw0rd-1", "10.0.0.7"));
  EXPECT_EQ(attempt("bad-pass-7", "10.0.0.7").error().status, 401);
  EXPECT_EQ(attempt("passw0rd-1", "10.0.0.7").has_value(), true);
}

TEST_F(UserPoolTest, OneAddressGuessingManyUsersIsThrottled) {
  for (const char* u : {"u1", "u2", "u3", "u4"}) {
    ASSERT_TRUE(pools_->sign_up("main", u, "passw0rd-1", {}));
  }
  EXPECT_EQ(pools_->sign_in("main", "u1", "wrong-pw-1", "web", "10.6.6.6").error().status, 401);
  EXPECT_EQ(pools_->sign_in("main", "u2", "wrong-pw-1", "web", "10.6.6.6").error().status, 401);
  EXPECT_EQ(pools_->sign_in("main", "u3", "wrong-pw-1", "web", "10.6.6.6").error().status, 401);
  EXPECT_EQ(pools_->sign_in("main", "u4", "passw0rd-1", "web", "10.6.6.6").error().status, 429);
  // Signing in to one's own account does not reset the address's count.
  EXPECT_TRUE(pools_->sign_in("main", "u4", "passw0rd-1", "web", "10.1.1.1"));
  EXPECT_EQ(pools_->sign_in("main", "u4", "passw0rd-1", "web", "10.6.6.6").error().status, 429);
}

TEST_F(UserPoolTest, KeyRotationKeepsOldTokensValid) {
  ASSERT_TRUE(pools_->sign_up("main", "alice", "passw0rd-1", {}));
  const TokenSet before = sign_in_ok("alice");
  Claims c;
  ASSERT_EQ(check(before.access_token, TokenUse::kAccess, c), JwtStatus::kOk);
  const std::string old_kid = c.kid;
  auto v0 = pools_->keys_version();
  ASSERT_TRUE(v0);
  auto k = pools_->rotate_key("main");
  ASSERT_TRUE(k) << k.error().message;
  EXPECT_NE(k->kid, old_kid);
  EXPECT_GT(*pools_->keys_version(), *v0);
  EXPECT_EQ(check(before.access_token, TokenUse::kAccess, c), JwtStatus::kOk);
  const TokenSet after = sign_in_ok("alice");
  ASSERT_EQ(check(after.access_token, TokenUse::kAccess, c), JwtStatus::kOk);
  EXPECT_EQ(c.kid, k->kid);
  auto keys = pools_->list_keys("main");
  ASSERT_TRUE(keys);
  ASSERT_EQ(keys->size(), 2u);
  EXPECT_NE((*keys)[0].retired_ms, 0);
  EXPECT_EQ((*keys)[1].retired_ms, 0);
  // Once every token the old key signed has expired (10 min + 5 min grace), it is unpublished.
  clock_.advance(16min);
  ASSERT_TRUE(pools_->load_keys(false));
  EXPECT_EQ(pools_->jwks("main")->find(old_kid), nullptr);
  EXPECT_NE(pools_->jwks("main")->find(k->kid), nullptr);
  EXPECT_EQ(pools_->list_keys("main")->size(), 1u);
}

TEST_F(UserPoolTest, SigningAlgorithmChangeRotatesAtStart) {
  ASSERT_TRUE(pools_->sign_up("main", "alice", "passw0rd-1", {}));
  const TokenSet ed = sign_in_ok("alice");
  open(make_config("auto", "RS256"));  // same store, new config
  const TokenSet rsa = sign_in_ok("alice");
  Claims c;
  ASSERT_EQ(check(rsa.access_token, TokenUse::kAccess, c), JwtStatus::kOk);
  EXPECT_EQ(Jwks::key_alg(*pools_->jwks("main")->find(c.kid)), Alg::kRS256);
  EXPECT_EQ(check(ed.access_token, TokenUse::kAccess, c), JwtStatus::kOk);  // still published
}

TEST_F(UserPoolTest, PasswordsAreRehashedWhenTheCostChanges) {
  ASSERT_TRUE(pools_->sign_up("main", "alice", "passw0rd-1", {}));
  config::Config c = make_config();
  c.user_pools[0].argon2.memory = 16 * 1024;
  open(c);
  sign_in_ok("alice");
  sign_in_ok("alice");  // works with the rehashed password too
}

TEST(SignInThrottle, MemoryIsBounded) {
  core::ManualClock clock;
  SignInThrottleState t(clock);
  config::SignInThrottle cfg;
  cfg.free_attempts = 0;
  cfg.reset_after = 1s;
  for (std::size_t i = 0; i < SignInThrottleState::kMaxEntries + 10; ++i) {
    t.failed(cfg, "u" + std::to_string(i), "ip");
  }
  // Past the cap new users go untracked; the IP is still counted.
  EXPECT_EQ(t.locked_for("u" + std::to_string(SignInThrottleState::kMaxEntries + 5), "ip2"),
            std::chrono::milliseconds(0));
  EXPECT_GT(t.locked_for("x", "ip"), std::chrono::milliseconds(0));
  clock.advance(std::chrono::hours(1));
  t.failed(cfg, "fresh", "ip3");  // stale entries are swept to make room
  EXPECT_GT(t.locked_for("fresh", "none"), std::chrono::milliseconds(0));
}

TEST(PasswordPolicy, Classes) {
  config::PasswordPolicy p;
  p.min_length = 6;
  p.require_lowercase = p.require_uppercase = p.require_digits = p.require_symbols = true;
  EXPECT_TRUE(check_password(p, "Ab1!xy").empty());
  EXPECT_FALSE(check_password(p, "ab1!xy").empty());
  EXPECT_FALSE(check_password(p, "AB1!XY").empty());
  EXPECT_FALSE(check_password(p, "Abc!xy").empty());
  EXPECT_FALSE(check_password(p, "Ab1 xy").empty());  // a space is not a symbol
  EXPECT_FALSE(check_password(p, "Ab1!x").empty());
}

TEST(UserArn, Shape) {
  config::IdentityConfig id;
  id.account_id = "123456789012";
  id.region = "eu-west-1";
  EXPECT_EQ(user_arn(id, "main", "abc"),
            "arn:gatehouse:cognito-idp:eu-west-1:123456789012:userpool/main/user/abc");
}

}  // namespace
}  // namespace gatehouse::identity
