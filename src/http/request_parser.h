#pragma once
// Private to the http module (and its fuzz target): the request parser. Beast's basic_parser
// does the HTTP/1.1 grammar (request line, fields, Content-Length / chunked framing, limits);
// this class stores what it reports without allocating per request: method, target and fields
// are copied into a per-connection store reserved once to the header limit, so they survive the
// read buffer being reused while the body arrives.

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

 private:
  std::string_view keep(sv s) {
    const std::size_t at = store_.size();
    store_.append(s.data(), s.size());
    return {store_.data() + at, s.size()};
  }

  void on_request_impl(boost::beast::http::verb, sv method, sv target, int version,
                       error_code&) override {
    req_.method = keep(method);
    req_.target = keep(target);
    const auto q = req_.target.find('?');
    if (q == std::string_view::npos) {
      req_.path = req_.target;
    } else {
      req_.path = req_.target.substr(0, q);
      req_.query = req_.target.substr(q + 1);
    }
    req_.version = static_cast<unsigned>(version);
  }

  void on_response_impl(int, sv, int, error_code& ec) override {
    ec = boost::beast::http::error::bad_version;  // never a response here
  }

  void on_field_impl(boost::beast::http::field, sv name, sv value, error_code& ec) override {
    if (count_ == fields_.size()) {
      ec = boost::beast::http::error::header_limit;
      return;
    }
    fields_[count_++] = Header{keep(name), keep(value)};
  }

  void on_header_impl(error_code&) override {
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
};

}  // namespace gatehouse::http::detail
