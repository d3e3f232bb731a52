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
#include <span>
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
[[nodiscard]] bool parse_key_hash(std::string_view hex,
                                  std::array<unsigned char, 32>& out) noexcept;
// Mixes a key id with a per-process random seed into a table index (the ids presented are
// chosen by clients, so the probe sequence must not be predictable).
[[nodiscard]] std::uint64_t key_slot_hash(std::uint64_t id) noexcept;

// A key id as its 16 lowercase hex digits (the inverse of parse_hex_id); writes exactly 16 chars.
void format_hex_id(std::uint64_t id, char* out) noexcept;

// Immutable index: id → entry. T is what the gateway attaches to each key (its limiter state).
// Thread-safe to share (read-only) once built.
//
// A verification touches one cache line of the index: an open-addressed table of 64-byte slots,
// each holding the id, the digest, the key's T* and a 32-bit tag the owner chose when adding it.
// What the hot path needs (the state, the id, the tag) comes back from that slot, so with many
// keys a verification does not touch the entry (the full record and its strings) at all. The
// slot is prefetched before the presented key is hashed, so its cache miss overlaps the hash.
template <class T>
class KeyIndex {
 public:
  struct Entry {
    ApiKey key;
  };
  // What verify() found. `entry` is nullptr when nothing was; reading *entry costs a cache line
  // or more, the other fields come from the slot.
  struct Match {
    const Entry* entry = nullptr;
    T* state = nullptr;     // as given to add(): owned elsewhere, outlives the index
    std::uint64_t id = 0;   // the key id as a number (format_hex_id gives back its text)
    std::uint32_t tag = 0;  // as given to add()
    explicit operator bool() const noexcept { return entry != nullptr; }
  };

  // Revoked or malformed records are kept out of the table (verify() never finds them).
  void add(ApiKey key, T* state, std::uint32_t tag = 0);

  // The match for a presented key; empty when it is malformed, unknown or revoked. The digest
  // comparison is constant-time; the id lookup is not secret.
  [[nodiscard]] Match verify(std::string_view presented) const;

  [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }

 private:
  struct alignas(64) Slot {
    std::uint64_t id = 0;
    std::uint32_t entry = kEmpty;  // index into entries_
    std::uint32_t tag = 0;
    T* state = nullptr;
    std::array<unsigned char, 32> digest{};
  };
  static_assert(sizeof(Slot) == 64);
  static constexpr std::uint32_t kEmpty = 0xffffffffu;

  void insert(const Slot& slot);
  void grow();

  std::vector<Entry> entries_;
  std::vector<Slot> slots_;  // size a power of two, at most half full
  std::size_t used_ = 0;
};

template <class T>
void KeyIndex<T>::add(ApiKey key, T* state, std::uint32_t tag) {
  Slot slot;
  const bool indexable =
      !key.revoked && parse_hex_id(key.id, slot.id) && parse_key_hash(key.hash, slot.digest);
  entries_.push_back(Entry{std::move(key)});
  if (!indexable) {
    return;
  }
  if ((used_ + 1) * 2 > slots_.size()) {
    grow();
  }
  slot.entry = static_cast<std::uint32_t>(entries_.size() - 1);
  slot.tag = tag;
  slot.state = state;
  insert(slot);
}

template <class T>
void KeyIndex<T>::insert(const Slot& slot) {
  const std::size_t mask = slots_.size() - 1;
  for (std::size_t i = key_slot_hash(slot.id) & mask;; i = (i + 1) & mask) {
    Slot& s = slots_[i];
    if (s.entry == kEmpty) {
      s = slot;
      ++used_;
      return;
    }
    if (s.id == slot.id) {  // a duplicate id (cannot happen: ids are unique in the store)
      s = slot;
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
      insert(s);
    }
  }
}

template <class T>
typename KeyIndex<T>::Match KeyIndex<T>::verify(std::string_view presented) const {
  std::uint64_t id = 0;
  if (slots_.empty() || !parse_key_id(presented, id)) {
    return {};
  }
  const std::size_t mask = slots_.size() - 1;
  std::size_t i = key_slot_hash(id) & mask;
  __builtin_prefetch(&slots_[i]);
  std::array<unsigned char, 32> digest;
  core::sha256(presented, digest);
  for (;; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (s.entry == kEmpty) {
      return {};  // the table is at most half full: a miss ends at an empty slot
    }
    if (s.id == id) {
      if (!core::constant_time_equal(
              std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()),
              std::string_view(reinterpret_cast<const char*>(s.digest.data()), s.digest.size()))) {
        return {};
      }
      return Match{&entries_[s.entry], s.state, s.id, s.tag};
    }
  }
}

}  // namespace gatehouse::auth

// ================================================================================================
// AWS Signature Version 4 (sigv4.cc, credentials.cc).
//
// Access keys: an access key id "GHIA" + 16 characters [A-Z2-7] (20 characters, the shape of an
// AWS key id) and a 40-character secret. SigV4 verifies an HMAC keyed by the secret, so the
// secret cannot be stored hashed: it is stored encrypted with AES-256-GCM under a key-encryption
// key (KEK) kept in a file created 0600 outside the store (docs/identity.md, "SigV4 access keys",
// says why). Each key belongs to one principal, a role ARN
// "arn:gatehouse:iam::<account>:role/<name>".

namespace gatehouse::auth {

// A stored access key, without its secret.
struct AccessKey {
  std::string id;         // "GHIA" + 16 base32 characters
  std::string role;       // role name, [A-Za-z0-9+=,.@_-]{1,64}
  std::string principal;  // role ARN
  bool revoked = false;
  std::int64_t created_ms = 0;
  std::int64_t revoked_ms = 0;
};

struct CreatedAccessKey {
  AccessKey record;
  std::string secret;  // 40 characters: shown once, stored only encrypted
};

// The key-encryption key: 32 random bytes, hex in a file of mode 0600. Loads it, or creates it
// (O_EXCL, 0600; parent directory created 0700) when `create` and the file does not exist.
// Errors: kIo (unreadable, malformed, or readable by group or others: refused, not trusted),
// kNotFound (absent and !create).
[[nodiscard]] core::Result<std::array<unsigned char, 32>> load_kek(const std::string& path,
                                                                   bool create);
// Where the KEK lives: `kek_file` (config credentials.kek_file) when set, else beside a sqlite
// store ("<db file>.kek"), else "./data/gatehouse.kek".
[[nodiscard]] std::string kek_path(std::string_view kek_file, std::string_view store_url);

// An access key with its secret, decrypted: what the verifier needs. Immutable once built.
struct Credential {
  AccessKey key;
  std::string secret;
};

// Immutable index: access key id → credential (revoked ones left out). Thread-safe to share.
class CredentialIndex {
 public:
  void add(Credential c) {
    auto id = c.key.id;
    entries_.emplace(std::move(id), std::move(c));
  }
  // nullptr when unknown.
  [[nodiscard]] const Credential* find(std::string_view id) const {
    const auto it = entries_.find(id);
    return it == entries_.end() ? nullptr : &it->second;
  }
  [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }

 private:
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };
  std::unordered_map<std::string, Credential, Hash, std::equal_to<>> entries_;
};

// Durable CRUD on access keys (table "sigv4_credentials"). Blocking, like KeyRegistry.
class CredentialRegistry {
 public:
  // `kek` is copied; `account` is the 12-digit account id of the ARNs.
  CredentialRegistry(store::Store& store, const core::Clock& clock,
                     const std::array<unsigned char, 32>& kek, std::string account);
  ~CredentialRegistry();
  CredentialRegistry(const CredentialRegistry&) = delete;
  CredentialRegistry& operator=(const CredentialRegistry&) = delete;

  // Errors: kInvalidArgument (role name), kIo.
  [[nodiscard]] core::Result<CreatedAccessKey> create(std::string_view role);
  // Every key, revoked ones included, ordered by id (no secrets).
  [[nodiscard]] core::Result<std::vector<AccessKey>> list();
  // kNotFound for an unknown id.
  [[nodiscard]] core::Result<AccessKey> revoke(std::string_view id);
  // Every live key with its secret decrypted. kIo when a record does not decrypt (wrong KEK or
  // tampered record: the message names the key id, never the secret).
  [[nodiscard]] core::Result<std::shared_ptr<const CredentialIndex>> load_index();
  // Bumped by every change: servers poll it.
  [[nodiscard]] core::Result<std::int64_t> version();

 private:
  store::Store& store_;
  const core::Clock& clock_;
  std::array<unsigned char, 32> kek_;
  std::string account_;
};

// --- Verification --------------------------------------------------------------------------------

struct SigV4Header {
  std::string_view name;
  std::string_view value;
};

// The request as received. Views borrowed from the caller for the duration of the call.
struct SigV4Request {
  std::string_view method;
  std::string_view path;   // raw, as sent (percent-encoded)
  std::string_view query;  // raw, without '?'
  std::span<const SigV4Header> headers;
  bool body_expected = false;  // a body follows (Content-Length > 0 or chunked)
};

// How the payload is covered (x-amz-content-sha256).
enum class PayloadMode : std::uint8_t {
  kNone,             // no body: verified at once with the empty hash
  kUnsigned,         // UNSIGNED-PAYLOAD
  kDeclaredHash,     // a hex SHA-256 in the header: signature checked before the body, the
                     // body's hash after it
  kBodyHash,         // no header (non-S3 clients): the signature covers sha256(body), so it is
                     // checked once the body is read
  kStreamingSigned,  // STREAMING-AWS4-HMAC-SHA256-PAYLOAD: aws-chunked, chunk signatures
  kStreamingUnsignedTrailer,  // STREAMING-UNSIGNED-PAYLOAD-TRAILER: aws-chunked + checksum
};

// Limits.
constexpr std::size_t kSigV4MaxSignedHeaders = 64;
constexpr std::size_t kSigV4MaxChunkBytes = std::size_t{16} << 20;  // one aws-chunked chunk
constexpr std::int64_t kSigV4MaxPresignSeconds = 7 * 24 * 3600;
constexpr std::chrono::minutes kSigV4MaxSkew{15};

// Per-request verification state, reused across a connection's requests (buffers keep their
// capacity). Holds the derived signing key while the request lives; never logged.
struct SigV4State {
  PayloadMode mode = PayloadMode::kNone;
  bool verified = false;  // the request signature has been checked and matched
  std::string principal;  // role ARN, once verified
  std::string access_key_id;
  std::string canonical;      // canonical request up to and including the signed-headers line
  std::string amz_date;       // 20150830T123600Z
  std::string scope;          // 20150830/us-east-1/service/aws4_request
  std::string signature;      // presented (hex), then the chain's last for streaming
  std::string declared_hash;  // kDeclaredHash: the header's value
  std::string trailer;        // kStreamingUnsignedTrailer: x-amz-trailer (lower-case)
  std::uint64_t decoded_length = 0;  // x-amz-decoded-content-length
  bool has_decoded_length = false;
  std::array<unsigned char, 32> signing_key{};
};

// Verifies SigV4 requests against a CredentialIndex. Not thread-safe: one per worker (it caches
// derived signing keys per (secret, date, region, service), 64 entries).
class SigV4Verifier {
 public:
  // `region`: the region requests must be scoped to. The service in a scope is free; "s3"
  // selects S3's canonical URI rules (no path normalisation, no double encoding).
  explicit SigV4Verifier(std::string region);
  ~SigV4Verifier();
  SigV4Verifier(const SigV4Verifier&) = delete;
  SigV4Verifier& operator=(const SigV4Verifier&) = delete;

  // Before the body: parses the Authorization header or the presigned query, checks the key,
  // the time and the signed headers, and the signature itself unless it covers a body hash
  // that needs the body (kBodyHash with a body). On success st.verified says which.
  // Errors (core codes): kMissingAuthentication (neither header nor query),
  // kAuthorizationHeaderMalformed, kAuthorizationQueryError, kInvalidAccessKeyId,
  // kRequestTimeTooSkewed, kRequestExpired, kSignatureDoesNotMatch, kInvalidArgument (an
  // X-Amz-Security-Token: session tokens are not issued here, so they are refused),
  // kNotImplemented (a payload mode this server does not verify).
  [[nodiscard]] core::Result<void> begin(const SigV4Request& req, const CredentialIndex& keys,
                                         std::chrono::system_clock::time_point now, SigV4State& st);
  // After the body: checks the payload (and the signature for kBodyHash). For the streaming
  // modes decodes aws-chunked `body` into `payload`, verifying every chunk; otherwise `payload`
  // is left untouched and the body stands as is. Errors: kSignatureDoesNotMatch,
  // kContentSha256Mismatch, kInvalidChunk, kIncompleteBody, kBadDigest.
  [[nodiscard]] core::Result<void> finish(SigV4State& st, std::string_view body,
                                          std::string& payload);

  // Exposed for tests (the published vectors): the canonical request and string to sign of
  // `req` for the given signed headers and payload hash.
  [[nodiscard]] static core::Result<std::string> canonical_request(const SigV4Request& req,
                                                                   std::string_view signed_headers,
                                                                   std::string_view payload_hash,
                                                                   bool s3, bool presigned);
  [[nodiscard]] static std::string string_to_sign(std::string_view amz_date, std::string_view scope,
                                                  std::string_view canonical);

  struct Cache;

 private:
  std::string region_;
  std::unique_ptr<Cache> cache_;
};

// Incremental aws-chunked decoder (streaming payloads). Feed bytes in any split; each chunk's
// signature is checked (signed mode) as soon as its data is complete, the trailing checksum
// (unsigned-trailer mode) at the end. Chunks over kSigV4MaxChunkBytes are refused.
class ChunkDecoder {
 public:
  // Signed: key, date, scope and seed signature from a verified SigV4State.
  // Unsigned trailer: `trailer` names the expected checksum header (x-amz-checksum-crc32,
  // -crc32c, -sha1 or -sha256).
  explicit ChunkDecoder(const SigV4State& st);
  ~ChunkDecoder();
  ChunkDecoder(const ChunkDecoder&) = delete;
  ChunkDecoder& operator=(const ChunkDecoder&) = delete;
  // Appends decoded payload to `out`. Errors: kInvalidChunk, kSignatureDoesNotMatch, kBadDigest.
  [[nodiscard]] core::Result<void> feed(std::string_view bytes, std::string& out);
  // After the last byte. kIncompleteBody when the final chunk (or trailer) never came.
  [[nodiscard]] core::Result<void> finish() const;

 private:
  core::Result<void> start_chunk();
  core::Result<void> end_chunk();
  core::Result<void> check_trailer();

  const SigV4State& st_;
  bool signed_;
  enum class Phase : std::uint8_t { kSize, kData, kDataEnd, kTrailer, kDone } phase_ = Phase::kSize;
  std::string line_;
  std::uint64_t want_ = 0;
  std::string chunk_sig_;
  std::string prev_sig_;
  std::string trailer_value_;
  bool trailer_seen_ = false;
  std::uint32_t crc_ = 0;
  std::uint64_t total_ = 0;
  struct Digest;
  std::unique_ptr<Digest> digest_;  // running SHA-256 of the chunk, and of the whole payload
                                    // for a sha1/sha256 trailer
};

}  // namespace gatehouse::auth
