#include "http/socket_read.h"

#include <boost/asio/detail/socket_ops.hpp>
#include <boost/asio/execution/context.hpp>
#include <boost/asio/query.hpp>
#include <boost/version.hpp>
#include <cassert>
#include <utility>

// The reactor interface used below (epoll_reactor::start_op and post_immediate_completion, the
// layout of a socket's implementation, reactor_op's status) is Asio's internals as of Boost 1.81
// (Debian 12). A newer Boost must be checked against it before this line is changed.
static_assert(BOOST_VERSION == 108100, "SocketRead is written against Boost 1.81's Asio reactor");

namespace gatehouse::http {

namespace net = boost::asio;
namespace detail = boost::asio::detail;

namespace {

// A socket's reactor state lives in basic_socket's protected `impl_`: reached through a pointer
// to member named in a derived class (legal for any basic_socket object).
struct ImplAccess : net::ip::tcp::socket {
  static auto& of(net::ip::tcp::socket& s) {
    return (s.*(&ImplAccess::impl_)).get_implementation();
  }
};

}  // namespace

SocketRead::SocketRead(Callback cb) noexcept
    : reactor_op(boost::system::error_code(), &SocketRead::do_perform, &SocketRead::do_complete),
      cb_(cb) {}

void SocketRead::start(net::ip::tcp::socket& socket, net::mutable_buffer buf, void* owner,
                       std::shared_ptr<void> keep) {
  assert(!pending() && buf.size() > 0);
  auto& impl = ImplAccess::of(socket);
  if (reactor_ == nullptr) {  // use_service takes the service registry's lock: once per op
    reactor_ = &net::use_service<detail::reactor>(
        net::query(socket.get_executor(), net::execution::context));
  }
  assert(reactor_ == &net::use_service<detail::reactor>(
                         net::query(socket.get_executor(), net::execution::context)));
  auto& reactor = *reactor_;
  owner_ = owner;
  keep_ = std::move(keep);
  fd_ = impl.socket_;
  buf_ = buf;
  ec_ = boost::system::error_code();
  bytes_transferred_ = 0;
  if ((impl.state_ & detail::socket_ops::non_blocking) != 0 ||
      detail::socket_ops::set_internal_non_blocking(impl.socket_, impl.state_, true, ec_)) {
    reactor.start_op(detail::reactor::read_op, impl.socket_, impl.reactor_data_, this,
                     /*is_continuation=*/false, /*allow_speculative=*/true);
  } else {
    reactor.post_immediate_completion(this, false);
  }
}

detail::reactor_op::status SocketRead::do_perform(reactor_op* base) {
  auto* o = static_cast<SocketRead*>(base);
  if (!detail::socket_ops::non_blocking_recv1(o->fd_, o->buf_.data(), o->buf_.size(), 0,
                                              /*is_stream=*/true, o->ec_, o->bytes_transferred_)) {
    return not_done;  // EAGAIN: wait for the next edge
  }
  // A short read (end of stream and errors read 0 bytes) left nothing in the kernel.
  return o->bytes_transferred_ < o->buf_.size() ? done_and_exhausted : done;
}

void SocketRead::do_complete(void* owner, detail::scheduler_operation* base,
                             const boost::system::error_code& /*ec*/, std::size_t /*n*/) {
  auto* o = static_cast<SocketRead*>(base);
  // Released when this returns: the owner (and `o` with it) may go then, not before. The
  // callback may start the next read on `o`.
  std::shared_ptr<void> keep = std::move(o->keep_);
  if (owner != nullptr) {
    o->cb_(o->owner_, o->ec_, o->bytes_transferred_);
  }
}

}  // namespace gatehouse::http
