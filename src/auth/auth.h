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

// Splits "ghk_<id>_<secret>"; false when malformed.
[[nodiscard]] bool parse_key(std::string_view presented, std::string_view& id) noexcept;
// The same, with the id as the 64-bit number its 16 hex digits spell.
[[nodiscard]] bool parse_key_id(std::string_view presented, std::uint64_t& id) noexcept;
// A key id (16 lowercase hex digits) as that number; false when malformed.
[[nodiscard]] bool parse_hex_id(std::string_view id_hex, std::uint64_t& id) noexcept;
// A stored key hash (64 hex digits) as its 32 raw bytes; false when malformed.
[[nodiscard]] bool parse_key_hash(std::string_view hex, std::array<unsigned char, 32>& out) noexcept;
// Mixes a key id with a per-process random seed into a table index (the ids presented are
// chosen by clients, so the probe sequence must not be predictable).
[[nodiscard]] std::uint64_t key_slot_hash(std::uint64_t id) noexcept;

// Immutable index: id → entry. T is what the gateway attaches to each key (its limiter state).
// Thread-safe to share (read-only) once built.
//
// Lookups touch one cache line for the id and digest (an open-addressed table of 64-byte
// slots), then the entry itself: with many keys the index stays cheap because a verification
// does not chase strings on the heap.
template <class T>
class KeyIndex {
 public:
  struct Entry {
    ApiKey key;
    T* state = nullptr;  // owned elsewhere; outlives the index
  };

  // Revoked or malformed records are kept out of the table (verify() never finds them).
  void add(ApiKey key, T* state);

  // The entry for a presented key, or nullptr when it is malformed, unknown or revoked. The
  // digest comparison is constant-time; the id lookup is not secret.
  [[nodiscard]] const Entry* verify(std::string_view presented) const;

  [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }

 private:
  struct alignas(64) Slot {
    std::uint64_t id = 0;
    std::uint32_t entry = kEmpty;  // index into entries_
    std::array<unsigned char, 32> digest{};
  };
  static constexpr std::uint32_t kEmpty = 0xffffffffu;

  void insert(std::uint64_t id, std::uint32_t entry, const std::array<unsigned char, 32>& digest);
  void grow();

  std::vector<Entry> entries_;
  std::vector<Slot> slots_;  // size a power of two, at most half full
  std::size_t used_ = 0;
};

template <class T>
void KeyIndex<T>::add(ApiKey key, T* state) {
  std::uint64_t id = 0;
  std::array<unsigned char, 32> digest{};
  const bool indexable =
      !key.revoked && parse_hex_id(key.id, id) && parse_key_hash(key.hash, digest);
  entries_.push_back(Entry{std::move(key), state});
  if (!indexable) {
    return;
  }
  if ((used_ + 1) * 2 > slots_.size()) {
    grow();
  }
  insert(id, static_cast<std::uint32_t>(entries_.size() - 1), digest);
}

template <class T>
void KeyIndex<T>::insert(std::uint64_t id, std::uint32_t entry,
                         const std::array<unsigned char, 32>& digest) {
  const std::size_t mask = slots_.size() - 1;
  for (std::size_t i = key_slot_hash(id) & mask;; i = (i + 1) & mask) {
    Slot& s = slots_[i];
    if (s.entry == kEmpty) {
      s = Slot{id, entry, digest};
      ++used_;
      return;
    }
    if (s.id == id) {  // a duplicate id (cannot happen: ids are unique in the store)
      s.entry = entry;
      s.digest = digest;
      return;
    }
  }
}

template <class T>
void KeyIndex<T>::grow() {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(old.empty() ? 16 : old.size() * 2, Slot{});
  used_ = 0;
  for (const Slot& s : old) {
    if (s.entry != kEmpty) {
      insert(s.id, s.entry, s.digest);
    }
  }
}

template <class T>
const typename KeyIndex<T>::Entry* KeyIndex<T>::verify(std::string_view presented) const {
  std::uint64_t id = 0;
  if (slots_.empty() || !parse_key_id(presented, id)) {
    return nullptr;
  }
  const std::size_t mask = slots_.size() - 1;
  for (std::size_t i = key_slot_hash(id) & mask;; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (s.entry == kEmpty) {
      return nullptr;  // the table is at most half full: a miss ends at an empty slot
    }
    if (s.id == id) {
      std::array<unsigned char, 32> digest;
      core::sha256(presented, digest);
      if (!core::constant_time_equal(
              std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()),
              std::string_view(reinterpret_cast<const char*>(s.digest.data()), s.digest.size()))) {
        return nullptr;
      }
      return &entries_[s.entry];
    }
  }
}

}  // namespace gatehouse::auth
