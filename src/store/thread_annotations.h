#pragma once
// Private to the store module: clang thread-safety annotations and a mutex that carries them.
// libstdc++'s std::mutex is not annotated as a capability, so GUARDED_BY(std::mutex) cannot be
// checked by clang's -Wthread-safety; this thin wrapper can. Under g++ the macros expand to
// nothing. TODO(store): move to core once a second module needs it.

#include <mutex>

#if defined(__clang__)
#define GH_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define GH_THREAD_ANNOTATION(x)
#endif

#define GH_CAPABILITY(x) GH_THREAD_ANNOTATION(capability(x))
#define GH_SCOPED_CAPABILITY GH_THREAD_ANNOTATION(scoped_lockable)
#define GH_GUARDED_BY(x) GH_THREAD_ANNOTATION(guarded_by(x))
#define GH_ACQUIRE(...) GH_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define GH_RELEASE(...) GH_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define GH_EXCLUDES(...) GH_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define GH_REQUIRES(...) GH_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define GH_NO_THREAD_SAFETY_ANALYSIS GH_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace gatehouse::store::detail {

// std::mutex with capability annotations. Not recursive.
class GH_CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void lock() GH_ACQUIRE() { mu_.lock(); }
  void unlock() GH_RELEASE() { mu_.unlock(); }

 private:
  std::mutex mu_;
};

// Holds a Mutex for its scope. Also BasicLockable, so std::condition_variable_any can release
// and retake it around a wait; the analysis treats the lock as held throughout, which is what the
// code after the wait relies on.
class GH_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) GH_ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ~MutexLock() GH_RELEASE() { mu_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  // For std::condition_variable_any only.
  void lock() GH_NO_THREAD_SAFETY_ANALYSIS { mu_.lock(); }
  void unlock() GH_NO_THREAD_SAFETY_ANALYSIS { mu_.unlock(); }

 private:
  Mutex& mu_;
};

}  // namespace gatehouse::store::detail
