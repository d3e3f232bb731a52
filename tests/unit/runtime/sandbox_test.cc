// The sandbox layers with real processes: the seccomp filter installed in a forked child (as
// root, so an EPERM can only come from the filter), and spawn() of /bin/sh scripts that report
// what they see from inside. Needs root for the namespaces (the development machine and CI run
// as root); without it the tests say so and stop.
#include "runtime/sandbox.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>

namespace gatehouse::runtime::detail {
namespace {

// Runs `body` in a forked child and returns its exit code (255 when it did not exit).
int in_child(const std::function<int()>& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::_exit(body());
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 255;
}

// errno of a failed call, 0 when it succeeded.
int err_of(long rc) { return rc < 0 ? errno : 0; }

class SeccompTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto none = build_seccomp(config::NetworkMode::kNone);
    ASSERT_TRUE(none.has_value()) << none.error().message;
    auto loopback = build_seccomp(config::NetworkMode::kLoopback);
    ASSERT_TRUE(loopback.has_value()) << loopback.error().message;
    auto host = build_seccomp(config::NetworkMode::kHost);
    ASSERT_TRUE(host.has_value()) << host.error().message;
    none_ = std::move(*none);
    loopback_ = std::move(*loopback);
    filter_ = std::move(*host);
  }
  // The child installs `p` (with no_new_privs, as the sandbox does), then runs `check`.
  static int filtered(const SeccompProgram& p, const std::function<int()>& check) {
    return in_child([&] {
      if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || install_seccomp(p) != 0) {
        return 100;
      }
      return check();
    });
  }
  SeccompProgram none_;
  SeccompProgram loopback_;
  SeccompProgram filter_;  // network host: the common rules only
};

TEST_F(SeccompTest, ProgramIsSmallAndValid) {
  EXPECT_GT(filter_.insns.size(), 20U);
  EXPECT_LT(filter_.insns.size(), 512U);
  // loopback adds the socket families, none listen() too.
  EXPECT_GT(loopback_.insns.size(), filter_.insns.size());
  EXPECT_GT(none_.insns.size(), loopback_.insns.size());
}

TEST_F(SeccompTest, RefusedSyscallsFailWithEperm) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root: without it these calls fail with EPERM anyway";
  }
  // Without the filter, root gets through (or fails for another reason than EPERM): the
  // EPERMs below come from the filter.
  EXPECT_EQ(in_child([] { return err_of(::unshare(CLONE_NEWUTS)); }), 0);
  EXPECT_EQ(
      in_child([] { return err_of(::mount("none", "/nonexistent-gh", "tmpfs", 0, nullptr)); }),
      ENOENT);
  EXPECT_EQ(in_child([] { return err_of(::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr)); }), 0);

  const std::pair<const char*, std::function<long()>> refused[] = {
      {"unshare", [] { return ::unshare(CLONE_NEWUTS); }},
      {"unshare(user)", [] { return ::unshare(CLONE_NEWUSER); }},
      {"setns", [] { return ::setns(0, 0); }},
      {"mount", [] { return ::mount("none", "/nonexistent-gh", "tmpfs", 0, nullptr); }},
      {"umount2", [] { return ::umount2("/nonexistent-gh", 0); }},
      {"ptrace", [] { return ::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr); }},
      {"process_vm_readv",
       [] { return ::syscall(SYS_process_vm_readv, ::getppid(), nullptr, 0, nullptr, 0, 0); }},
      {"bpf", [] { return ::syscall(SYS_bpf, 0, nullptr, 0); }},
      {"perf_event_open", [] { return ::syscall(SYS_perf_event_open, nullptr, 0, -1, -1, 0); }},
      {"keyctl", [] { return ::syscall(SYS_keyctl, 0, -3, 0); }},
      {"add_key", [] { return ::syscall(SYS_add_key, "user", "k", "v", 1, -3); }},
      {"request_key", [] { return ::syscall(SYS_request_key, "user", "k", nullptr, 0); }},
      {"userfaultfd", [] { return ::syscall(SYS_userfaultfd, 0); }},
      {"kexec_load", [] { return ::syscall(SYS_kexec_load, 0, 0, nullptr, 0); }},
      {"kexec_file_load", [] { return ::syscall(SYS_kexec_file_load, -1, -1, 0, "", 0); }},
      {"init_module", [] { return ::syscall(SYS_init_module, nullptr, 0, ""); }},
      {"finit_module", [] { return ::syscall(SYS_finit_module, -1, "", 0); }},
      {"delete_module", [] { return ::syscall(SYS_delete_module, "gh-none", 0); }},
      {"reboot", [] { return ::syscall(SYS_reboot, 0, 0, 0, nullptr); }},
      {"swapon", [] { return ::syscall(SYS_swapon, "/nonexistent-gh", 0); }},
      {"swapoff", [] { return ::syscall(SYS_swapoff, "/nonexistent-gh"); }},
      {"pivot_root", [] { return ::syscall(SYS_pivot_root, "/", "/"); }},
      {"open_by_handle_at", [] { return ::syscall(SYS_open_by_handle_at, -1, nullptr, 0); }},
      {"io_uring_setup", [] { return ::syscall(SYS_io_uring_setup, 1, nullptr); }},
      {"clone(CLONE_NEWNET)",
       [] { return ::syscall(SYS_clone, CLONE_NEWNET | SIGCHLD, nullptr, nullptr, nullptr, 0); }},
      {"clone(CLONE_NEWUSER)",
       [] { return ::syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, nullptr, nullptr, nullptr, 0); }},
  };
  for (const auto& entry : refused) {
    const auto& call = entry.second;  // clang 14 cannot capture a structured binding
    EXPECT_EQ(filtered(filter_, [&] { return err_of(call()); }), EPERM) << entry.first;
  }
}

TEST_F(SeccompTest, Clone3FailsWithEnosysSoLibcFallsBackToClone) {
  EXPECT_EQ(filtered(filter_, [] { return err_of(::syscall(SYS_clone3, nullptr, 0)); }), ENOSYS);
}

TEST_F(SeccompTest, OrdinaryProgramsKeepWorking) {
  // Threads (glibc tries clone3 first), fork, sockets, files.
  EXPECT_EQ(filtered(filter_,
                     [] {
                       bool ran = false;
                       std::thread t([&] { ran = true; });
                       t.join();
                       if (!ran) {
                         return 1;
                       }
                       const pid_t pid = ::fork();
                       if (pid == 0) {
                         ::_exit(7);
                       }
                       int status = 0;
                       ::waitpid(pid, &status, 0);
                       if (!WIFEXITED(status) || WEXITSTATUS(status) != 7) {
                         return 2;
                       }
                       const int s = ::socket(AF_INET, SOCK_STREAM, 0);
                       if (s < 0 || ::listen(s, 1) != 0) {
                         return 3;
                       }
                       ::close(s);
                       return ::access("/bin/sh", X_OK) == 0 ? 0 : 4;
                     }),
            0);
}

TEST_F(SeccompTest, NetworkNoneAlsoRefusesListen) {
  const auto try_listen = [] {
    const int s = ::socket(AF_INET, SOCK_STREAM, 0);
    return err_of(::listen(s, 1));
  };
  EXPECT_EQ(filtered(filter_, try_listen), 0);
  EXPECT_EQ(filtered(loopback_, try_listen), 0);
  EXPECT_EQ(filtered(none_, try_listen), EPERM);
}

TEST_F(SeccompTest, OnlyNetworkHostMayOpenUnixAndVsockSockets) {
  const auto unix_socket = [] { return err_of(::socket(AF_UNIX, SOCK_STREAM, 0)); };
  const auto vsock = [] {
    const int s = ::socket(AF_VSOCK, SOCK_STREAM, 0);
    return s < 0 && errno == EPERM ? EPERM : 0;  // EAFNOSUPPORT without vsock: not refused
  };
  const auto pair = [] {
    int sv[2];
    return err_of(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
  };
  const auto inet = [] { return err_of(::socket(AF_INET6, SOCK_DGRAM, 0)); };
  EXPECT_EQ(filtered(filter_, unix_socket), 0);
  EXPECT_EQ(filtered(filter_, vsock), 0);
  for (const SeccompProgram* p : {&loopback_, &none_}) {
    EXPECT_EQ(filtered(*p, unix_socket), EPERM);
    EXPECT_EQ(filtered(*p, vsock), EPERM);
    EXPECT_EQ(filtered(*p, pair), 0);
    EXPECT_EQ(filtered(*p, inet), 0);
  }
}

// ---------------------------------------------------------------------------------------------

struct Output {
  std::string out;
  int status = -1;
};

class SpawnTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { host_ = new HostCapabilities(detect_host()); }
  static void TearDownTestSuite() {
    cleanup_host(*host_);
    delete host_;
    host_ = nullptr;
  }
  void SetUp() override {
    if (::geteuid() != 0) {
      GTEST_SKIP() << "the sandbox's namespaces need root";
    }
    ASSERT_TRUE(host_->warnings.empty()) << host_->warnings[0];
  }

  // Runs `script` with /bin/sh in the sandbox and collects its stdout (within 20 s).
  static Output run(const std::string& script, const HostCapabilities& host,
                    const std::function<void(SpawnSpec&)>& tweak = {}) {
    SpawnSpec spec;
    spec.argv = {"/bin/sh", "-c", script};
    spec.env = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"};
    spec.name = "sandbox-test-" + std::to_string(++counter_);
    spec.hostname = "fn-under-test";
    spec.memory_bytes = 256ULL << 20;
    spec.max_pids = 64;
    if (tweak) {
      tweak(spec);
    }
    auto r = spawn(spec, host);
    Output o;
    if (!r) {
      o.out = "spawn failed: " + r.error().message;
      return o;
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    char buf[4096];
    for (;;) {
      pollfd p{r->stdout_fd, POLLIN, 0};
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
        o.out += "[timed out]";
        kill_tree(*r);
        break;
      }
      const ssize_t n = ::read(r->stdout_fd, buf, sizeof(buf));
      if (n <= 0) {
        break;
      }
      o.out.append(buf, static_cast<std::size_t>(n));
    }
    o.status = reap(*r);
    r->pid = -1;
    release(*r);
    return o;
  }

  static HostCapabilities* host_;
  static int counter_;
};

HostCapabilities* SpawnTest::host_ = nullptr;
int SpawnTest::counter_ = 0;

TEST_F(SpawnTest, TheHostProvidesEveryLayer) {
  EXPECT_TRUE(host_->netns);
  EXPECT_TRUE(host_->pidns);
  EXPECT_TRUE(host_->mountns);
  EXPECT_TRUE(host_->ipcns);
  EXPECT_TRUE(host_->utsns);
  for (const SeccompProgram& p : host_->seccomp) {
    EXPECT_FALSE(p.insns.empty());
  }
  EXPECT_GE(host_->self_exe, 0);
}

TEST_F(SpawnTest, OwnHostnameProcessesAndNoNetwork) {
  const Output o =
      run("hostname; echo pid=$$; echo /proc/[0-9]*; "
          // init re-execs our binary once the function has started, and names itself then.
          "for i in $(seq 200); do read comm < /proc/1/comm; "
          "[ $comm = gatehouse-init ] && break; sleep 0.01; done; echo $comm; "
          "grep -c ':' /proc/net/dev",
          *host_);
  // Its hostname; pid 2 under init; /proc lists only init and the shell (the glob runs in the
  // shell itself); only lo.
  EXPECT_EQ(o.out, "fn-under-test\npid=2\n/proc/1 /proc/2\ngatehouse-init\n1\n");
  EXPECT_TRUE(WIFEXITED(o.status) && WEXITSTATUS(o.status) == 0) << o.status;
}

TEST_F(SpawnTest, FilesystemIsReadOnlyAndTmpIsPrivateAndCapped) {
  // A directory anyone may write to: only the read-only mount can refuse the write.
  const std::string dir = "/tmp/gh-sbx-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  ::chmod(dir.c_str(), 0777);
  std::ofstream(dir + "/host-only") << "x";
  const Output o = run("cd " + dir + " && ls; touch " + dir + "/new 2>&1; touch /etc/gh 2>&1; " +
                           "ls -A /tmp | tr '\\n' ' '; echo; " +
                           "stat -f -c %T /tmp; df -k /tmp | tail -1 | awk '{print $2}'; " +
                           "head -c 3000000 /dev/zero > /tmp/big 2>/dev/null || echo full; " +
                           "stat -c %s /tmp/big",
                       *host_, [&](SpawnSpec& s) {
                         s.tmp_bytes = 2ULL << 20;
                         s.working_dir = dir;
                       });
  // The function's directory lives under /tmp: it is bound back (read-only) into the private
  // /tmp, with nothing else of the host's /tmp.
  const std::string rel = dir.substr(5);  // without "/tmp/"
  const std::string expected = "host-only\ntouch: cannot touch '" + dir +
                               "/new': Read-only file system\n"
                               "touch: cannot touch '/etc/gh': Read-only file system\n" +
                               rel + " \ntmpfs\n2048\nfull\n2097152\n";
  EXPECT_EQ(o.out, expected);
  EXPECT_FALSE(std::filesystem::exists(dir + "/new"));
  std::filesystem::remove_all(dir);
}

TEST_F(SpawnTest, ReapReportsTheFunctionsOwnExitAndSignal) {
  Output o = run("exit 3", *host_);
  EXPECT_TRUE(WIFEXITED(o.status) && WEXITSTATUS(o.status) == 3) << o.status;
  // pid 1 of a namespace cannot die of its own SIGABRT: init relays the function's.
  o = run("kill -ABRT $$", *host_);
  EXPECT_TRUE(WIFSIGNALED(o.status) && WTERMSIG(o.status) == SIGABRT) << o.status;
}

TEST_F(SpawnTest, WhenTheFunctionExitsItsLeftoversDie) {
  // The background sleep keeps stdout open: EOF comes only if the namespace is torn down.
  const auto t0 = std::chrono::steady_clock::now();
  const Output o = run("sleep 100 & echo started", *host_);
  EXPECT_EQ(o.out, "started\n");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
}

TEST_F(SpawnTest, NetworkModes) {
  const std::string script = "grep -c ':' /proc/net/dev; ip -o link show lo | grep -c UP";
  using config::NetworkMode;
  Output o = run(script, *host_, [](SpawnSpec& s) { s.network = NetworkMode::kNone; });
  EXPECT_EQ(o.out, "1\n0\n") << "none, without a runtime API: only lo, and it is down";
  o = run(script, *host_, [](SpawnSpec& s) { s.network = NetworkMode::kLoopback; });
  EXPECT_EQ(o.out, "1\n1\n") << "loopback: only lo, up";
  o = run("grep -c ':' /proc/net/dev", *host_,
          [](SpawnSpec& s) { s.network = NetworkMode::kHost; });
  std::ifstream dev("/proc/net/dev");
  int host_ifaces = 0;
  for (std::string line; std::getline(dev, line);) {
    host_ifaces += line.find(':') != std::string::npos ? 1 : 0;
  }
  EXPECT_EQ(o.out, std::to_string(host_ifaces) + "\n") << "host: the host's interfaces";
}

TEST_F(SpawnTest, WithoutAnyLayerItStillRuns) {
  HostCapabilities bare = *host_;
  bare.netns = bare.pidns = bare.mountns = bare.ipcns = bare.utsns = false;
  bare.readonly_recursive = false;
  bare.seccomp = {};
  bare.cgroups = HostCapabilities::Cgroups::kNone;
  bare.self_exe = -1;  // a copy: the original owns the descriptor
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  const Output o =
      run("hostname; echo $$ | grep -c -v '^2$'; grep -c Seccomp:.*0 /proc/self/status", bare);
  EXPECT_EQ(o.out, std::string(host) + "\n1\n1\n");
  EXPECT_TRUE(WIFEXITED(o.status) && WEXITSTATUS(o.status) == 0);
}

TEST_F(SpawnTest, WithoutMountSetattrRootAndFunctionDirAreStillReadOnly) {
  HostCapabilities old_kernel = *host_;
  old_kernel.readonly_recursive = false;
  old_kernel.self_exe = -1;  // and init stays a copy of this process instead of re-exec'ing
  const Output o = run("touch /etc/gh 2>&1; touch /bin/gh 2>&1; echo done", old_kernel,
                       [](SpawnSpec& s) { s.working_dir = "/bin"; });
  EXPECT_EQ(o.out,
            "touch: cannot touch '/etc/gh': Read-only file system\n"
            "touch: cannot touch '/bin/gh': Read-only file system\ndone\n");
  EXPECT_TRUE(WIFEXITED(o.status) && WEXITSTATUS(o.status) == 0) << o.status;
}

TEST_F(SpawnTest, ASetupFailureIsReportedWithItsStep) {
  const Output o = run("true", *host_, [](SpawnSpec& s) { s.working_dir = "/nonexistent-gh"; });
  EXPECT_EQ(o.out, "spawn failed: starting '/bin/sh' failed at chdir: No such file or directory");
}

}  // namespace
}  // namespace gatehouse::runtime::detail
