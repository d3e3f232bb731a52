// SocketRead on a connected loopback pair driven by a one-thread io_context: data is never left
// unread whatever the order of arrivals, reads and epoll polls; closing, end of stream and an
// io_context destroyed with a read pending behave as async_read_some does. (That a read after a
// short one skips the recvfrom that would fail with EAGAIN is a syscall count: bench/limits.sh
// and docs/benchmarks.md measure it.)

#include "http/socket_read.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <string>

namespace gatehouse::http {
namespace {

namespace net = boost::asio;
using tcp = net::ip::tcp;

// What the callbacks saw, kept outside the reader (which a test may let go).
struct Log {
  int calls = 0;
  boost::system::error_code ec;
};

struct Reader {
  explicit Reader(net::io_context& ioc) : socket(ioc) {}
  static void done(void* self, const boost::system::error_code& ec, std::size_t n) {
    auto* r = static_cast<Reader*>(self);
    r->calls++;
    r->ec = ec;
    r->got.append(r->buf, n);
    if (r->log != nullptr) {
      r->log->calls++;
      r->log->ec = ec;
    }
  }
  void start(std::shared_ptr<void> keep, std::size_t size = sizeof buf) {
    op.start(socket, net::buffer(buf, size), this, std::move(keep));
  }
  tcp::socket socket;
  SocketRead op{&Reader::done};
  char buf[64];
  std::string got;
  boost::system::error_code ec;
  int calls = 0;
  Log* log = nullptr;
};

class SocketReadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    reader_ = std::make_shared<Reader>(ioc_);
    tcp::acceptor acc(ioc_, tcp::endpoint(net::ip::address_v4::loopback(), 0));
    peer_.emplace(ioc_);
    peer_->connect(acc.local_endpoint());
    acc.accept(reader_->socket);
  }
  void send(const std::string& s) { net::write(*peer_, net::buffer(s)); }
  // Runs handlers and epoll polls until nothing is ready (bounded).
  void settle() {
    ioc_.restart();
    ioc_.run_for(std::chrono::milliseconds(50));
  }

  net::io_context ioc_{1};
  std::shared_ptr<Reader> reader_;
  std::optional<tcp::socket> peer_;
};

TEST_F(SocketReadTest, ReadsWhatArrivesAfterTheReadStarted) {
  reader_->start(reader_);
  EXPECT_TRUE(reader_->op.pending());
  settle();
  EXPECT_EQ(reader_->calls, 0);
  send("hello");
  settle();
  EXPECT_EQ(reader_->calls, 1);
  EXPECT_EQ(reader_->got, "hello");
  EXPECT_FALSE(reader_->ec);
  EXPECT_FALSE(reader_->op.pending());
}

// The case the exhausted flag must not break: after a short read, data arrives and epoll reports
// it while no read is waiting; a read started afterwards must still find it.
TEST_F(SocketReadTest, DataReportedBeforeTheNextReadStartsIsStillRead) {
  send("one");
  reader_->start(reader_);
  settle();
  ASSERT_EQ(reader_->got, "one");  // a short read: the socket is marked exhausted
  send("two");
  settle();  // epoll reports "two" with no read waiting
  reader_->start(reader_);
  settle();
  EXPECT_EQ(reader_->calls, 2);
  EXPECT_EQ(reader_->got, "onetwo");
}

TEST_F(SocketReadTest, DataThatArrivedWithoutAPollInBetweenIsRead) {
  send("one");
  reader_->start(reader_);
  settle();
  send("two");  // not yet seen by epoll
  reader_->start(reader_);
  settle();
  EXPECT_EQ(reader_->got, "onetwo");
}

TEST_F(SocketReadTest, AFullReadTriesAgainAtOnceAndManyRoundsLoseNothing) {
  std::string all;
  std::string sent;
  for (int round = 0; round < 200; ++round) {
    // Sizes around the buffer's (64): full reads, short reads and several reads per send.
    const std::string chunk(static_cast<std::size_t>(1 + (round * 37) % 150),
                            char('a' + round % 26));
    sent += chunk;
    send(chunk);
    if (round % 3 == 0) {
      settle();  // sometimes epoll sees the data before any read is waiting
    }
    while (reader_->got.size() < sent.size()) {
      const int before = reader_->calls;
      reader_->start(reader_);
      settle();
      ASSERT_EQ(reader_->calls, before + 1) << "round " << round << ": a read never completed";
    }
  }
  EXPECT_EQ(reader_->got, sent);
}

TEST_F(SocketReadTest, CloseCompletesThePendingReadWithAborted) {
  Log log;
  reader_->log = &log;
  std::weak_ptr<Reader> weak = reader_;
  Reader* r = reader_.get();
  r->start(std::move(reader_));  // only the pending read holds it now
  settle();
  ASSERT_FALSE(weak.expired());
  EXPECT_EQ(log.calls, 0);
  boost::system::error_code ignored;
  r->socket.close(ignored);
  settle();
  EXPECT_EQ(log.calls, 1);
  EXPECT_EQ(log.ec, net::error::operation_aborted);
  EXPECT_TRUE(weak.expired()) << "the read let its owner go once its callback returned";
}

TEST_F(SocketReadTest, AReadOnAClosedSocketFailsAsynchronously) {
  boost::system::error_code ignored;
  reader_->socket.close(ignored);
  reader_->start(reader_);
  EXPECT_EQ(reader_->calls, 0) << "never completes inside start()";
  settle();
  EXPECT_EQ(reader_->calls, 1);
  EXPECT_TRUE(reader_->ec);
  EXPECT_FALSE(reader_->op.pending());
}

TEST_F(SocketReadTest, EndOfStreamIsReported) {
  peer_->shutdown(tcp::socket::shutdown_send);
  reader_->start(reader_);
  settle();
  EXPECT_EQ(reader_->calls, 1);
  EXPECT_EQ(reader_->ec, net::error::eof);
  EXPECT_EQ(reader_->got, "");
}

TEST(SocketReadShutdown, DestroyingTheContextReleasesTheOwnerUnrun) {
  std::weak_ptr<Reader> weak;
  {
    net::io_context ioc{1};
    auto r = std::make_shared<Reader>(ioc);
    tcp::acceptor acc(ioc, tcp::endpoint(net::ip::address_v4::loopback(), 0));
    tcp::socket peer(ioc);
    peer.connect(acc.local_endpoint());
    acc.accept(r->socket);
    weak = r;
    Reader* raw = r.get();
    raw->start(std::move(r));
    ioc.run_for(std::chrono::milliseconds(20));
    ASSERT_FALSE(weak.expired());
    EXPECT_EQ(raw->calls, 0);
  }
  EXPECT_TRUE(weak.expired());
}

}  // namespace
}  // namespace gatehouse::http
