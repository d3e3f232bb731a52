#pragma once
// Private to the http module (and its fuzz target): the request parser. Beast's basic_parser
// does the HTTP/1.1 grammar (request line, fields, Content-Length / chunked framing, limits);
// this class stores what it reports without allocating per request: method, target and fields
// are copied into a per-connection store reserved once to the header limit, so they survive the
// read buffer being reused while the body arrives.

#include <strings.h>

#include <array>
#include <boost/beast/http/basic_parser.hpp>
#include <cstdint>
#include <string>

#include "http/http.h"

namespace gatehouse::http::detail {

class RequestParser final : public boost::beast::http::basic_parser<true> {
 public:
  using error_code = boost::beast::error_code;
  using sv = boost::beast::string_view;

  // `store`, `fields` and `body` belong to the connection and are reused across requests.
  RequestParser(Request& req, std::string& store, std::array<Header, kMaxHeaders>& fields,
                std::string& body, std::uint32_t max_header_bytes, std::uint64_t max_body_bytes)
      : req_(req), store_(store), fields_(fields), body_(body) {
    header_limit(max_header_bytes);
    body_limit(max_body_bytes);
    store_.clear();
    body_.clear();
    // Everything stored is a subset of the header bytes, so this never reallocates and the views
    // handed out stay valid for the request.
    if (store_.capacity() < max_header_bytes) {
      store_.reserve(max_header_bytes);
    }
    req_ = Request{};
  }

  std::size_t field_count() const noexcept { return count_; }
  // Set with an error from put(): the request used a transfer coding other than chunked
  // (answer 501 rather than 400).
  bool unsupported_coding() const noexcept { return unsupported_coding_; }

 private:
  std::string_view keep(sv s) {
    const std::size_t at = store_.size();
    store_.append(s.data(), s.size());
    return {store_.data() + at, s.size()};
  }

  void on_request_impl(boost::beast::http::verb, sv method, sv target, int version,
                       error_code& ec) override {
    req_.method = keep(method);
    req_.target = keep(target);
    // A fragment is never part of a request target (RFC 9112 3.2).
    if (req_.target.find('#') != std::string_view::npos) {
      ec = boost::beast::http::error::bad_target;
      return;
    }
    std::string_view path = req_.target;
    // absolute-form ("http://host/path", RFC 9112 3.2.2): route on the path part.
    if (path.size() > 7 && (path.substr(0, 7) == "http://" || path.substr(0, 8) == "https://")) {
      const auto slash = path.find('/', path.find("//") + 2);
      path = slash == std::string_view::npos ? std::string_view("/") : path.substr(slash);
    } else if (path.empty() || path.front() != '/') {
      ec = boost::beast::http::error::bad_target;  // authority-form and asterisk-form
      return;
    }
    const auto q = path.find('?');
    if (q == std::string_view::npos) {
      req_.path = path;
    } else {
      req_.path = path.substr(0, q);
      req_.query = path.substr(q + 1);
    }
    req_.version = static_cast<unsigned>(version);
  }

  void on_response_impl(int, sv, int, error_code& ec) override {
    ec = boost::beast::http::error::bad_version;  // never a response here
  }

  void on_field_impl(boost::beast::http::field f, sv name, sv value, error_code& ec) override {
    if (count_ == fields_.size()) {
      ec = boost::beast::http::error::header_limit;
      return;
    }
    fields_[count_++] = Header{keep(name), keep(value)};
    if (f == boost::beast::http::field::host) {
      ++hosts_;
    } else if (f == boost::beast::http::field::transfer_encoding) {
      // Anything but exactly "chunked" (possibly spread over several fields) is refused below.
      ++te_fields_;
      te_only_chunked_ = te_only_chunked_ && is_chunked_token(value);
    }
  }

  static bool is_chunked_token(sv v) {
    std::string_view s(v.data(), v.size());
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
      s.remove_prefix(1);
    }
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
      s.remove_suffix(1);
    }
    return s.size() == 7 && ::strncasecmp(s.data(), "chunked", 7) == 0;
  }

  void on_header_impl(error_code& ec) override {
    // HTTP/1.1 needs exactly one Host (RFC 9112 3.2); HTTP/1.0 at most one.
    if (hosts_ > 1 || (hosts_ == 0 && req_.version >= 11)) {
      ec = boost::beast::http::error::bad_field;
      return;
    }
    // Request smuggling defence: the only transfer coding accepted is a single "chunked"; a
    // Transfer-Encoding that does not end in chunked leaves the body length unknowable (400),
    // other codings are not implemented (501). RFC 9112 6.1 and 6.3.
    if (te_fields_ > 0 && (te_fields_ > 1 || !te_only_chunked_)) {
      unsupported_coding_ = chunked();
      ec = boost::beast::http::error::bad_transfer_encoding;
      return;
    }
    req_.headers = std::span<const Header>(fields_.data(), count_);
    req_.keep_alive = keep_alive();
    req_.chunked = chunked();
    if (const auto len = content_length()) {
      req_.content_length = *len;
    }
  }

  void on_body_init_impl(const boost::optional<std::uint64_t>& length, error_code&) override {
    // Reserve what was announced (already checked against body_limit), capped so a lying
    // Content-Length cannot make us allocate before the bytes arrive.
    if (length) {
      body_.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(*length, 1 << 20)));
    }
  }

  std::size_t on_body_impl(sv s, error_code&) override {
    body_.append(s.data(), s.size());
    return s.size();
  }

  void on_chunk_header_impl(std::uint64_t, sv, error_code&) override {}

  std::size_t on_chunk_body_impl(std::uint64_t, sv s, error_code&) override {
    body_.append(s.data(), s.size());
    return s.size();
  }

  void on_finish_impl(error_code&) override { req_.body = body_; }

  Request& req_;
  std::string& store_;
  std::array<Header, kMaxHeaders>& fields_;
  std::string& body_;
  std::size_t count_ = 0;
  int hosts_ = 0;
  int te_fields_ = 0;
  bool te_only_chunked_ = true;
  bool unsupported_coding_ = false;
};

}  // namespace gatehouse::http::detail
