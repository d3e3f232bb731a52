#include "auth/sigv4_util.h"

#include <array>

namespace gatehouse::auth::sigv4_util {

namespace {

constexpr std::array<std::uint32_t, 256> make_table(std::uint32_t poly) {
  std::array<std::uint32_t, 256> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) {
      c = (c & 1U) != 0 ? poly ^ (c >> 1) : c >> 1;
    }
    t[i] = c;
  }
  return t;
}

constexpr auto kCrc32 = make_table(0xEDB88320U);
constexpr auto kCrc32c = make_table(0x82F63B78U);

std::uint32_t run(const std::array<std::uint32_t, 256>& t, std::uint32_t crc,
                  std::string_view data) noexcept {
  crc = ~crc;
  for (char ch : data) {
    crc = t[(crc ^ static_cast<unsigned char>(ch)) & 0xffU] ^ (crc >> 8);
  }
  return ~crc;
}

}  // namespace

std::string base64(std::span<const unsigned char> b) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((b.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= b.size(); i += 3) {
    const std::uint32_t v = (std::uint32_t{b[i]} << 16) | (std::uint32_t{b[i + 1]} << 8) | b[i + 2];
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(kAlphabet[(v >> 6) & 63]);
    out.push_back(kAlphabet[v & 63]);
  }
  if (i < b.size()) {
    std::uint32_t v = std::uint32_t{b[i]} << 16;
    if (i + 1 < b.size()) {
      v |= std::uint32_t{b[i + 1]} << 8;
    }
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(i + 1 < b.size() ? kAlphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::uint32_t crc32(std::uint32_t crc, std::string_view data) noexcept {
  return run(kCrc32, crc, data);
}

std::uint32_t crc32c(std::uint32_t crc, std::string_view data) noexcept {
  return run(kCrc32c, crc, data);
}

}  // namespace gatehouse::auth::sigv4_util
