#pragma once
// A reusable read on a TCP socket that tells Asio's reactor when a read drained the socket.
//
// Asio 1.81's reactor performs a read at once ("speculatively") unless the previous read on the
// socket reported it exhausted, and its own receive operation reports that only at end of
// stream. A connection that carries one request per round trip therefore pays one recvfrom that
// fails with EAGAIN per request: the read issued right after a response (or, upstream, right
// after a request) finds nothing yet. SocketRead also reports a short read (fewer bytes than
// asked for, so the kernel's queue was empty just after it) as exhausted: the next read on the
// socket then waits for epoll instead of trying first. Nothing can be left unread: the socket
// is registered edge-triggered, data that arrives after the short read raises a new edge, and
// every edge turns speculation back on (epoll_reactor::descriptor_state::perform_io) before any
// waiting read is performed.
//
// It is built on Asio's reactor internals (detail::reactor_op, epoll_reactor::start_op); the
// static_assert on BOOST_VERSION in socket_read.cc makes a Boost upgrade revisit it.
//
// Include only in files that already include Asio (server.cc, proxy.cc).

#include <boost/asio/buffer.hpp>
#include <boost/asio/detail/reactor.hpp>
#include <boost/asio/detail/reactor_op.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <cstddef>
#include <memory>

namespace gatehouse::http {

class SocketRead final : private boost::asio::detail::reactor_op {
 public:
  using Callback = void (*)(void* owner, const boost::system::error_code& ec, std::size_t n);

  explicit SocketRead(Callback cb) noexcept;
  SocketRead(const SocketRead&) = delete;
  SocketRead& operator=(const SocketRead&) = delete;
  ~SocketRead() = default;

  // Reads at most buf.size() (> 0) bytes from `socket`, a socket of the same io_context for
  // every start (the op keeps that context's reactor); `cb(owner, ec, n)` then runs once on the
  // socket's io_context, never inside start(), as for async_read_some. Closing or cancelling the
  // socket completes it with operation_aborted. `keep` holds the owner, and the SocketRead it
  // owns, alive until the callback has returned (or the io_context destroyed the operation
  // unrun). Not while pending().
  void start(boost::asio::ip::tcp::socket& socket, boost::asio::mutable_buffer buf, void* owner,
             std::shared_ptr<void> keep);

  [[nodiscard]] bool pending() const noexcept { return keep_ != nullptr; }

 private:
  static status do_perform(reactor_op* base);
  static void do_complete(void* owner, boost::asio::detail::scheduler_operation* base,
                          const boost::system::error_code& ec, std::size_t n);

  Callback cb_;
  boost::asio::detail::reactor* reactor_ = nullptr;  // looked up (under a lock) on first start
  void* owner_ = nullptr;
  std::shared_ptr<void> keep_;
  int fd_ = -1;
  boost::asio::mutable_buffer buf_;
};

}  // namespace gatehouse::http
