#include "auth/auth.h"

#include <openssl/rand.h>

#include <boost/json.hpp>

namespace gatehouse::auth {

namespace json = boost::json;

namespace {

constexpr std::string_view kTable = "api_keys";
constexpr std::string_view kVersionCounter = "api_keys_version";
constexpr std::string_view kPrefix = "ghk_";
constexpr std::size_t kIdLen = 16;
constexpr std::size_t kSecretLen = 48;

bool is_hex(std::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  return true;
}

core::Result<void> check_label(std::string_view what, std::string_view v) {
  if (v.empty() || v.size() > 128) {
    return core::make_error(core::ErrorCode::kInvalidArgument,
                            std::string(what) + " must be 1 to 128 bytes");
  }
  return {};
}

std::int64_t ms_since_epoch(const core::Clock& clock) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock.wall().time_since_epoch())
      .count();
}

}  // namespace

namespace {

// 0..15 for a lowercase hex digit, 16 otherwise.
constexpr std::array<std::uint8_t, 256> kHexValue = [] {
  std::array<std::uint8_t, 256> t{};
  for (auto& v : t) {
    v = 16;
  }
  for (int c = '0'; c <= '9'; ++c) {
    t[static_cast<std::size_t>(c)] = static_cast<std::uint8_t>(c - '0');
  }
  for (int c = 'a'; c <= 'f'; ++c) {
    t[static_cast<std::size_t>(c)] = static_cast<std::uint8_t>(c - 'a' + 10);
  }
  return t;
}();

std::uint8_t hex_value(char c) noexcept { return kHexValue[static_cast<unsigned char>(c)]; }

}  // namespace

bool parse_hex_id(std::string_view id_hex, std::uint64_t& id) noexcept {
  if (id_hex.size() != kIdLen) {
    return false;
  }
  std::uint64_t v = 0;
  std::uint8_t bad = 0;
  for (char c : id_hex) {
    const std::uint8_t d = hex_value(c);
    bad |= d & 16;
    v = (v << 4) | (d & 15);
  }
  id = v;
  return bad == 0;
}

void format_hex_id(std::uint64_t id, char* out) noexcept {
  static constexpr char kDigits[] = "0123456789abcdef";
  for (std::size_t i = kIdLen; i-- > 0;) {
    out[i] = kDigits[id & 15];
    id >>= 4;
  }
}

bool parse_key_id(std::string_view presented, std::uint64_t& id) noexcept {
  if (presented.size() != kPrefix.size() + kIdLen + 1 + kSecretLen ||
      presented.substr(0, kPrefix.size()) != kPrefix || presented[kPrefix.size() + kIdLen] != '_') {
    return false;
  }
  std::uint8_t bad = 0;
  for (char c : presented.substr(kPrefix.size() + kIdLen + 1)) {
    bad |= hex_value(c) & 16;
  }
  return bad == 0 && parse_hex_id(presented.substr(kPrefix.size(), kIdLen), id);
}

bool parse_key_hash(std::string_view hex, std::array<unsigned char, 32>& out) noexcept {
  if (hex.size() != 64) {
    return false;
  }
  std::uint8_t bad = 0;
  for (std::size_t i = 0; i < out.size(); ++i) {
    const std::uint8_t hi = hex_value(hex[2 * i]);
    const std::uint8_t lo = hex_value(hex[2 * i + 1]);
    bad |= (hi | lo) & 16;
    out[i] = static_cast<unsigned char>(((hi & 15) << 4) | (lo & 15));
  }
  return bad == 0;
}

std::uint64_t key_slot_hash(std::uint64_t id) noexcept {
  static const std::uint64_t seed = [] {
    std::uint64_t s = 0;
    // A failed RAND_bytes leaves 0: ids are random already, so the table still spreads.
    (void)RAND_bytes(reinterpret_cast<unsigned char*>(&s), sizeof s);
    return s | 1;
  }();
  std::uint64_t h = (id ^ seed) * 0x9E3779B97F4A7C15ULL;
  return h ^ (h >> 31);
}

bool parse_key(std::string_view presented, std::string_view& id) noexcept {
  if (presented.size() != kPrefix.size() + kIdLen + 1 + kSecretLen ||
      presented.substr(0, kPrefix.size()) != kPrefix || presented[kPrefix.size() + kIdLen] != '_') {
    return false;
  }
  id = presented.substr(kPrefix.size(), kIdLen);
  return is_hex(id) && is_hex(presented.substr(kPrefix.size() + kIdLen + 1));
}

std::string to_json(const ApiKey& key) {
  json::array stages;
  for (const auto& s : key.stages) {
    stages.emplace_back(s);
  }
  json::object o;
  o["id"] = key.id;
  o["name"] = key.name;
  o["plan"] = key.plan;
  o["stages"] = std::move(stages);
  o["hash"] = key.hash;
  o["revoked"] = key.revoked;
  o["created_ms"] = key.created_ms;
  o["revoked_ms"] = key.revoked_ms;
  return json::serialize(o);
}

core::Result<ApiKey> from_json(std::string_view text) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) {
    return core::make_error(core::ErrorCode::kIo, "stored API key record is not a JSON object");
  }
  const json::object& o = v.get_object();
  ApiKey k;
  auto str = [&](const char* name, std::string& out) {
    if (const auto* f = o.if_contains(name); f != nullptr && f->is_string()) {
      out = std::string(f->get_string());
      return true;
    }
    return false;
  };
  if (!str("id", k.id) || !str("hash", k.hash) || !str("plan", k.plan)) {
    return core::make_error(core::ErrorCode::kIo, "stored API key record lacks id, hash or plan");
  }
  str("name", k.name);
  if (const auto* f = o.if_contains("stages"); f != nullptr && f->is_array()) {
    for (const auto& s : f->get_array()) {
      if (s.is_string()) {
        k.stages.emplace_back(s.get_string());
      }
    }
  }
  if (const auto* f = o.if_contains("revoked"); f != nullptr && f->is_bool()) {
    k.revoked = f->get_bool();
  }
  if (const auto* f = o.if_contains("created_ms"); f != nullptr && f->is_int64()) {
    k.created_ms = f->get_int64();
  }
  if (const auto* f = o.if_contains("revoked_ms"); f != nullptr && f->is_int64()) {
    k.revoked_ms = f->get_int64();
  }
  return k;
}

core::Result<ApiKey> KeyRegistry::save(ApiKey key) {
  store::Batch b;
  b.emplace_back(store::Put{std::string(kTable), key.id, to_json(key)});
  b.emplace_back(store::AddCounter{std::string(kVersionCounter), 1});
  auto r = store_.write_sync(std::move(b));
  if (!r) {
    return tl::unexpected(r.error());
  }
  return key;
}

core::Result<CreatedKey> KeyRegistry::create(std::string name, std::string plan,
                                             std::vector<std::string> stages) {
  if (auto r = check_label("name", name); !r) {
    return tl::unexpected(r.error());
  }
  if (auto r = check_label("plan", plan); !r) {
    return tl::unexpected(r.error());
  }
  CreatedKey out;
  out.record.id = core::random_hex(kIdLen / 2);
  out.record.name = std::move(name);
  out.record.plan = std::move(plan);
  out.record.stages = std::move(stages);
  out.record.created_ms = ms_since_epoch(clock_);
  out.key = std::string(kPrefix) + out.record.id + "_" + core::random_hex(kSecretLen / 2);
  out.record.hash = core::sha256_hex(out.key);
  auto saved = save(out.record);
  if (!saved) {
    return tl::unexpected(saved.error());
  }
  return out;
}

core::Result<std::vector<ApiKey>> KeyRegistry::list() {
  auto rows = store_.scan(kTable, "", std::numeric_limits<std::size_t>::max());
  if (!rows) {
    return tl::unexpected(rows.error());
  }
  std::vector<ApiKey> out;
  out.reserve(rows->size());
  for (const auto& [id, value] : *rows) {
    auto k = from_json(value);
    if (!k) {
      return tl::unexpected(k.error());
    }
    out.push_back(std::move(*k));
  }
  return out;
}

core::Result<ApiKey> KeyRegistry::find(std::string_view ref) {
  if (ref.size() == kIdLen && is_hex(ref)) {
    auto v = store_.get(kTable, ref);
    if (v) {
      return from_json(*v);
    }
    if (v.error().code != core::ErrorCode::kNotFound) {
      return tl::unexpected(v.error());
    }
  }
  auto all = list();
  if (!all) {
    return tl::unexpected(all.error());
  }
  const ApiKey* found = nullptr;
  for (const auto& k : *all) {
    if (k.name == ref) {
      if (found != nullptr) {
        return core::make_error(core::ErrorCode::kConflict,
                                "several keys are named '" + std::string(ref) + "': use the id");
      }
      found = &k;
    }
  }
  if (found == nullptr) {
    return core::make_error(core::ErrorCode::kNotFound, "no API key '" + std::string(ref) + "'");
  }
  return *found;
}

core::Result<ApiKey> KeyRegistry::revoke(std::string_view ref) {
  auto k = find(ref);
  if (!k) {
    return k;
  }
  if (!k->revoked) {
    k->revoked = true;
    k->revoked_ms = ms_since_epoch(clock_);
  }
  return save(std::move(*k));
}

core::Result<CreatedKey> KeyRegistry::rotate(std::string_view ref) {
  auto k = find(ref);
  if (!k) {
    return tl::unexpected(k.error());
  }
  if (k->revoked) {
    return core::make_error(core::ErrorCode::kConflict, "key " + k->id + " is revoked");
  }
  CreatedKey out;
  out.key = std::string(kPrefix) + k->id + "_" + core::random_hex(kSecretLen / 2);
  k->hash = core::sha256_hex(out.key);
  auto saved = save(std::move(*k));
  if (!saved) {
    return tl::unexpected(saved.error());
  }
  out.record = std::move(*saved);
  return out;
}

core::Result<ApiKey> KeyRegistry::attach(std::string_view ref, std::string plan,
                                         std::vector<std::string> stages) {
  if (auto r = check_label("plan", plan); !r) {
    return tl::unexpected(r.error());
  }
  auto k = find(ref);
  if (!k) {
    return k;
  }
  k->plan = std::move(plan);
  k->stages = std::move(stages);
  return save(std::move(*k));
}

core::Result<std::int64_t> KeyRegistry::version() { return store_.counter(kVersionCounter); }

}  // namespace gatehouse::auth
