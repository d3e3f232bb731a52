#include "runtime/sandbox.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <sstream>
#include <utility>

namespace gatehouse::runtime::detail {
namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool write_file(const std::string& path, std::string_view data) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    return false;
  }
  const bool ok = ::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size());
  ::close(fd);
  return ok;
}

std::string errno_text(std::string_view what, int err) {
  return std::string(what) + ": " + std::strerror(err);
}

// Mount points of cgroup filesystems: cgroup2, and v1 hierarchies by controller.
struct Mounts {
  std::string v2;
  std::string v1_memory;
  std::string v1_pids;
};

Mounts cgroup_mounts() {
  Mounts m;
  std::istringstream in(read_file("/proc/self/mounts"));
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string dev, dir, type, opts;
    fields >> dev >> dir >> type >> opts;
    if (type == "cgroup2") {
      m.v2 = dir;
    } else if (type == "cgroup") {
      std::istringstream o(opts);
      for (std::string opt; std::getline(o, opt, ',');) {
        if (opt == "memory") {
          m.v1_memory = dir;
        } else if (opt == "pids") {
          m.v1_pids = dir;
        }
      }
    }
  }
  return m;
}

// Our own cgroup path for a v1 controller ("memory") or v2 (""), from /proc/self/cgroup.
std::string own_cgroup(std::string_view controller) {
  std::istringstream in(read_file("/proc/self/cgroup"));
  for (std::string line; std::getline(in, line);) {
    const auto a = line.find(':');
    const auto b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) {
      continue;
    }
    const std::string_view ctrls = std::string_view(line).substr(a + 1, b - a - 1);
    const std::string path = line.substr(b + 1);
    if (controller.empty()) {
      if (line.compare(0, a, "0") == 0 && ctrls.empty()) {
        return path;
      }
      continue;
    }
    std::istringstream cs{std::string(ctrls)};
    for (std::string c; std::getline(cs, c, ',');) {
      if (c == controller) {
        return path;
      }
    }
  }
  return {};
}

// Creates `<base><own>/gatehouse-<pid>`; "" when it cannot.
std::string make_root(const std::string& mount, const std::string& own) {
  if (mount.empty()) {
    return {};
  }
  std::string dir = mount + (own == "/" ? "" : own) + "/gatehouse-" + std::to_string(::getpid());
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return {};
  }
  return dir;
}

bool bring_up_loopback() {
  const int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) {
    return false;
  }
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, "lo", 3);
  bool ok = false;
  if (::ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP | IFF_RUNNING);
    ok = ::ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
  }
  ::close(s);
  return ok;
}

// Writes `value` in decimal into `out` (async-signal-safe); returns the end.
char* put_decimal(char* out, unsigned value) {
  char digits[16];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + value % 10);
    value /= 10;
  } while (value != 0);
  while (n > 0) {
    *out++ = digits[--n];
  }
  *out = '\0';
  return out;
}

bool send_fd(int sock, int fd) {
  char byte = 'L';
  iovec iov{&byte, 1};
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof(ctrl);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
  return ::sendmsg(sock, &msg, MSG_NOSIGNAL) == 1;
}

int recv_fd(int sock) {
  char byte = 0;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof(ctrl);
  ssize_t n = 0;
  do {
    n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n != 1) {
    return -1;
  }
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      int fd = -1;
      std::memcpy(&fd, CMSG_DATA(c), sizeof(int));
      return fd;
    }
  }
  return -1;
}

std::string find_program(const std::string& name) {
  if (name.find('/') != std::string::npos) {
    return ::access(name.c_str(), X_OK) == 0 ? name : std::string();
  }
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return {};
}

void close_fd(int& fd) {
  if (fd >= 0) {
    ::close(fd);
    fd = -1;
  }
}

std::vector<pid_t> cgroup_pids(const std::string& dir) {
  std::vector<pid_t> out;
  std::istringstream in(read_file(dir + "/cgroup.procs"));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) {
      out.push_back(static_cast<pid_t>(std::stol(line)));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Child side, between clone and exec: only async-signal-safe calls from here on (the gateway
// is multithreaded; another thread may hold malloc's lock at the moment of the clone).

// A fork without glibc's fork(): the namespace flags need clone, and glibc's atfork handlers
// must not run in a child of a multithreaded process. With a null stack the child continues
// on a copy of ours, as with fork. (clone's argument order is that of x86_64 and aarch64.)
pid_t clone_process(unsigned long flags) {
  return static_cast<pid_t>(::syscall(SYS_clone, flags | SIGCHLD, nullptr, nullptr, nullptr, 0));
}

// The first process the namespace's init forks is pid 2 in it: init waits for that one.
constexpr pid_t kFunctionPid = 2;
constexpr const char* kInitName = "gatehouse-init";
constexpr int kInitStatusFd = 3;  // the exec'd init writes the function's wait status here

// Where a child's setup failed, reported to the parent with errno over the error pipe.
enum class Step : int {
  kSetpgid,
  kLoopback,
  kHostname,
  kMountPrivate,
  kReadOnly,
  kTmp,
  kShm,
  kProc,
  kForkFunction,
  kCgroup,
  kApiSocket,
  kRlimit,
  kSetgroups,
  kSetgid,
  kSetuid,
  kPrctl,
  kChdir,
  kDup2,
  kSeccomp,
  kExecve,
};
constexpr std::string_view kStepNames[] = {
    "setpgid",
    "bringing up the loopback interface",
    "sethostname",
    "making the mounts private (mount namespace)",
    "making the filesystem read-only",
    "mounting the private /tmp (tmpfs)",
    "mounting the private /dev/shm (tmpfs)",
    "mounting /proc for the pid namespace",
    "forking the function inside its pid namespace",
    "join cgroup",
    "runtime API socket",
    "setrlimit",
    "setgroups",
    "setgid",
    "setuid",
    "prctl",
    "chdir",
    "dup2",
    "installing the seccomp filter",
    "execve",
};
static_assert(std::size(kStepNames) == static_cast<std::size_t>(Step::kExecve) + 1);

struct KeptPath {
  const char* path = nullptr;
  bool dir = false;
  const char* const* parents = nullptr;  // "/tmp/a", "/tmp/a/b", ... (not the path itself)
  std::size_t parent_count = 0;
};

// Everything the child needs, prepared before the clone: the child only makes syscalls.
struct ChildPlan {
  const char* program = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  char* api_env_port = nullptr;        // runtime_api: where the port digits go in envp
  const char* working_dir = nullptr;   // nullptr: inherit
  const char* function_dir = nullptr;  // remounted read-only when there is no mount_setattr
  const char* hostname = nullptr;      // nullptr: no UTS namespace
  const char* tmp_options = nullptr;   // tmpfs options of /tmp and /dev/shm
  // What the function needs from the host's /tmp (its directory, or its program when that lies
  // directly in /tmp), bound back read-only into its private /tmp at the same path, and the
  // directories to create above each there first.
  const KeptPath* kept = nullptr;
  std::size_t kept_count = 0;
  const int* procs_fds = nullptr;  // cgroup.procs of its cgroups, opened for writing
  std::size_t procs_count = 0;
  const SeccompProgram* seccomp = nullptr;  // nullptr: none
  int err_fd = -1;
  int api_sock = -1;  // runtime_api: socket to hand the listener over
  int stdin_fd = -1;  // pipe read end or /dev/null
  int stdout_fd = -1;
  int stderr_fd = -1;
  int status_fd = -1;   // pid namespace: the write end init reports to
  int gateway_fd = -1;  // pidfd of the gateway: readable once it has exited
  int self_exe = -1;    // our binary (O_PATH), exec'd as init; -1: init stays this copy
  bool pidns = false;
  bool mountns = false;
  bool netns = false;
  bool loopback_up = false;
  bool readonly_recursive = false;
  bool have_cgroups = false;
  bool drop_privileges = false;
  std::uint64_t memory_bytes = 0;
  std::uint32_t max_pids = 0;
  uid_t uid = 65534;
  gid_t gid = 65534;
};

[[noreturn]] void child_fail(int err_fd, Step step) {
  const int err = errno;
  std::array<int, 2> msg{static_cast<int>(step), err};
  (void)!::write(err_fd, msg.data(), sizeof(msg));
  ::_exit(127);
}

bool gateway_alive(int pidfd) {
  pollfd p{pidfd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 0;
}

// Remounts the mount at `path` read-only, keeping its other per-mount flags (a bind remount
// clears the flags it is not given). statfs reports them in f_flags as ST_* values.
bool remount_readonly(const char* path) {
  struct statfs st {};
  if (::statfs(path, &st) != 0) {
    return false;
  }
  constexpr std::pair<unsigned long, unsigned long> kKeep[] = {
      {ST_NOSUID, MS_NOSUID},   {ST_NODEV, MS_NODEV},           {ST_NOEXEC, MS_NOEXEC},
      {ST_NOATIME, MS_NOATIME}, {ST_NODIRATIME, MS_NODIRATIME}, {ST_RELATIME, MS_RELATIME}};
  unsigned long flags = MS_REMOUNT | MS_BIND | MS_RDONLY;
  for (const auto& [st_flag, ms_flag] : kKeep) {
    if ((static_cast<unsigned long>(st.f_flags) & st_flag) != 0) {
      flags |= ms_flag;
    }
  }
  return ::mount(nullptr, path, nullptr, flags, nullptr) == 0;
}

// The function's view of the filesystem, in its own mount namespace: nothing propagates back to
// the host, every mount is read-only, /tmp and /dev/shm are its own size-capped tmpfs, and /proc
// (with a pid namespace) shows only its own processes.
void setup_mounts(const ChildPlan& c) {
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    child_fail(c.err_fd, Step::kMountPrivate);
  }
  if (c.readonly_recursive) {
    mount_attr attr{};
    attr.attr_set = MOUNT_ATTR_RDONLY;
    if (::syscall(SYS_mount_setattr, AT_FDCWD, "/", AT_RECURSIVE, &attr, sizeof(attr)) != 0) {
      child_fail(c.err_fd, Step::kReadOnly);
    }
  } else {
    // Without mount_setattr (Linux < 5.12): the root mount, and the function's directory bound
    // onto itself so that it is read-only whichever mount it lives on.
    if (!remount_readonly("/") ||
        ::mount(c.function_dir, c.function_dir, nullptr, MS_BIND | MS_REC, nullptr) != 0 ||
        !remount_readonly(c.function_dir)) {
      child_fail(c.err_fd, Step::kReadOnly);
    }
  }
  // Held open across the tmpfs mount that hides them (at most two: see KeptPath).
  int kept_fds[2] = {-1, -1};
  for (std::size_t i = 0; i < c.kept_count && i < 2; ++i) {
    kept_fds[i] = ::open(c.kept[i].path, O_PATH | O_CLOEXEC);
    if (kept_fds[i] < 0) {
      child_fail(c.err_fd, Step::kTmp);
    }
  }
  if (::mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, c.tmp_options) != 0) {
    child_fail(c.err_fd, Step::kTmp);
  }
  for (std::size_t i = 0; i < c.kept_count && i < 2; ++i) {
    const KeptPath& k = c.kept[i];
    for (std::size_t j = 0; j < k.parent_count; ++j) {
      if (::mkdir(k.parents[j], 0755) != 0 && errno != EEXIST) {
        child_fail(c.err_fd, Step::kTmp);
      }
    }
    if (k.dir) {
      if (::mkdir(k.path, 0755) != 0 && errno != EEXIST) {
        child_fail(c.err_fd, Step::kTmp);
      }
    } else {
      const int fd = ::open(k.path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      if (fd < 0) {
        child_fail(c.err_fd, Step::kTmp);
      }
      ::close(fd);
    }
    // The host's /proc is still the one mounted here, and shows us under our host pid.
    char source[32] = "/proc/self/fd/";
    put_decimal(source + std::strlen(source), static_cast<unsigned>(kept_fds[i]));
    if (::mount(source, k.path, nullptr, MS_BIND | MS_REC, nullptr) != 0 ||
        !remount_readonly(k.path)) {
      child_fail(c.err_fd, Step::kTmp);
    }
    ::close(kept_fds[i]);
  }
  if (::access("/dev/shm", F_OK) == 0 &&
      ::mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, c.tmp_options) != 0) {
    child_fail(c.err_fd, Step::kShm);
  }
  if (c.pidns && ::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
                         nullptr) != 0) {
    child_fail(c.err_fd, Step::kProc);
  }
}

// The pid namespace's init: reaps whatever is orphaned into it and, when the function (its
// first child) exits, reports the function's wait status and exits, which kills the rest of
// the namespace. Signals from inside the namespace cannot reach it (it has no handlers).
[[noreturn]] void init_loop(int status_fd) {
  ::prctl(PR_SET_NAME, kInitName, 0, 0, 0);
  for (;;) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, 0);
    if (pid == kFunctionPid) {
      (void)!::write(status_fd, &status, sizeof(status));
      ::_exit(0);
    }
    if (pid < 0 && errno != EINTR) {
      ::_exit(0);
    }
  }
}

// The gatehouse binary started as a pid namespace's init: become init before main() and the
// other static constructors run. Only pid 1 named gatehouse-init, so running the binary under
// that name elsewhere changes nothing.
__attribute__((constructor(101))) void gatehouse_init_entry(int argc, char** argv, char**) {
  if (argc == 1 && argv != nullptr && argv[0] != nullptr && std::strcmp(argv[0], kInitName) == 0 &&
      ::getpid() == 1) {
    init_loop(kInitStatusFd);
  }
}

// Turns this process (pid 1, after forking the function) into init. It re-execs our own binary
// rather than staying a copy of the gateway: a copy would keep every page of the gateway that
// the gateway writes afterwards (copy-on-write) and hold its descriptors (client connections).
[[noreturn]] void become_init(const ChildPlan& c) {
  const int status = ::fcntl(c.status_fd, F_DUPFD, kInitStatusFd + 2);
  const int exe = c.self_exe >= 0 ? ::fcntl(c.self_exe, F_DUPFD_CLOEXEC, kInitStatusFd + 2) : -1;
  if (status < 0 || ::dup2(status, kInitStatusFd) < 0) {
    ::_exit(127);  // the namespace dies with us, and the function with it
  }
  int exe_fd = -1;
  if (exe >= 0) {
    exe_fd = ::dup3(exe, kInitStatusFd + 1, O_CLOEXEC);
  }
  // Everything else goes now, the error pipe too: the gateway waits only for the function's
  // exec, not for ours.
  ::syscall(SYS_close_range, static_cast<unsigned>(kInitStatusFd + 2), ~0U, 0U);
  for (int fd = 0; fd < kInitStatusFd; ++fd) {
    ::close(fd);
  }
  if (exe_fd >= 0) {
    char name[] = "gatehouse-init";
    char* argv[] = {name, nullptr};
    char* envp[] = {nullptr};
    ::syscall(SYS_execveat, exe_fd, "", argv, envp, AT_EMPTY_PATH);
    ::close(exe_fd);  // could not exec: be init as this copy
  }
  init_loop(kInitStatusFd);
}

// The function's own process: cgroups, runtime API listener, limits, identity, seccomp, exec.
[[noreturn]] void exec_function(const ChildPlan& c) {
  const int efd = c.err_fd;
  for (std::size_t i = 0; i < c.procs_count; ++i) {
    if (::write(c.procs_fds[i], "0", 1) != 1) {
      child_fail(efd, Step::kCgroup);
    }
  }
  if (c.api_sock >= 0) {
    const int l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    if (l < 0 || ::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
        ::listen(l, 16) != 0 || ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len) != 0 ||
        !send_fd(c.api_sock, l)) {
      child_fail(efd, Step::kApiSocket);
    }
    put_decimal(c.api_env_port, ntohs(a.sin_port));
    ::close(l);
  }
  const rlimit core_limit{0, 0};
  const rlimit nofile{1024, 1024};
  if (::setrlimit(RLIMIT_CORE, &core_limit) != 0 || ::setrlimit(RLIMIT_NOFILE, &nofile) != 0) {
    child_fail(efd, Step::kRlimit);
  }
  if (!c.have_cgroups) {
    if (c.memory_bytes > 0) {
      const rlimit data{c.memory_bytes, c.memory_bytes};
      if (::setrlimit(RLIMIT_DATA, &data) != 0) {
        child_fail(efd, Step::kRlimit);
      }
    }
    if (c.max_pids > 0 && c.drop_privileges) {
      const rlimit nproc{c.max_pids, c.max_pids};
      if (::setrlimit(RLIMIT_NPROC, &nproc) != 0) {
        child_fail(efd, Step::kRlimit);
      }
    }
  }
  if (c.drop_privileges) {
    if (::setgroups(0, nullptr) != 0) {
      child_fail(efd, Step::kSetgroups);
    }
    if (::setgid(c.gid) != 0) {
      child_fail(efd, Step::kSetgid);
    }
    if (::setuid(c.uid) != 0) {
      child_fail(efd, Step::kSetuid);
    }
  }
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
      ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) {
    child_fail(efd, Step::kPrctl);
  }
  if (!gateway_alive(c.gateway_fd)) {
    ::_exit(127);  // the gateway died before PDEATHSIG was armed
  }
  if (c.working_dir != nullptr && ::chdir(c.working_dir) != 0) {
    child_fail(efd, Step::kChdir);
  }
  if (::dup2(c.stdin_fd, 0) < 0 || ::dup2(c.stdout_fd, 1) < 0 || ::dup2(c.stderr_fd, 2) < 0) {
    child_fail(efd, Step::kDup2);
  }
  // Last before exec: the filter would refuse nothing above, but nothing above needs to be
  // filtered either.
  if (c.seccomp != nullptr) {
    if (const int err = install_seccomp(*c.seccomp); err != 0) {
      errno = err;
      child_fail(efd, Step::kSeccomp);
    }
  }
  // Nothing of the gateway's may leak into the function: Asio opens sockets (client
  // connections among them) without O_CLOEXEC, so every descriptor above stderr is marked
  // close-on-exec here (marked, not closed: the error pipe must survive a failing execve).
  if (::syscall(SYS_close_range, 3U, ~0U, static_cast<unsigned>(CLOSE_RANGE_CLOEXEC)) != 0) {
    child_fail(efd, Step::kDup2);
  }
  ::execve(c.program, c.argv, c.envp);
  child_fail(efd, Step::kExecve);
}

// The first process in the new namespaces: namespace-wide setup, then the function (directly,
// or as the first child of this process when it is a pid namespace's init).
[[noreturn]] void sandbox_child(const ChildPlan& c) {
  // Default signal dispositions and an empty mask: the gateway blocks some for its threads.
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  for (int sig : {SIGPIPE, SIGHUP, SIGTERM, SIGINT, SIGCHLD}) {
    ::signal(sig, SIG_DFL);
  }
  if (::setpgid(0, 0) != 0) {
    child_fail(c.err_fd, Step::kSetpgid);
  }
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) {
    child_fail(c.err_fd, Step::kPrctl);
  }
  if (!gateway_alive(c.gateway_fd)) {
    ::_exit(127);  // the gateway died before PDEATHSIG was armed
  }
  if (c.netns && c.loopback_up && !bring_up_loopback()) {
    child_fail(c.err_fd, Step::kLoopback);
  }
  if (c.hostname != nullptr && ::sethostname(c.hostname, std::strlen(c.hostname)) != 0) {
    child_fail(c.err_fd, Step::kHostname);
  }
  if (c.mountns) {
    setup_mounts(c);
  }
  if (!c.pidns) {
    exec_function(c);
  }
  // Closed (on exec) by the function: init's own exec waits for it, so that the two execs do
  // not compete for the CPU while the function starts.
  int started[2];
  if (::pipe2(started, O_CLOEXEC) != 0) {
    child_fail(c.err_fd, Step::kForkFunction);
  }
  const pid_t pid = clone_process(0);
  if (pid < 0) {
    child_fail(c.err_fd, Step::kForkFunction);
  }
  if (pid == 0) {
    ::close(started[0]);
    exec_function(c);
  }
  if (pid != kFunctionPid) {
    errno = ESRCH;
    child_fail(c.err_fd, Step::kForkFunction);  // init would wait for the wrong process
  }
  ::close(started[1]);
  char byte = 0;
  while (::read(started[0], &byte, 1) < 0 && errno == EINTR) {
  }
  ::close(started[0]);
  become_init(c);
}

// ---------------------------------------------------------------------------------------------
// Probing the host, in short-lived children.

enum ProbeBit : unsigned {
  kProbeMounts = 1U << 0,    // private mounts and a tmpfs
  kProbeReadOnly = 1U << 1,  // mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)
  kProbeProc = 1U << 2,      // a fresh /proc in the new pid namespace
  kProbeHostname = 1U << 3,
  kProbeSeccomp = 1U << 4,  // the filter installs and refuses unshare
};

// Clones a child with `flags` that tries each layer and reports which worked; -1 when the
// clone itself is refused.
int probe_in_child(unsigned long flags, const SeccompProgram& seccomp) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) {
    return -1;
  }
  const pid_t pid = clone_process(flags);
  if (pid == 0) {
    unsigned bits = 0;
    if ((flags & CLONE_NEWNS) != 0 &&
        ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0) {
      if (::mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m") == 0) {
        bits |= kProbeMounts;
      }
      mount_attr attr{};
      attr.attr_set = MOUNT_ATTR_RDONLY;
      if (::syscall(SYS_mount_setattr, AT_FDCWD, "/", AT_RECURSIVE, &attr, sizeof(attr)) == 0) {
        bits |= kProbeReadOnly;
      }
      if ((flags & CLONE_NEWPID) != 0 &&
          ::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, nullptr) ==
              0) {
        bits |= kProbeProc;
      }
    }
    if ((flags & CLONE_NEWUTS) != 0 && ::sethostname("probe", 5) == 0) {
      bits |= kProbeHostname;
    }
    if (!seccomp.insns.empty() && ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
        install_seccomp(seccomp) == 0 && ::unshare(CLONE_NEWUTS) != 0 && errno == EPERM) {
      bits |= kProbeSeccomp;
    }
    (void)!::write(p[1], &bits, sizeof(bits));
    ::_exit(0);
  }
  ::close(p[1]);
  int result = -1;
  if (pid > 0) {
    unsigned bits = 0;
    if (::read(p[0], &bits, sizeof(bits)) == static_cast<ssize_t>(sizeof(bits))) {
      result = static_cast<int>(bits);
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
  ::close(p[0]);
  return result;
}

bool clone_works(unsigned long flag) {
  const pid_t pid = clone_process(flag);
  if (pid == 0) {
    ::_exit(0);
  }
  if (pid < 0) {
    return false;
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

}  // namespace

HostCapabilities detect_host() {
  HostCapabilities h;
  h.root = ::geteuid() == 0;
  std::vector<std::string> missing;
  const Mounts m = cgroup_mounts();
  // v2 first: a unified hierarchy with memory and pids delegated to us.
  if (!m.v2.empty()) {
    const std::string own = own_cgroup("");
    const std::string base = m.v2 + (own == "/" ? "" : own);
    const std::string ctrls = read_file(base + "/cgroup.controllers");
    if (ctrls.find("memory") != std::string::npos && ctrls.find("pids") != std::string::npos) {
      const std::string root = make_root(m.v2, own);
      // Children of our root need the controllers enabled in its subtree_control.
      if (!root.empty() && write_file(root + "/cgroup.subtree_control", "+memory +pids")) {
        h.cgroups = HostCapabilities::Cgroups::kV2;
        h.memory_root = h.pids_root = root;
      } else if (!root.empty()) {
        ::rmdir(root.c_str());
      }
    }
  }
  if (h.cgroups == HostCapabilities::Cgroups::kNone && !m.v1_memory.empty() && !m.v1_pids.empty()) {
    const std::string mem = make_root(m.v1_memory, own_cgroup("memory"));
    const std::string pids = make_root(m.v1_pids, own_cgroup("pids"));
    if (!mem.empty() && !pids.empty()) {
      h.cgroups = HostCapabilities::Cgroups::kV1;
      h.memory_root = mem;
      h.pids_root = pids;
    } else {
      if (!mem.empty()) {
        ::rmdir(mem.c_str());
      }
      if (!pids.empty()) {
        ::rmdir(pids.c_str());
      }
    }
  }
  if (h.cgroups == HostCapabilities::Cgroups::kNone) {
    missing.emplace_back(
        "cgroups (no writable cgroup: v2 with memory+pids delegated, or v1 memory and pids "
        "hierarchies; memory is limited by RLIMIT_DATA only, OOM kills are not detected, and "
        "processes by RLIMIT_NPROC, which counts every process of the uid" +
        std::string(h.root ? ", so functions must run as runtime.run_as_uid)" : ")"));
  }

  // Seccomp first: the probe below checks that the filter installs and refuses.
  std::string seccomp_error = "the filter does not install";
  for (auto mode :
       {config::NetworkMode::kNone, config::NetworkMode::kLoopback, config::NetworkMode::kHost}) {
    auto f = build_seccomp(mode);
    if (!f) {
      seccomp_error = f.error().message;
      h.seccomp = {};
      break;
    }
    h.seccomp[static_cast<std::size_t>(mode)] = std::move(*f);
  }
  static_assert(static_cast<std::size_t>(config::NetworkMode::kHost) == 2);
  const SeccompProgram& probe_filter = h.seccomp[2];
  constexpr unsigned long kAll =
      CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET;
  unsigned long flags = kAll;
  int bits = probe_in_child(flags, probe_filter);
  if (bits < 0) {
    // Some namespace is refused: find out which, and probe with the others.
    flags = 0;
    for (unsigned long f : {CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWIPC, CLONE_NEWUTS, CLONE_NEWNET}) {
      if (clone_works(f)) {
        flags |= f;
      }
    }
    bits = probe_in_child(flags, probe_filter);
  }
  if (bits < 0) {
    bits = 0;
    flags = 0;
  }
  const auto has = [&](unsigned bit) { return (static_cast<unsigned>(bits) & bit) != 0; };
  h.netns = (flags & CLONE_NEWNET) != 0;
  h.ipcns = (flags & CLONE_NEWIPC) != 0;
  h.mountns = (flags & CLONE_NEWNS) != 0 && has(kProbeMounts);
  h.utsns = (flags & CLONE_NEWUTS) != 0 && has(kProbeHostname);
  // A pid namespace without its own /proc would still list the host's processes there.
  h.pidns = (flags & CLONE_NEWPID) != 0 && h.mountns && has(kProbeProc);
  h.readonly_recursive = h.mountns && has(kProbeReadOnly);
  if (!has(kProbeSeccomp)) {
    h.seccomp = {};
  }
  if (!h.netns) {
    missing.emplace_back(
        "network namespace (unshare(CLONE_NEWNET) is not permitted: functions with "
        "sandbox.network none or loopback run in the host network namespace)");
  }
  if (!h.pidns) {
    missing.emplace_back(
        "pid namespace with its own /proc (functions see the host's processes and can signal "
        "those of their uid)");
  }
  if (!h.mountns) {
    missing.emplace_back(
        "mount namespace (no read-only filesystem and no private /tmp: functions write to the "
        "host's /tmp and /dev/shm)");
  } else if (!h.readonly_recursive) {
    missing.emplace_back(
        "recursive read-only mounts (mount_setattr, Linux 5.12: only / and the function "
        "directory are read-only, other mounts keep their mode)");
  }
  if (!h.ipcns) {
    missing.emplace_back(
        "IPC namespace (functions share System V IPC and POSIX message queues with the host)");
  }
  if (!h.utsns) {
    missing.emplace_back("UTS namespace (functions see the host's hostname)");
  }
  if (h.seccomp[0].insns.empty()) {
    missing.emplace_back("seccomp (" + seccomp_error +
                         ": functions may call ptrace, bpf, keyctl, unshare ... limited only "
                         "by their uid)");
  }
  if (!missing.empty()) {
    std::string w =
        "runtime: this host cannot provide every layer of the function sandbox; functions "
        "start without: ";
    for (std::size_t i = 0; i < missing.size(); ++i) {
      w += (i == 0 ? "" : "; ") + missing[i];
    }
    h.warnings.push_back(std::move(w));
  }
  if (h.pidns) {
    // Re-exec'd as each pid namespace's init. Without it, init stays a copy of the gateway.
    h.self_exe = ::open("/proc/self/exe", O_PATH | O_CLOEXEC);
  }
  return h;
}

void cleanup_host(HostCapabilities& host) {
  if (!host.memory_root.empty()) {
    ::rmdir(host.memory_root.c_str());
  }
  if (!host.pids_root.empty() && host.pids_root != host.memory_root) {
    ::rmdir(host.pids_root.c_str());
  }
  close_fd(host.self_exe);
}

core::Result<Spawned> spawn(const SpawnSpec& spec, const HostCapabilities& host) {
  using core::ErrorCode;
  if (spec.argv.empty()) {
    return core::make_error(ErrorCode::kInvalidArgument, "empty command");
  }
  const std::string program = find_program(spec.argv[0]);
  if (program.empty()) {
    return core::make_error(ErrorCode::kNotFound,
                            "command '" + spec.argv[0] + "' not found or not executable");
  }

  Spawned out;
  // Every descriptor made here; the parent closes the child's ends after the clone.
  std::vector<int> procs_fds;
  int err_pipe[2] = {-1, -1};
  int fd_sock[2] = {-1, -1};
  int in_pipe[2] = {-1, -1};
  int out_pipe[2] = {-1, -1};
  int errout_pipe[2] = {-1, -1};
  int status_pipe[2] = {-1, -1};
  int devnull = -1;
  int gateway_fd = -1;
  auto close_child_ends = [&] {
    for (int* fd : {&err_pipe[1], &fd_sock[1], &in_pipe[0], &out_pipe[1], &errout_pipe[1],
                    &status_pipe[1], &devnull, &gateway_fd}) {
      close_fd(*fd);
    }
    for (int& fd : procs_fds) {
      close_fd(fd);
    }
    procs_fds.clear();
  };
  auto fail = [&](std::string msg) {
    close_child_ends();
    for (int* fd :
         {&err_pipe[0], &fd_sock[0], &in_pipe[1], &out_pipe[0], &errout_pipe[0], &status_pipe[0]}) {
      close_fd(*fd);
    }
    release(out);
    return core::make_error(ErrorCode::kIo, std::move(msg));
  };

  // Cgroups: one directory per process in each hierarchy, with its limits, joined by the child.
  if (host.cgroups != HostCapabilities::Cgroups::kNone) {
    const bool v2 = host.cgroups == HostCapabilities::Cgroups::kV2;
    std::vector<std::string> roots{host.memory_root};
    if (host.pids_root != host.memory_root) {
      roots.push_back(host.pids_root);
    }
    for (const std::string& root : roots) {
      const std::string dir = root + "/" + spec.name;
      if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
        return fail(errno_text("mkdir " + dir, errno));
      }
      out.cgroup_dirs.push_back(dir);
      const bool is_mem = root == host.memory_root;
      const bool is_pids = root == host.pids_root;
      if (is_mem && spec.memory_bytes > 0) {
        const std::string value = std::to_string(spec.memory_bytes);
        if (!write_file(dir + (v2 ? "/memory.max" : "/memory.limit_in_bytes"), value)) {
          return fail(errno_text("setting the memory limit in " + dir, errno));
        }
        if (v2) {
          (void)write_file(dir + "/memory.swap.max", "0");
        }
      }
      if (is_pids && spec.max_pids > 0) {
        if (!write_file(dir + "/pids.max", std::to_string(spec.max_pids))) {
          return fail(errno_text("setting pids.max in " + dir, errno));
        }
      }
      const int fd = ::open((dir + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
      if (fd < 0) {
        return fail(errno_text("open " + dir + "/cgroup.procs", errno));
      }
      procs_fds.push_back(fd);
    }
  }

  // Everything the child needs is built before the clone: it may only make syscalls.
  std::vector<char*> argv;
  for (const auto& a : spec.argv) {
    argv.push_back(const_cast<char*>(a.c_str()));
  }
  argv.push_back(nullptr);
  std::vector<std::string> env_store = spec.env;
  std::size_t api_env = 0;
  if (spec.runtime_api) {
    env_store.emplace_back("AWS_LAMBDA_RUNTIME_API=127.0.0.1:00000");
    env_store.back().reserve(64);
    api_env = env_store.size() - 1;
  }
  std::vector<char*> envp;
  for (auto& e : env_store) {
    envp.push_back(e.data());
  }
  envp.push_back(nullptr);

  const bool new_netns = spec.network != config::NetworkMode::kHost && host.netns;
  const std::string hostname = spec.hostname.empty() ? "function" : spec.hostname;
  const std::string function_dir =
      !spec.working_dir.empty() ? spec.working_dir : program.substr(0, program.rfind('/') + 1);
  // The function's directory (or program) under /tmp would vanish under its private /tmp.
  std::deque<std::string> kept_store;  // stable addresses for the pointers below
  std::vector<KeptPath> kept;
  std::vector<std::vector<const char*>> kept_parents;
  if (host.mountns) {
    auto under_tmp = [](const std::string& path) { return path.rfind("/tmp/", 0) == 0; };
    std::string dir = function_dir;
    while (dir.size() > 1 && dir.back() == '/') {
      dir.pop_back();
    }
    std::vector<std::pair<std::string, bool>> wanted;
    if (under_tmp(dir)) {
      wanted.emplace_back(dir, true);
    }
    if (under_tmp(program) && (wanted.empty() || program.rfind(dir + "/", 0) != 0)) {
      wanted.emplace_back(program, false);
    }
    for (const auto& [path, is_dir] : wanted) {
      std::vector<const char*> parents;
      for (std::size_t slash = path.find('/', 5); slash != std::string::npos;
           slash = path.find('/', slash + 1)) {
        parents.push_back(kept_store.emplace_back(path.substr(0, slash)).c_str());
      }
      kept.push_back(KeptPath{kept_store.emplace_back(path).c_str(), is_dir, nullptr, 0});
      kept_parents.push_back(std::move(parents));
    }
    for (std::size_t i = 0; i < kept.size(); ++i) {
      kept[i].parents = kept_parents[i].data();
      kept[i].parent_count = kept_parents[i].size();
    }
  }
  // nr_inodes: without it a tmpfs allows ~half of RAM in empty files, each costing an inode.
  const std::uint64_t tmp_bytes = std::max<std::uint64_t>(spec.tmp_bytes, 4096);
  const std::string tmp_options = "size=" + std::to_string(tmp_bytes) +
                                  ",nr_inodes=" + std::to_string(1024 + tmp_bytes / 4096) +
                                  ",mode=1777";
  const SeccompProgram& filter = host.seccomp[static_cast<std::size_t>(spec.network)];

  if (::pipe2(err_pipe, O_CLOEXEC) != 0 ||
      (spec.runtime_api && ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fd_sock) != 0) ||
      (spec.stdin_pipe && ::pipe2(in_pipe, O_CLOEXEC) != 0) || ::pipe2(out_pipe, O_CLOEXEC) != 0 ||
      ::pipe2(errout_pipe, O_CLOEXEC) != 0 ||
      (host.pidns && ::pipe2(status_pipe, O_CLOEXEC) != 0)) {
    return fail(errno_text("pipe", errno));
  }
  if (status_pipe[0] >= 0) {
    ::fcntl(status_pipe[0], F_SETFL, O_NONBLOCK);
  }
  if (!spec.stdin_pipe) {
    devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull < 0) {
      return fail(errno_text("open /dev/null", errno));
    }
  }
  gateway_fd = static_cast<int>(::syscall(SYS_pidfd_open, ::getpid(), 0));
  if (gateway_fd < 0) {
    return fail(errno_text("pidfd_open", errno));
  }

  ChildPlan plan;
  plan.program = program.c_str();
  plan.argv = argv.data();
  plan.envp = envp.data();
  plan.api_env_port = spec.runtime_api ? env_store[api_env].data() +
                                             std::strlen("AWS_LAMBDA_RUNTIME_API=127.0.0.1:")
                                       : nullptr;
  plan.working_dir = spec.working_dir.empty() ? nullptr : spec.working_dir.c_str();
  plan.function_dir = function_dir.c_str();
  plan.hostname = host.utsns ? hostname.c_str() : nullptr;
  plan.tmp_options = tmp_options.c_str();
  plan.kept = kept.data();
  plan.kept_count = kept.size();
  plan.procs_fds = procs_fds.data();
  plan.procs_count = procs_fds.size();
  plan.seccomp = filter.insns.empty() ? nullptr : &filter;
  plan.err_fd = err_pipe[1];
  plan.api_sock = fd_sock[1];
  plan.stdin_fd = spec.stdin_pipe ? in_pipe[0] : devnull;
  plan.stdout_fd = out_pipe[1];
  plan.stderr_fd = errout_pipe[1];
  plan.status_fd = status_pipe[1];
  plan.gateway_fd = gateway_fd;
  plan.self_exe = host.self_exe;
  plan.pidns = host.pidns;
  plan.mountns = host.mountns;
  plan.netns = new_netns;
  // network none: the loopback exists only for the runtime API listener.
  plan.loopback_up = spec.runtime_api || spec.network == config::NetworkMode::kLoopback;
  plan.readonly_recursive = host.readonly_recursive;
  plan.have_cgroups = host.cgroups != HostCapabilities::Cgroups::kNone;
  plan.drop_privileges = spec.drop_privileges;
  plan.memory_bytes = spec.memory_bytes;
  plan.max_pids = spec.max_pids;
  plan.uid = spec.uid;
  plan.gid = spec.gid;

  unsigned long flags = 0;
  flags |= host.pidns ? CLONE_NEWPID : 0;
  flags |= host.mountns ? CLONE_NEWNS : 0;
  flags |= host.ipcns ? CLONE_NEWIPC : 0;
  flags |= host.utsns ? CLONE_NEWUTS : 0;
  flags |= new_netns ? CLONE_NEWNET : 0;
  const pid_t pid = clone_process(flags);
  if (pid < 0) {
    return fail(errno_text("clone", errno));
  }
  if (pid == 0) {
    sandbox_child(plan);
  }

  // Parent.
  out.pid = pid;
  close_child_ends();
  out.stdin_fd = std::exchange(in_pipe[1], -1);
  out.stdout_fd = std::exchange(out_pipe[0], -1);
  out.stderr_fd = std::exchange(errout_pipe[0], -1);
  out.status_fd = std::exchange(status_pipe[0], -1);
  if (spec.runtime_api) {
    out.api_listener = recv_fd(fd_sock[0]);
    close_fd(fd_sock[0]);
  }
  // The error pipe closes when the function execs (success) or carries {step, errno}.
  std::array<int, 2> msg{};
  ssize_t n = 0;
  do {
    n = ::read(err_pipe[0], msg.data(), sizeof(msg));
  } while (n < 0 && errno == EINTR);
  close_fd(err_pipe[0]);
  auto reap_and_fail = [&](std::string text) {
    kill_tree(out);
    int status = 0;
    ::waitpid(out.pid, &status, 0);
    out.pid = -1;
    return fail(std::move(text));
  };
  if (n == static_cast<ssize_t>(sizeof(msg))) {
    const auto step = static_cast<std::size_t>(msg[0]);
    const std::string_view what = step < std::size(kStepNames) ? kStepNames[step] : "setup";
    return reap_and_fail(
        errno_text("starting '" + spec.argv[0] + "' failed at " + std::string(what), msg[1]));
  }
  if (spec.runtime_api) {
    sockaddr_in a{};
    socklen_t len = sizeof(a);
    if (out.api_listener < 0 ||
        ::getsockname(out.api_listener, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      return reap_and_fail("the runtime API listener was not handed over");
    }
    out.api_port = ntohs(a.sin_port);
  }
  out.pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (out.pidfd < 0) {
    return reap_and_fail(errno_text("pidfd_open", errno));
  }
  ::fcntl(out.pidfd, F_SETFD, FD_CLOEXEC);
  return out;
}

int reap(Spawned& p) {
  int status = 0;
  while (::waitpid(p.pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (p.status_fd >= 0) {
    // Init wrote the function's status before exiting; nothing if init was killed first
    // (the deadline, the gateway stopping), and then its own SIGKILL is the answer.
    int relayed = 0;
    if (::read(p.status_fd, &relayed, sizeof(relayed)) == static_cast<ssize_t>(sizeof(relayed))) {
      status = relayed;
    }
    close_fd(p.status_fd);
  }
  return status;
}

void kill_tree(const Spawned& p) {
  if (p.pid > 0) {
    ::kill(-p.pid, SIGKILL);
    ::kill(p.pid, SIGKILL);
  }
  // Processes that left the group (setsid) are still in the cgroup. A fork bomb may add more
  // while we kill, but pids.max bounds it, so a few rounds empty the group.
  for (const std::string& dir : p.cgroup_dirs) {
    for (int round = 0; round < 8; ++round) {
      const auto pids = cgroup_pids(dir);
      if (pids.empty()) {
        break;
      }
      for (pid_t pid : pids) {
        ::kill(pid, SIGKILL);
      }
    }
  }
}

bool oom_killed(const Spawned& p, const HostCapabilities& host) {
  if (host.cgroups == HostCapabilities::Cgroups::kNone) {
    return false;
  }
  const bool v2 = host.cgroups == HostCapabilities::Cgroups::kV2;
  for (const std::string& dir : p.cgroup_dirs) {
    if (dir.rfind(host.memory_root, 0) != 0) {
      continue;
    }
    std::istringstream in(read_file(dir + (v2 ? "/memory.events" : "/memory.oom_control")));
    for (std::string key, value; in >> key >> value;) {
      if (key == "oom_kill" && value != "0") {
        return true;
      }
    }
    if (!v2 && read_file(dir + "/memory.failcnt") != "0\n" &&
        !read_file(dir + "/memory.failcnt").empty()) {
      // Kernels without oom_kill in oom_control: the limit was hit at least once.
      std::istringstream oc(read_file(dir + "/memory.oom_control"));
      std::string text = oc.str();
      if (text.find("oom_kill ") == std::string::npos) {
        return true;
      }
    }
  }
  return false;
}

void release(Spawned& p) {
  kill_tree(p);
  close_fd(p.pidfd);
  close_fd(p.api_listener);
  close_fd(p.stdin_fd);
  close_fd(p.stdout_fd);
  close_fd(p.stderr_fd);
  close_fd(p.status_fd);
  for (const std::string& dir : p.cgroup_dirs) {
    // The last killed tasks may take a moment to leave; a few retries cover it.
    for (int i = 0; i < 50 && ::rmdir(dir.c_str()) != 0 && errno == EBUSY; ++i) {
      kill_tree(Spawned{.cgroup_dirs = {dir}});
      ::usleep(2000);
    }
  }
  p.cgroup_dirs.clear();
}

}  // namespace gatehouse::runtime::detail
