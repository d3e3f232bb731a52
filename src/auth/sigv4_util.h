#pragma once
// Private to gatehouse::auth: encodings and checksums shared by sigv4.cc and credentials.cc.

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace gatehouse::auth::sigv4_util {

// Standard base64 with padding.
[[nodiscard]] std::string base64(std::span<const unsigned char> bytes);
// CRC-32 (IEEE 802.3, as zlib) and CRC-32C (Castagnoli), continuing from `crc` (0 to start).
[[nodiscard]] std::uint32_t crc32(std::uint32_t crc, std::string_view data) noexcept;
[[nodiscard]] std::uint32_t crc32c(std::uint32_t crc, std::string_view data) noexcept;

}  // namespace gatehouse::auth::sigv4_util
