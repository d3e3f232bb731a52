// The function sandbox's seccomp filter (docs/runtime.md, "The sandbox"). Built once in the
// gateway with libseccomp, which allocates; the child only installs the finished BPF program.
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "runtime/sandbox.h"

namespace gatehouse::runtime::detail {
namespace {

// Refused with EPERM: the kernel's administrative surface (modules, kexec, reboot, swap, clocks,
// quotas, accounting), mounts and namespaces (a function must not rebuild its own view of the
// system or join another's), tracing and reading other processes (ptrace, process_vm_*,
// pidfd_getfd, kcmp), and the interfaces behind most kernel exploits of recent years (bpf,
// perf_event_open, userfaultfd, io_uring, keyrings, open_by_handle_at). Names the running
// architecture does not have are skipped.
// (grouped by purpose, so not left to clang-format)
// clang-format off
constexpr const char* kRefused[] = {
    // tracing and other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "process_madvise",
    // mounts and namespaces
    "mount", "umount", "umount2", "pivot_root", "chroot", "unshare", "setns", "fsopen",
    "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    // the kernel itself
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "create_module", "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl", "quotactl_fd",
    "lookup_dcookie", "nfsservctl", "uselib", "iopl", "ioperm", "vhangup", "settimeofday",
    "clock_settime", "clock_adjtime", "sethostname", "setdomainname",
    // attack surface
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "open_by_handle_at", "name_to_handle_at", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "fanotify_init",
};
// clang-format on

// clone() with any of these is refused: a new namespace (a user namespace above all) would
// give the function capabilities over its own copy of the system.
constexpr std::uint64_t kNamespaceFlags[] = {CLONE_NEWNS,    CLONE_NEWUTS, CLONE_NEWIPC,
                                             CLONE_NEWUSER,  CLONE_NEWPID, CLONE_NEWNET,
                                             CLONE_NEWCGROUP};

struct CtxDeleter {
  void operator()(void* ctx) const { seccomp_release(ctx); }
};

tl::unexpected<core::Error> build_error(const std::string& what, int rc) {
  return core::make_error(core::ErrorCode::kInternal,
                          "seccomp: " + what + ": " + std::strerror(rc < 0 ? -rc : rc));
}

}  // namespace

core::Result<SeccompProgram> build_seccomp(config::NetworkMode network) {
  std::unique_ptr<void, CtxDeleter> ctx(seccomp_init(SCMP_ACT_ALLOW));
  if (!ctx) {
    return build_error("seccomp_init", ENOMEM);
  }
  // A syscall made through another ABI (int 0x80 on x86_64) would bypass a filter written for
  // the native one: such a process is killed instead.
  if (int rc = seccomp_attr_set(ctx.get(), SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
      rc != 0) {
    return build_error("bad-arch action", rc);
  }
  // A binary tree instead of a linear list: every syscall the function makes runs the filter.
  (void)seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_OPTIMIZE, 2);
  auto refuse = [&](const char* name, std::uint32_t action, unsigned n,
                    const scmp_arg_cmp* args) -> int {
    const int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) {
      return 0;  // not a syscall of this architecture
    }
    return seccomp_rule_add_array(ctx.get(), action, nr, n, args);
  };
  for (const char* name : kRefused) {
    if (int rc = refuse(name, SCMP_ACT_ERRNO(EPERM), 0, nullptr); rc != 0) {
      return build_error(std::string("rule for ") + name, rc);
    }
  }
  if (network == config::NetworkMode::kNone) {
    if (int rc = refuse("listen", SCMP_ACT_ERRNO(EPERM), 0, nullptr); rc != 0) {
      return build_error("rule for listen", rc);
    }
  }
  if (network != config::NetworkMode::kHost) {
    // A network namespace hides the host's TCP/IP and abstract sockets, not its socket files
    // (dbus, docker, databases under /run) nor vsock to the hypervisor.
    for (std::uint64_t family : {AF_UNIX, AF_VSOCK}) {
      const scmp_arg_cmp cmp{0, SCMP_CMP_EQ, family, 0};
      if (int rc = refuse("socket", SCMP_ACT_ERRNO(EPERM), 1, &cmp); rc != 0) {
        return build_error("rule for socket", rc);
      }
    }
  }
  // clone's flags are its first argument on x86_64 and aarch64 (not on s390).
  for (std::uint64_t flag : kNamespaceFlags) {
    const scmp_arg_cmp cmp{0, SCMP_CMP_MASKED_EQ, flag, flag};
    if (int rc = refuse("clone", SCMP_ACT_ERRNO(EPERM), 1, &cmp); rc != 0) {
      return build_error("rule for clone", rc);
    }
  }
  // clone3 passes its flags in memory, out of the filter's reach: ENOSYS makes glibc (2.34+,
  // pthread_create and fork) fall back to clone, whose flags are checked above.
  if (int rc = refuse("clone3", SCMP_ACT_ERRNO(ENOSYS), 0, nullptr); rc != 0) {
    return build_error("rule for clone3", rc);
  }

  const int fd = ::memfd_create("gatehouse-seccomp", MFD_CLOEXEC);
  if (fd < 0) {
    return build_error("memfd_create", errno);
  }
  SeccompProgram out;
  int rc = seccomp_export_bpf(ctx.get(), fd);
  if (rc == 0) {
    const off_t size = ::lseek(fd, 0, SEEK_END);
    if (size <= 0 || size % static_cast<off_t>(sizeof(sock_filter)) != 0 ||
        size / static_cast<off_t>(sizeof(sock_filter)) > BPF_MAXINSNS) {
      rc = -EINVAL;
    } else {
      out.insns.resize(static_cast<std::size_t>(size) / sizeof(sock_filter));
      if (::pread(fd, out.insns.data(), static_cast<std::size_t>(size), 0) != size) {
        rc = -EIO;
      }
    }
  }
  ::close(fd);
  if (rc != 0) {
    return build_error("export", rc);
  }
  return out;
}

int install_seccomp(const SeccompProgram& p) {
  sock_fprog prog{};
  prog.len = static_cast<unsigned short>(p.insns.size());
  prog.filter = const_cast<sock_filter*>(p.insns.data());
  if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
    return errno;
  }
  return 0;
}

}  // namespace gatehouse::runtime::detail
