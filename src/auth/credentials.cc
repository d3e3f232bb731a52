// SigV4 access keys: issue, list, revoke, and the encrypted storage of their secrets.
//
// A record in table "sigv4_credentials" is JSON with the secret sealed by AES-256-GCM under the
// KEK: a fresh 96-bit nonce per record, the access key id as additional authenticated data (so a
// sealed secret cannot be moved to another key id), the 128-bit tag checked on every load.
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/json.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <stdexcept>

#include "auth/auth.h"
#include "auth/sigv4_util.h"

namespace gatehouse::auth {

namespace json = boost::json;
using core::ErrorCode;
using core::make_error;

namespace {

constexpr std::string_view kTable = "sigv4_credentials";
constexpr std::string_view kVersionCounter = "sigv4_credentials_version";
constexpr std::string_view kIdPrefix = "GHIA";

void random_bytes(unsigned char* p, std::size_t n) {
  // RAND_bytes fails only when the CSPRNG cannot be seeded: nothing sensible to issue then.
  if (RAND_bytes(p, static_cast<int>(n)) != 1) {
    throw std::runtime_error("the OS random generator failed");
  }
}

std::string new_key_id() {
  static constexpr char kBase32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  std::array<unsigned char, 16> r{};
  random_bytes(r.data(), r.size());
  std::string id(kIdPrefix);
  for (unsigned char c : r) {
    id.push_back(kBase32[c & 31]);
  }
  return id;
}

std::string new_secret() {
  std::array<unsigned char, 30> r{};
  random_bytes(r.data(), r.size());
  std::string s = sigv4_util::base64(r);  // 30 bytes: 40 characters, no padding
  OPENSSL_cleanse(r.data(), r.size());
  return s;
}

bool valid_role(std::string_view r) {
  if (r.empty() || r.size() > 64) {
    return false;
  }
  for (char c : r) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '+' || c == '=' || c == ',' || c == '.' || c == '@' || c == '_' ||
                    c == '-';
    if (!ok) {
      return false;
    }
  }
  return true;
}

std::string hex(std::span<const unsigned char> b) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : b) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

bool unhex(std::string_view s, std::string& out) {
  if (s.size() % 2 != 0) {
    return false;
  }
  out.clear();
  for (std::size_t i = 0; i < s.size(); i += 2) {
    auto v = [](char c) {
      return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    };
    const int hi = v(s[i]), lo = v(s[i + 1]);
    if (hi < 0 || lo < 0) {
      return false;
    }
    out.push_back(static_cast<char>(hi * 16 + lo));
  }
  return true;
}

struct Sealed {
  std::string nonce;  // 12 bytes
  std::string ciphertext;
  std::string tag;  // 16 bytes
};

struct CipherCtx {
  EVP_CIPHER_CTX* p = EVP_CIPHER_CTX_new();
  ~CipherCtx() { EVP_CIPHER_CTX_free(p); }
};

core::Result<Sealed> seal(const std::array<unsigned char, 32>& kek, std::string_view aad,
                          std::string_view plain) {
  Sealed s;
  s.nonce.resize(12);
  random_bytes(reinterpret_cast<unsigned char*>(s.nonce.data()), s.nonce.size());
  s.ciphertext.resize(plain.size());
  s.tag.resize(16);
  CipherCtx c;
  int len = 0;
  const auto* n = reinterpret_cast<const unsigned char*>(s.nonce.data());
  if (c.p == nullptr || EVP_EncryptInit_ex(c.p, EVP_aes_256_gcm(), nullptr, kek.data(), n) != 1 ||
      EVP_EncryptUpdate(c.p, nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(c.p, reinterpret_cast<unsigned char*>(s.ciphertext.data()), &len,
                        reinterpret_cast<const unsigned char*>(plain.data()),
                        static_cast<int>(plain.size())) != 1 ||
      EVP_EncryptFinal_ex(c.p, nullptr, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(c.p, EVP_CTRL_GCM_GET_TAG, 16, s.tag.data()) != 1) {
    return make_error(ErrorCode::kInternal, "AES-256-GCM encryption failed");
  }
  return s;
}

core::Result<std::string> open_sealed(const std::array<unsigned char, 32>& kek,
                                      std::string_view aad, const Sealed& s) {
  if (s.nonce.size() != 12 || s.tag.size() != 16) {
    return make_error(ErrorCode::kIo, "malformed sealed secret");
  }
  std::string plain(s.ciphertext.size(), '\0');
  CipherCtx c;
  int len = 0;
  std::string tag = s.tag;
  const auto* n = reinterpret_cast<const unsigned char*>(s.nonce.data());
  if (c.p == nullptr || EVP_DecryptInit_ex(c.p, EVP_aes_256_gcm(), nullptr, kek.data(), n) != 1 ||
      EVP_DecryptUpdate(c.p, nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_DecryptUpdate(c.p, reinterpret_cast<unsigned char*>(plain.data()), &len,
                        reinterpret_cast<const unsigned char*>(s.ciphertext.data()),
                        static_cast<int>(s.ciphertext.size())) != 1 ||
      EVP_CIPHER_CTX_ctrl(c.p, EVP_CTRL_GCM_SET_TAG, 16, tag.data()) != 1 ||
      EVP_DecryptFinal_ex(c.p, nullptr, &len) != 1) {
    OPENSSL_cleanse(plain.data(), plain.size());
    return make_error(ErrorCode::kIo, "sealed secret does not decrypt (wrong KEK or tampered)");
  }
  return plain;
}

std::int64_t ms_since_epoch(const core::Clock& clock) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock.wall().time_since_epoch())
      .count();
}

struct Record {
  AccessKey key;
  Sealed sealed;
};

std::string record_json(const Record& r) {
  json::object o;
  o["id"] = r.key.id;
  o["role"] = r.key.role;
  o["principal"] = r.key.principal;
  o["revoked"] = r.key.revoked;
  o["created_ms"] = r.key.created_ms;
  o["revoked_ms"] = r.key.revoked_ms;
  o["alg"] = "AES-256-GCM";
  o["nonce"] =
      hex({reinterpret_cast<const unsigned char*>(r.sealed.nonce.data()), r.sealed.nonce.size()});
  o["secret"] = hex({reinterpret_cast<const unsigned char*>(r.sealed.ciphertext.data()),
                     r.sealed.ciphertext.size()});
  o["tag"] =
      hex({reinterpret_cast<const unsigned char*>(r.sealed.tag.data()), r.sealed.tag.size()});
  return json::serialize(o);
}

core::Result<Record> parse_record(std::string_view text) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) {
    return make_error(ErrorCode::kIo, "stored access key record is not a JSON object");
  }
  const json::object& o = v.get_object();
  Record r;
  auto str = [&](const char* name, std::string& out) {
    if (const auto* f = o.if_contains(name); f != nullptr && f->is_string()) {
      out = std::string(f->get_string());
      return true;
    }
    return false;
  };
  std::string nonce, secret, tag;
  if (!str("id", r.key.id) || !str("role", r.key.role) || !str("principal", r.key.principal) ||
      !str("nonce", nonce) || !str("secret", secret) || !str("tag", tag) ||
      !unhex(nonce, r.sealed.nonce) || !unhex(secret, r.sealed.ciphertext) ||
      !unhex(tag, r.sealed.tag)) {
    return make_error(ErrorCode::kIo, "stored access key record is incomplete");
  }
  if (const auto* f = o.if_contains("revoked"); f != nullptr && f->is_bool()) {
    r.key.revoked = f->get_bool();
  }
  if (const auto* f = o.if_contains("created_ms"); f != nullptr && f->is_int64()) {
    r.key.created_ms = f->get_int64();
  }
  if (const auto* f = o.if_contains("revoked_ms"); f != nullptr && f->is_int64()) {
    r.key.revoked_ms = f->get_int64();
  }
  return r;
}

}  // namespace

core::Result<std::array<unsigned char, 32>> load_kek(const std::string& path, bool create) {
  std::array<unsigned char, 32> kek{};
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0 && errno == ENOENT) {
    if (!create) {
      return make_error(ErrorCode::kNotFound, "no key-encryption key at " + path);
    }
    std::error_code ec;
    const auto parent = std::filesystem::path(path).parent_path();
    if (!parent.empty() && !std::filesystem::exists(parent, ec)) {
      std::filesystem::create_directories(parent, ec);
      std::filesystem::permissions(parent, std::filesystem::perms::owner_all, ec);
    }
    random_bytes(kek.data(), kek.size());
    const std::string text = hex(kek) + "\n";
    const int w = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (w < 0) {
      if (errno == EEXIST) {
        return load_kek(path, false);  // another process created it first
      }
      return make_error(ErrorCode::kIo, "cannot create the key-encryption key " + path + ": " +
                                            std::strerror(errno));
    }
    const bool ok = ::write(w, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                    ::fsync(w) == 0;
    ::close(w);
    if (!ok) {
      ::unlink(path.c_str());
      return make_error(ErrorCode::kIo, "cannot write the key-encryption key " + path);
    }
    return kek;
  }
  if (fd < 0) {
    return make_error(ErrorCode::kIo,
                      "cannot open the key-encryption key " + path + ": " + std::strerror(errno));
  }
  struct stat sb {};
  char buf[130];
  const ssize_t n = ::fstat(fd, &sb) == 0 ? ::read(fd, buf, sizeof(buf)) : -1;
  ::close(fd);
  if ((sb.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    return make_error(ErrorCode::kIo, "the key-encryption key " + path +
                                          " is accessible by group or others: chmod 600 it");
  }
  std::string raw;
  std::string_view text(buf, n > 0 ? static_cast<std::size_t>(n) : 0);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) {
    text.remove_suffix(1);
  }
  if (text.size() != 64 || !unhex(text, raw)) {
    return make_error(ErrorCode::kIo,
                      "the key-encryption key " + path + " must hold 64 lower-case hex digits");
  }
  std::memcpy(kek.data(), raw.data(), kek.size());
  OPENSSL_cleanse(raw.data(), raw.size());
  OPENSSL_cleanse(buf, sizeof(buf));
  return kek;
}

std::string kek_path(std::string_view kek_file, std::string_view store_url) {
  if (!kek_file.empty()) {
    return std::string(kek_file);
  }
  constexpr std::string_view kSqlite = "sqlite://";
  if (store_url.substr(0, kSqlite.size()) == kSqlite) {
    const std::string_view file = store_url.substr(kSqlite.size());
    if (!file.empty() && file != ":memory:") {
      return std::string(file) + ".kek";
    }
  }
  return "./data/gatehouse.kek";
}

namespace {

// The principal is derived from the role and the configured account each time a record is read
// (the stored one is informative): changing account_id moves every key with it, as it moves
// every other ARN.
std::string role_principal(std::string_view account, std::string_view role) {
  return "arn:gatehouse:iam::" + std::string(account) + ":role/" + std::string(role);
}

}  // namespace

CredentialRegistry::CredentialRegistry(store::Store& store, const core::Clock& clock,
                                       const std::array<unsigned char, 32>& kek,
                                       std::string account)
    : store_(store), clock_(clock), kek_(kek), account_(std::move(account)) {}

CredentialRegistry::~CredentialRegistry() { OPENSSL_cleanse(kek_.data(), kek_.size()); }

core::Result<CreatedAccessKey> CredentialRegistry::create(std::string_view role) {
  if (!valid_role(role)) {
    return make_error(ErrorCode::kInvalidArgument,
                      "a role name is 1 to 64 characters of [A-Za-z0-9+=,.@_-]");
  }
  CreatedAccessKey out;
  Record r;
  r.key.id = new_key_id();
  r.key.role = std::string(role);
  r.key.principal = role_principal(account_, role);
  r.key.created_ms = ms_since_epoch(clock_);
  out.secret = new_secret();
  auto sealed = seal(kek_, r.key.id, out.secret);
  if (!sealed) {
    return tl::unexpected(sealed.error());
  }
  r.sealed = std::move(*sealed);
  store::Batch b;
  b.emplace_back(store::Put{std::string(kTable), r.key.id, record_json(r)});
  b.emplace_back(store::AddCounter{std::string(kVersionCounter), 1});
  if (auto w = store_.write_sync(std::move(b)); !w) {
    return tl::unexpected(w.error());
  }
  out.record = r.key;
  return out;
}

core::Result<std::vector<AccessKey>> CredentialRegistry::list() {
  auto rows = store_.scan(kTable, "", std::numeric_limits<std::size_t>::max());
  if (!rows) {
    return tl::unexpected(rows.error());
  }
  std::vector<AccessKey> out;
  for (const auto& [id, value] : *rows) {
    auto r = parse_record(value);
    if (!r) {
      return tl::unexpected(r.error());
    }
    r->key.principal = role_principal(account_, r->key.role);
    out.push_back(std::move(r->key));
  }
  return out;
}

core::Result<AccessKey> CredentialRegistry::revoke(std::string_view id) {
  auto v = store_.get(kTable, id);
  if (!v) {
    if (v.error().code == ErrorCode::kNotFound) {
      return make_error(ErrorCode::kNotFound, "no access key '" + std::string(id) + "'");
    }
    return tl::unexpected(v.error());
  }
  auto r = parse_record(*v);
  if (!r) {
    return tl::unexpected(r.error());
  }
  if (!r->key.revoked) {
    r->key.revoked = true;
    r->key.revoked_ms = ms_since_epoch(clock_);
  }
  store::Batch b;
  b.emplace_back(store::Put{std::string(kTable), r->key.id, record_json(*r)});
  b.emplace_back(store::AddCounter{std::string(kVersionCounter), 1});
  if (auto w = store_.write_sync(std::move(b)); !w) {
    return tl::unexpected(w.error());
  }
  r->key.principal = role_principal(account_, r->key.role);
  return r->key;
}

core::Result<std::shared_ptr<const CredentialIndex>> CredentialRegistry::load_index() {
  auto rows = store_.scan(kTable, "", std::numeric_limits<std::size_t>::max());
  if (!rows) {
    return tl::unexpected(rows.error());
  }
  auto index = std::make_shared<CredentialIndex>();
  for (const auto& [id, value] : *rows) {
    auto r = parse_record(value);
    if (!r) {
      return tl::unexpected(r.error());
    }
    if (r->key.revoked) {
      continue;
    }
    r->key.principal = role_principal(account_, r->key.role);
    auto secret = open_sealed(kek_, r->key.id, r->sealed);
    if (!secret) {
      return make_error(ErrorCode::kIo, "access key " + r->key.id + ": " + secret.error().message);
    }
    index->add(Credential{std::move(r->key), std::move(*secret)});
  }
  return std::shared_ptr<const CredentialIndex>(std::move(index));
}

core::Result<std::int64_t> CredentialRegistry::version() { return store_.counter(kVersionCounter); }

}  // namespace gatehouse::auth
