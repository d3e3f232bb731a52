#pragma once
// gatehouse::auth — caller identities. For now: API keys.
//
// An API key is "ghk_<id>_<secret>": a 16-hex-digit public id and 48 hex digits (192 bits) of
// secret. Only the key's SHA-256 is stored (a secret of that entropy needs no slow hash); the
// full key is shown once, when created or rotated. KeyRegistry is the durable side (the store);
// KeyIndex is an immutable in-memory index the request path reads without locks.

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/core.h"
#include "store/store.h"

namespace gatehouse::auth {

// A stored key, without its secret.
struct ApiKey {
  std::string id;                   // 16 lowercase hex digits
  std::string name;                 // label, 1..128 bytes
  std::string plan;                 // usage plan name
  std::vector<std::string> stages;  // stages the key is attached to its plan for; empty = all
  std::string hash;                 // SHA-256 (hex) of the full key
  bool revoked = false;
  std::int64_t created_ms = 0;  // wall clock, ms since the epoch
  std::int64_t revoked_ms = 0;
};

struct CreatedKey {
  ApiKey record;
  std::string key;  // the full key: shown once, never stored
};

// Durable CRUD on the keys (table "api_keys" of the store). Thread-safe (the store is); blocking:
// call from the CLI, the control thread or a thread pool, never from an I/O thread.
class KeyRegistry {
 public:
  KeyRegistry(store::Store& store, const core::Clock& clock) : store_(store), clock_(clock) {}

  // Errors: kInvalidArgument (empty or oversized name or plan), kIo.
  [[nodiscard]] core::Result<CreatedKey> create(std::string name, std::string plan,
                                                std::vector<std::string> stages);
  // Every key, revoked ones included, ordered by id.
  [[nodiscard]] core::Result<std::vector<ApiKey>> list();
  // `ref` is an id or a name (a name must be unique among keys, else kConflict). kNotFound.
  [[nodiscard]] core::Result<ApiKey> find(std::string_view ref);
  // Marks the key revoked (it stops working at once for servers that reload keys).
  [[nodiscard]] core::Result<ApiKey> revoke(std::string_view ref);
  // Gives the key a new secret; the old one stops working. Same id, plan and quota counters.
  // kConflict for a revoked key.
  [[nodiscard]] core::Result<CreatedKey> rotate(std::string_view ref);
  // Attaches the key to `plan` for `stages` (empty = all of the plan's stages).
  [[nodiscard]] core::Result<ApiKey> attach(std::string_view ref, std::string plan,
                                            std::vector<std::string> stages);
  // Bumped by every change above: a server polls it to know when to reload its index.
  [[nodiscard]] core::Result<std::int64_t> version();

 private:
  core::Result<ApiKey> save(ApiKey key);

  store::Store& store_;
  const core::Clock& clock_;
};

// Serialization of a record (JSON), exposed for tests and the admin API.
[[nodiscard]] std::string to_json(const ApiKey& key);
[[nodiscard]] core::Result<ApiKey> from_json(std::string_view json);

// Immutable index: id → entry. T is what the gateway attaches to each key (its limiter state).
// Thread-safe to share (read-only).
template <class T>
class KeyIndex {
 public:
  struct Entry {
    ApiKey key;
    T* state = nullptr;  // owned elsewhere; outlives the index
  };

  void add(ApiKey key, T* state) {
    auto id = key.id;
    entries_.emplace(std::move(id), Entry{std::move(key), state});
  }

  // The entry for a presented key, or nullptr when it is malformed, unknown or revoked. The
  // hash comparison is constant-time; the id lookup is not secret.
  [[nodiscard]] const Entry* verify(std::string_view presented) const;

  [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }

 private:
  // Transparent hashing: verify() looks ids up by string_view, with no temporary std::string
  // (a 16-character id is one past the small-string buffer and would allocate per request).
  struct IdHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };
  std::unordered_map<std::string, Entry, IdHash, std::equal_to<>> entries_;
};

// Splits "ghk_<id>_<secret>"; false when malformed.
[[nodiscard]] bool parse_key(std::string_view presented, std::string_view& id) noexcept;

template <class T>
const typename KeyIndex<T>::Entry* KeyIndex<T>::verify(std::string_view presented) const {
  std::string_view id;
  if (!parse_key(presented, id)) {
    return nullptr;
  }
  const auto it = entries_.find(id);
  if (it == entries_.end() || it->second.key.revoked) {
    return nullptr;
  }
  std::array<char, 64> hash;
  core::sha256_hex(presented, hash);
  if (!core::constant_time_equal(std::string_view(hash.data(), hash.size()), it->second.key.hash)) {
    return nullptr;
  }
  return &it->second;
}

}  // namespace gatehouse::auth
