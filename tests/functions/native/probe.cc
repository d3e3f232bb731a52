// Hostile: probes its sandbox from inside and reports what it could do. The event's "op":
//   escape   the syscalls the seccomp filter refuses (ptrace, mount, unshare, bpf, ...), each
//            as "ok" or its strerror text, plus controls that must keep working (thread, fork)
//   fs       writes to its own directory and to the root filesystem, what /tmp is, whether a
//            host path ("marker") is visible, creates /tmp/<"create">, fills /tmp with "fill"
//            bytes
//   procs    the processes /proc shows (pid and comm), its own pid, its hostname
//   connect  a TCP connect to "host":"port"
//   unix     a connect to the unix socket at "path" (a server of the host's)
//   listen   listen on 127.0.0.1, connect to itself, accept
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "event_field.h"
#include "gatehouse_lambda.h"

namespace {

using gatehouse::lambda::detail::json_escape;

std::string outcome(bool ok) { return ok ? "ok" : std::strerror(errno); }

void add(std::string& json, const std::string& key, const std::string& value) {
  json += (json.size() > 1 ? "," : "") + ("\"" + key + "\":\"" + json_escape(value) + "\"");
}

std::string escape_attempts() {
  std::string j = "{";
  // A child to aim at: ptrace and process_vm_readv work on one's own children without seccomp.
  const pid_t child = ::fork();
  if (child == 0) {
    ::pause();
    ::_exit(0);
  }
  add(j, "ptrace", outcome(::ptrace(PTRACE_ATTACH, child, nullptr, nullptr) == 0));
  int value = 42;
  int copy = 0;
  iovec local{&copy, sizeof(copy)};
  iovec remote{&value, sizeof(value)};
  add(j, "process_vm_readv",
      outcome(::syscall(SYS_process_vm_readv, child, &local, 1, &remote, 1, 0) >= 0));
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  add(j, "mount", outcome(::mount("none", "/tmp", "tmpfs", 0, nullptr) == 0));
  add(j, "umount", outcome(::umount2("/proc", MNT_DETACH) == 0));
  add(j, "unshare_user", outcome(::unshare(CLONE_NEWUSER) == 0));
  add(j, "unshare_net", outcome(::unshare(CLONE_NEWNET) == 0));
  add(j, "setns", outcome(::setns(0, 0) == 0));
  add(j, "clone_newns",
      outcome(::syscall(SYS_clone, CLONE_NEWNS | SIGCHLD, nullptr, nullptr, nullptr, 0) >= 0));
  add(j, "bpf", outcome(::syscall(SYS_bpf, 0, nullptr, 0) >= 0));
  add(j, "perf_event_open", outcome(::syscall(SYS_perf_event_open, nullptr, 0, -1, -1, 0) >= 0));
  add(j, "keyctl", outcome(::syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3, 0) >= 0));
  add(j, "add_key", outcome(::syscall(SYS_add_key, "user", "k", "v", 1, -3) >= 0));
  add(j, "userfaultfd", outcome(::syscall(SYS_userfaultfd, 0) >= 0));
  add(j, "kexec_load", outcome(::syscall(SYS_kexec_load, 0, 0, nullptr, 0) == 0));
  add(j, "init_module", outcome(::syscall(SYS_init_module, nullptr, 0, "") == 0));
  add(j, "reboot", outcome(::syscall(SYS_reboot, 0, 0, 0, nullptr) == 0));
  add(j, "swapon", outcome(::syscall(SYS_swapon, "/nonexistent", 0) == 0));
  add(j, "pivot_root", outcome(::syscall(SYS_pivot_root, "/", "/") == 0));
  // Controls: a thread (glibc tries clone3 first) and a fork must still work.
  bool ran = false;
  std::thread t([&] { ran = true; });
  t.join();
  add(j, "thread", ran ? "ok" : "did not run");
  const pid_t f = ::fork();
  if (f == 0) {
    ::_exit(7);
  }
  int status = 0;
  ::waitpid(f, &status, 0);
  add(j, "fork", f > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 7 ? "ok" : "failed");
  return j + "}";
}

std::string filesystem(const std::string& payload) {
  std::string j = "{";
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::string dir = self.substr(0, self.rfind('/'));
  const int own = ::open((dir + "/written-by-function").c_str(), O_WRONLY | O_CREAT, 0644);
  add(j, "own_dir_write", outcome(own >= 0));
  add(j, "own_dir", dir);
  const int root = ::open("/var/tmp/written-by-function", O_WRONLY | O_CREAT, 0644);
  add(j, "root_write", outcome(root >= 0));
  struct statfs st {};
  ::statfs("/tmp", &st);
  add(j, "tmp_type", st.f_type == TMPFS_MAGIC ? "tmpfs" : std::to_string(st.f_type));
  add(j, "tmp_bytes", std::to_string(static_cast<unsigned long long>(st.f_blocks) * st.f_bsize));
  const std::string marker = event_field(payload, "marker");
  add(j, "marker_visible", !marker.empty() && ::access(marker.c_str(), F_OK) == 0 ? "yes" : "no");
  const std::string create = event_field(payload, "create");
  if (!create.empty()) {
    std::ofstream("/tmp/" + create) << "from the function\n";
  }
  const long fill = std::atol(event_field(payload, "fill").c_str());
  if (fill > 0) {
    const int fd = ::open("/tmp/fill", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::vector<char> chunk(64 * 1024, 'x');
    long written = 0;
    std::string result = fd < 0 ? std::strerror(errno) : "ok";
    while (fd >= 0 && written < fill) {
      const ssize_t n = ::write(fd, chunk.data(), chunk.size());
      if (n < 0) {
        result = std::strerror(errno);
        break;
      }
      written += n;
    }
    if (fd >= 0) {
      ::close(fd);
    }
    ::unlink("/tmp/fill");
    add(j, "fill", result);
    add(j, "filled", std::to_string(written));
  }
  return j + "}";
}

std::string processes() {
  std::string list;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    std::string comm;
    std::getline(std::ifstream(e.path() / "comm"), comm);
    list += (list.empty() ? "" : ",") +
            ("{\"pid\":" + name + ",\"comm\":\"" + json_escape(comm) + "\"}");
  }
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  return "{\"processes\":[" + list + "],\"pid\":" + std::to_string(::getpid()) +
         ",\"hostname\":\"" + json_escape(host) + "\"}";
}

std::string connect_to(const std::string& host, int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  ::inet_pton(AF_INET, host.c_str(), &a.sin_addr);
  const std::string r = outcome(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  ::close(fd);
  return "{\"connect\":\"" + r + "\"}";
}

std::string connect_unix(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd < 0) {
    return "{\"unix\":\"socket: " + std::string(std::strerror(errno)) + "\"}";
  }
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  path.copy(a.sun_path, sizeof(a.sun_path) - 1);
  const std::string r = outcome(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  ::close(fd);
  return "{\"unix\":\"" + r + "\"}";
}

std::string listen_and_connect() {
  const int l = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  std::string step = "bind";
  bool ok = ::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  if (ok) {
    step = "listen";
    ok = ::listen(l, 4) == 0 && ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  }
  if (ok) {
    step = "connect";
    const int c = ::socket(AF_INET, SOCK_STREAM, 0);
    ok = ::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    if (ok) {
      step = "accept";
      const int s = ::accept(l, nullptr, nullptr);
      ok = s >= 0 && ::write(c, "x", 1) == 1;
      char byte = 0;
      ok = ok && ::read(s, &byte, 1) == 1 && byte == 'x';
      ::close(s);
    }
    ::close(c);
  }
  const std::string r = ok ? "ok" : step + ": " + std::strerror(errno);
  ::close(l);
  return "{\"listen\":\"" + r + "\"}";
}

}  // namespace

int main() {
  return gatehouse::lambda::run([](const gatehouse::lambda::Invocation& inv) {
    const std::string op = event_field(inv.payload, "op");
    std::string out;
    if (op == "escape") {
      out = escape_attempts();
    } else if (op == "fs") {
      out = filesystem(inv.payload);
    } else if (op == "procs") {
      out = processes();
    } else if (op == "connect") {
      out = connect_to(event_field(inv.payload, "host"),
                       std::atoi(event_field(inv.payload, "port").c_str()));
    } else if (op == "unix") {
      out = connect_unix(event_field(inv.payload, "path"));
    } else if (op == "listen") {
      out = listen_and_connect();
    } else {
      return gatehouse::lambda::Result::failure("BadOp", "unknown op '" + op + "'");
    }
    return gatehouse::lambda::Result::success(out);
  });
}
