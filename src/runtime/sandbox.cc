#include "runtime/sandbox.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

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

bool probe_netns() {
  const pid_t pid = ::fork();
  if (pid < 0) {
    return false;
  }
  if (pid == 0) {
    ::_exit(::unshare(CLONE_NEWNET) == 0 ? 0 : 1);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// Child side, between fork and exec: only async-signal-safe calls from here on.
[[noreturn]] void child_fail(int err_fd, int step) {
  const int err = errno;
  std::array<int, 2> msg{step, err};
  (void)!::write(err_fd, msg.data(), sizeof(msg));
  ::_exit(127);
}

void bring_up_loopback() {
  const int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) {
    return;
  }
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, "lo", 3);
  if (::ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP | IFF_RUNNING);
    (void)::ioctl(s, SIOCSIFFLAGS, &ifr);
  }
  ::close(s);
}

// Writes the decimal port into `out` (async-signal-safe); returns the end.
char* put_port(char* out, std::uint16_t port) {
  char digits[8];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + port % 10);
    port = static_cast<std::uint16_t>(port / 10);
  } while (port != 0);
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

constexpr std::string_view kSteps[] = {
    "setpgid",   "join cgroup", "unshare(CLONE_NEWNET)", "runtime API socket", "setrlimit",
    "setgroups", "setgid",      "setuid",                "prctl",              "chdir",
    "dup2",      "execve"};

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

}  // namespace

HostCapabilities detect_host() {
  HostCapabilities h;
  h.root = ::geteuid() == 0;
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
  if (h.cgroups == HostCapabilities::Cgroups::kNone && !m.v1_memory.empty() &&
      !m.v1_pids.empty()) {
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
    h.warnings.push_back(
        "runtime: no writable cgroup (v2 with memory+pids delegated, or v1 memory and pids "
        "hierarchies): function memory is limited by RLIMIT_DATA only (OOM kills are not "
        "detected) and processes by RLIMIT_NPROC, which counts every process of the uid");
  }
  h.netns = probe_netns();
  if (!h.netns) {
    h.warnings.push_back(
        "runtime: unshare(CLONE_NEWNET) is not permitted: functions with sandbox.network none "
        "run in the host network namespace");
  }
  if (h.root && h.cgroups == HostCapabilities::Cgroups::kNone) {
    h.warnings.push_back(
        "runtime: running as root without cgroups: functions run as runtime.run_as_uid so that "
        "RLIMIT_NPROC can hold a fork bomb");
  }
  return h;
}

void cleanup_host(const HostCapabilities& host) {
  if (!host.memory_root.empty()) {
    ::rmdir(host.memory_root.c_str());
  }
  if (!host.pids_root.empty() && host.pids_root != host.memory_root) {
    ::rmdir(host.pids_root.c_str());
  }
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
  // Cgroups: one directory per process in each hierarchy, with its limits, joined by the child.
  std::vector<int> procs_fds;
  auto fail = [&](std::string msg) {
    for (int fd : procs_fds) {
      ::close(fd);
    }
    release(out);
    return core::make_error(ErrorCode::kIo, std::move(msg));
  };
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

  // Everything the child needs is built before fork: it may only make syscalls.
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
  char* api_env_port = spec.runtime_api
                           ? env_store[api_env].data() + std::strlen("AWS_LAMBDA_RUNTIME_API=127.0.0.1:")
                           : nullptr;

  int err_pipe[2] = {-1, -1};
  int fd_sock[2] = {-1, -1};
  int in_pipe[2] = {-1, -1};
  int out_pipe[2] = {-1, -1};
  int errout_pipe[2] = {-1, -1};
  if (::pipe2(err_pipe, O_CLOEXEC) != 0 ||
      (spec.runtime_api && ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fd_sock) != 0) ||
      (spec.stdin_pipe && ::pipe2(in_pipe, O_CLOEXEC) != 0) || ::pipe2(out_pipe, O_CLOEXEC) != 0 ||
      ::pipe2(errout_pipe, O_CLOEXEC) != 0) {
    const int err = errno;
    for (int fd : {err_pipe[0], err_pipe[1], fd_sock[0], fd_sock[1], in_pipe[0], in_pipe[1],
                   out_pipe[0], out_pipe[1], errout_pipe[0], errout_pipe[1]}) {
      if (fd >= 0) {
        ::close(fd);
      }
    }
    return fail(errno_text("pipe", err));
  }
  const int devnull = spec.stdin_pipe ? -1 : ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const bool have_cgroups = host.cgroups != HostCapabilities::Cgroups::kNone;
  const bool new_netns = spec.new_netns && host.netns;
  const pid_t parent = ::getpid();

  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    for (int fd : {err_pipe[0], err_pipe[1], fd_sock[0], fd_sock[1], in_pipe[0], in_pipe[1],
                   out_pipe[0], out_pipe[1], errout_pipe[0], errout_pipe[1], devnull}) {
      if (fd >= 0) {
        ::close(fd);
      }
    }
    return fail(errno_text("fork", err));
  }
  if (pid == 0) {
    const int efd = err_pipe[1];
    // Default signal dispositions and an empty mask: the gateway blocks some for its threads.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int sig : {SIGPIPE, SIGHUP, SIGTERM, SIGINT, SIGCHLD}) {
      ::signal(sig, SIG_DFL);
    }
    if (::setpgid(0, 0) != 0) {
      child_fail(efd, 0);
    }
    for (int fd : procs_fds) {
      if (::write(fd, "0", 1) != 1) {
        child_fail(efd, 1);
      }
    }
    if (new_netns) {
      if (::unshare(CLONE_NEWNET) != 0) {
        child_fail(efd, 2);
      }
      bring_up_loopback();
    }
    if (spec.runtime_api) {
      const int l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      socklen_t len = sizeof(a);
      if (l < 0 || ::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
          ::listen(l, 16) != 0 || ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len) != 0 ||
          !send_fd(fd_sock[1], l)) {
        child_fail(efd, 3);
      }
      put_port(api_env_port, ntohs(a.sin_port));
      ::close(l);
    }
    const rlimit core_limit{0, 0};
    const rlimit nofile{1024, 1024};
    if (::setrlimit(RLIMIT_CORE, &core_limit) != 0 || ::setrlimit(RLIMIT_NOFILE, &nofile) != 0) {
      child_fail(efd, 4);
    }
    if (!have_cgroups) {
      if (spec.memory_bytes > 0) {
        const rlimit data{spec.memory_bytes, spec.memory_bytes};
        if (::setrlimit(RLIMIT_DATA, &data) != 0) {
          child_fail(efd, 4);
        }
      }
      if (spec.max_pids > 0 && spec.drop_privileges) {
        const rlimit nproc{spec.max_pids, spec.max_pids};
        if (::setrlimit(RLIMIT_NPROC, &nproc) != 0) {
          child_fail(efd, 4);
        }
      }
    }
    if (spec.drop_privileges) {
      if (::setgroups(0, nullptr) != 0) {
        child_fail(efd, 5);
      }
      if (::setgid(spec.gid) != 0) {
        child_fail(efd, 6);
      }
      if (::setuid(spec.uid) != 0) {
        child_fail(efd, 7);
      }
    }
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) {
      child_fail(efd, 8);
    }
    if (::getppid() != parent) {
      ::_exit(127);  // the gateway died before PDEATHSIG was armed
    }
    if (!spec.working_dir.empty() && ::chdir(spec.working_dir.c_str()) != 0) {
      child_fail(efd, 9);
    }
    if (::dup2(spec.stdin_pipe ? in_pipe[0] : devnull, 0) < 0 || ::dup2(out_pipe[1], 1) < 0 ||
        ::dup2(errout_pipe[1], 2) < 0) {
      child_fail(efd, 10);
    }
    // Nothing of the gateway's may leak into the function: Asio opens sockets (client
    // connections among them) without O_CLOEXEC, so every descriptor above stderr is marked
    // close-on-exec here (marked, not closed: the error pipe must survive a failing execve).
    constexpr unsigned kCloseRangeCloexec = 4;  // CLOSE_RANGE_CLOEXEC, Linux 5.11
    if (::syscall(SYS_close_range, 3U, ~0U, kCloseRangeCloexec) != 0) {
      child_fail(efd, 10);
    }
    ::execve(program.c_str(), argv.data(), envp.data());
    child_fail(efd, 11);
  }

  // Parent.
  for (int fd : procs_fds) {
    ::close(fd);
  }
  procs_fds.clear();
  out.pid = pid;
  for (int fd : {err_pipe[1], fd_sock[1], in_pipe[0], out_pipe[1], errout_pipe[1], devnull}) {
    if (fd >= 0) {
      ::close(fd);
    }
  }
  out.stdin_fd = in_pipe[1];
  out.stdout_fd = out_pipe[0];
  out.stderr_fd = errout_pipe[0];
  if (spec.runtime_api) {
    out.api_listener = recv_fd(fd_sock[0]);
    ::close(fd_sock[0]);
  }
  // The error pipe closes on exec (success) or carries {step, errno}.
  std::array<int, 2> msg{};
  ssize_t n = 0;
  do {
    n = ::read(err_pipe[0], msg.data(), sizeof(msg));
  } while (n < 0 && errno == EINTR);
  ::close(err_pipe[0]);
  if (n == static_cast<ssize_t>(sizeof(msg))) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    out.pid = -1;
    const auto step = static_cast<std::size_t>(msg[0]);
    const std::string_view what = step < std::size(kSteps) ? kSteps[step] : "setup";
    return fail(errno_text("starting '" + spec.argv[0] + "' failed at " + std::string(what),
                           msg[1]));
  }
  if (spec.runtime_api) {
    sockaddr_in a{};
    socklen_t len = sizeof(a);
    if (out.api_listener < 0 ||
        ::getsockname(out.api_listener, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      kill_tree(out);
      int status = 0;
      ::waitpid(pid, &status, 0);
      out.pid = -1;
      return fail("the runtime API listener was not handed over");
    }
    out.api_port = ntohs(a.sin_port);
  }
  out.pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (out.pidfd < 0) {
    const int err = errno;
    kill_tree(out);
    int status = 0;
    ::waitpid(pid, &status, 0);
    out.pid = -1;
    return fail(errno_text("pidfd_open", err));
  }
  ::fcntl(out.pidfd, F_SETFD, FD_CLOEXEC);
  return out;
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
