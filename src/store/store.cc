#include "store/store.h"

#include <future>
#include <utility>

#include "store/sqlite_store.h"

namespace gatehouse::store {

using core::ErrorCode;
using core::make_error;

core::Result<CommitInfo> Store::write_sync(Batch batch) {
  if (detail::on_writer_thread()) {
    return make_error(ErrorCode::kInternal,
                      "store write_sync() called from a write callback: it would wait for itself");
  }
  // shared_ptr: the promise must outlive set_value() on the writer thread, which may still be
  // running when get() returns here.
  auto promise = std::make_shared<std::promise<core::Result<CommitInfo>>>();
  auto future = promise->get_future();
  write(std::move(batch),
        [promise](core::Result<CommitInfo> r) { promise->set_value(std::move(r)); });
  return future.get();
}

core::Result<std::unique_ptr<Store>> open(std::string_view url, const core::Clock& clock,
                                          Options options) {
  constexpr std::string_view kSqlite = "sqlite://";
  if (url.starts_with(kSqlite)) {
    const std::string_view path = url.substr(kSqlite.size());
    if (path.empty()) {
      return make_error(ErrorCode::kInvalidArgument,
                        "store URL sqlite:// needs a path (sqlite://PATH or sqlite://:memory:)");
    }
    auto store = SqliteStore::open(path, clock, options);
    if (!store) {
      return tl::unexpected(std::move(store.error()));
    }
    return std::unique_ptr<Store>(std::move(*store));
  }
  // The URL is not echoed: a postgres:// URL may carry a password.
  if (url.starts_with("postgres://") || url.starts_with("postgresql://")) {
    return make_error(ErrorCode::kNotImplemented,
                      "the PostgreSQL store backend is not implemented yet; use sqlite://PATH");
  }
  return make_error(ErrorCode::kInvalidArgument,
                    "unknown store URL scheme: want sqlite://PATH, sqlite://:memory: or "
                    "postgres://...");
}

}  // namespace gatehouse::store
