// Feeds arbitrary bytes to the request parser the server uses, split at a fuzzer-chosen point
// to exercise incremental parsing, and checks the views it hands out stay inside its buffers.
#include <cstddef>
#include <cstdint>
#include <string>

#include "http/request_parser.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using gatehouse::http::Header;
  using gatehouse::http::kMaxHeaders;
  using gatehouse::http::Request;
  if (size == 0) {
    return 0;
  }
  const std::size_t split = data[0] % (size + 1);
  const std::string input(reinterpret_cast<const char*>(data) + 1, size - 1);
  Request req;
  std::string store;
  std::string body;
  std::array<Header, kMaxHeaders> fields{};
  gatehouse::http::detail::RequestParser parser(req, store, fields, body, 4096, 1 << 16);
  parser.eager(true);
  // Incremental, as a socket delivers bytes: first a prefix, then the whole input from where
  // the parser stopped.
  boost::beast::error_code ec;
  const std::size_t first = std::min(split, input.size());
  std::size_t used = parser.put(boost::asio::buffer(input.data(), first), ec);
  if (!ec || ec == boost::beast::http::error::need_more) {
    ec = {};
    while (!parser.is_done() && used < input.size()) {
      const std::size_t n =
          parser.put(boost::asio::buffer(input.data() + used, input.size() - used), ec);
      used += n;
      if (ec || n == 0) {
        break;
      }
    }
  }
  if (parser.is_header_done()) {
    for (const Header& h : req.headers) {
      // Views point into `store`; touching every byte lets ASan catch a dangling one.
      volatile char sink = 0;
      for (char c : h.name) {
        sink = static_cast<char>(sink ^ c);
      }
      for (char c : h.value) {
        sink = static_cast<char>(sink ^ c);
      }
    }
  }
  return 0;
}
