#include "auth/auth.h"

#include <gtest/gtest.h>

namespace gatehouse::auth {
namespace {

class KeysTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = store::open("sqlite://:memory:", clock_);
    ASSERT_TRUE(s.has_value()) << s.error().message;
    store_ = std::move(*s);
    registry_ = std::make_unique<KeyRegistry>(*store_, clock_);
  }

  KeyIndex<int> index() {
    KeyIndex<int> idx;
    auto all = registry_->list();
    EXPECT_TRUE(all.has_value());
    for (auto& k : *all) {
      idx.add(std::move(k), &state_);
    }
    return idx;
  }

  core::ManualClock clock_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<KeyRegistry> registry_;
  int state_ = 0;
};

TEST_F(KeysTest, CreateStoresOnlyTheHash) {
  auto k = registry_->create("alice", "free", {"prod"});
  ASSERT_TRUE(k.has_value()) << k.error().message;
  std::string_view id;
  ASSERT_TRUE(parse_key(k->key, id));
  EXPECT_EQ(id, k->record.id);
  EXPECT_EQ(k->record.hash, core::sha256_hex(k->key));
  auto raw = store_->get("api_keys", k->record.id);
  ASSERT_TRUE(raw.has_value());
  EXPECT_EQ(raw->find(k->key.substr(21)), std::string::npos) << "the secret must not be stored";
  auto listed = registry_->list();
  ASSERT_TRUE(listed.has_value());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].name, "alice");
  EXPECT_EQ((*listed)[0].plan, "free");
  EXPECT_EQ((*listed)[0].stages, std::vector<std::string>{"prod"});
}

TEST_F(KeysTest, IndexVerifiesOnlyTheExactLiveKey) {
  auto k = registry_->create("alice", "free", {});
  ASSERT_TRUE(k.has_value());
  auto idx = index();
  const auto m = idx.verify(k->key);
  ASSERT_TRUE(m);
  EXPECT_EQ(m.entry->key.name, "alice");
  EXPECT_EQ(m.state, &state_);
  std::string wrong = k->key;
  wrong.back() = wrong.back() == 'a' ? 'b' : 'a';
  EXPECT_FALSE(idx.verify(wrong));
  EXPECT_FALSE(idx.verify(""));
  EXPECT_FALSE(idx.verify("ghk_"));
  EXPECT_FALSE(idx.verify(k->key + "0"));
  EXPECT_FALSE(idx.verify("ghk_ZZZZZZZZZZZZZZZZ_" + std::string(48, '0')));
}

// Many keys built by hand (the registry would be slow): every live key verifies, its neighbours
// with one hex digit changed in the id or the secret do not, revoked and malformed records are
// never found, and upper-case hex is refused.
TEST(KeyIndexTest, ManyKeysEachFoundExactly) {
  KeyIndex<int> idx;
  int state = 0;
  std::vector<int> states(5000);
  std::vector<std::string> live;
  std::vector<std::string> revoked;
  for (int i = 0; i < 5000; ++i) {
    const std::string key = "ghk_" + core::random_hex(8) + "_" + core::random_hex(24);
    ApiKey rec;
    std::string_view id;
    ASSERT_TRUE(parse_key(key, id));
    rec.id = std::string(id);
    rec.name = "k" + std::to_string(i);
    rec.plan = "free";
    rec.hash = core::sha256_hex(key);
    rec.revoked = i % 10 == 0;
    (rec.revoked ? revoked : live).push_back(key);
    idx.add(std::move(rec), &states[static_cast<std::size_t>(i)], static_cast<std::uint32_t>(i));
  }
  ApiKey broken;  // a record with a malformed hash is never found
  broken.id = "00000000000000ff";
  broken.hash = "xyz";
  idx.add(std::move(broken), &state);
  EXPECT_EQ(idx.size(), 5001u);
  for (const auto& key : live) {
    const auto m = idx.verify(key);
    ASSERT_TRUE(m) << key;
    EXPECT_EQ(m.entry->key.hash, core::sha256_hex(key));
    // The slot hands back the id, the state and the tag without the record.
    char id[16];
    format_hex_id(m.id, id);
    EXPECT_EQ(std::string_view(id, sizeof id), m.entry->key.id);
    EXPECT_EQ(m.state, &states[m.tag]);
    EXPECT_EQ(m.entry->key.name, "k" + std::to_string(m.tag));
  }
  for (const auto& key : revoked) {
    EXPECT_FALSE(idx.verify(key));
  }
  EXPECT_FALSE(idx.verify("ghk_00000000000000ff_" + std::string(48, '0')));
  for (std::size_t i = 0; i < 200; ++i) {
    std::string other_id = live[i];
    other_id[4 + i % 16] = other_id[4 + i % 16] == 'a' ? 'b' : 'a';
    EXPECT_FALSE(idx.verify(other_id));
    std::string other_secret = live[i];
    other_secret[21 + i % 48] = other_secret[21 + i % 48] == 'a' ? 'b' : 'a';
    EXPECT_FALSE(idx.verify(other_secret));
    std::string upper = live[i];
    for (auto& c : upper) {
      c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    }
    upper.replace(0, 4, "ghk_");
    EXPECT_FALSE(idx.verify(upper));
  }
  KeyIndex<int> empty;
  EXPECT_FALSE(empty.verify(live[0]));
}

TEST(KeyIndexTest, HexIdRoundTrips) {
  for (const std::string_view text : {"0000000000000000", "00000000000000ff", "0123456789abcdef",
                                      "ffffffffffffffff", "8000000000000001"}) {
    std::uint64_t v = 0;
    ASSERT_TRUE(parse_hex_id(text, v)) << text;
    char back[16];
    format_hex_id(v, back);
    EXPECT_EQ(std::string_view(back, sizeof back), text);
  }
  std::uint64_t v = 0;
  EXPECT_FALSE(parse_hex_id("0123456789ABCDEF", v));  // upper case is not an id
  EXPECT_FALSE(parse_hex_id("0123456789abcde", v));
}

TEST_F(KeysTest, RevokedKeysStopWorking) {
  auto k = registry_->create("alice", "free", {});
  ASSERT_TRUE(k.has_value());
  auto r = registry_->revoke("alice");
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->revoked);
  EXPECT_FALSE(index().verify(k->key));
  EXPECT_FALSE(registry_->rotate(k->record.id).has_value());
}

TEST_F(KeysTest, RotateReplacesTheSecret) {
  auto k = registry_->create("alice", "free", {});
  ASSERT_TRUE(k.has_value());
  auto v0 = registry_->version();
  auto rotated = registry_->rotate(k->record.id);
  ASSERT_TRUE(rotated.has_value());
  EXPECT_EQ(rotated->record.id, k->record.id);
  EXPECT_NE(rotated->key, k->key);
  auto idx = index();
  EXPECT_FALSE(idx.verify(k->key));
  EXPECT_TRUE(idx.verify(rotated->key));
  EXPECT_GT(*registry_->version(), *v0);
}

TEST_F(KeysTest, AttachAndFind) {
  ASSERT_TRUE(registry_->create("alice", "free", {}).has_value());
  ASSERT_TRUE(registry_->create("bob", "free", {}).has_value());
  auto a = registry_->attach("alice", "pro", {"prod", "dev"});
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->plan, "pro");
  EXPECT_EQ(registry_->find("nobody").error().code, core::ErrorCode::kNotFound);
  ASSERT_TRUE(registry_->create("bob", "free", {}).has_value());
  EXPECT_EQ(registry_->find("bob").error().code, core::ErrorCode::kConflict);
  EXPECT_FALSE(registry_->create("", "free", {}).has_value());
  EXPECT_FALSE(registry_->create(std::string(200, 'x'), "free", {}).has_value());
}

TEST(KeyJson, RoundTripAndHostileInput) {
  ApiKey k;
  k.id = "0123456789abcdef";
  k.name = "a\"b";
  k.plan = "free";
  k.stages = {"prod"};
  k.hash = std::string(64, 'a');
  k.revoked = true;
  k.created_ms = 5;
  auto back = from_json(to_json(k));
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->name, k.name);
  EXPECT_EQ(back->stages, k.stages);
  EXPECT_TRUE(back->revoked);
  EXPECT_FALSE(from_json("").has_value());
  EXPECT_FALSE(from_json("[]").has_value());
  EXPECT_FALSE(from_json("{\"id\":1}").has_value());
}

}  // namespace
}  // namespace gatehouse::auth
