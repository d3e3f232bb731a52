#pragma once
// Private to the runtime: starting a function process inside its limits and its sandbox
// (docs/runtime.md, "The sandbox"), and killing its whole process tree. Linux only.
// detect_host() and spawn() block (file I/O, clone, waiting for the child's exec); call them off
// the runtime's I/O thread. reap() blocks until the process has exited (call it once its pidfd
// is readable). kill_tree() and the cgroup readers are cheap syscalls.

#include <linux/filter.h>
#include <sys/types.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "config/config.h"
#include "core/core.h"

namespace gatehouse::runtime::detail {

// A seccomp BPF program, built once with libseccomp (copied into each child before exec).
struct SeccompProgram {
  std::vector<sock_filter> insns;  // empty: no filter could be built
};

// What the host lets us use, found once at start. Each sandbox layer the host cannot provide is
// skipped by spawn() and named in the one warning.
struct HostCapabilities {
  enum class Cgroups : std::uint8_t { kNone, kV1, kV2 };
  Cgroups cgroups = Cgroups::kNone;
  std::string memory_root;  // our own directory in the memory hierarchy (v2: the only one)
  std::string pids_root;    // our own directory in the pids hierarchy (v2: == memory_root)
  bool netns = false;       // a new network namespace (CLONE_NEWNET)
  bool pidns = false;       // a new pid namespace, with a fresh /proc mounted in it
  bool mountns = false;     // a new mount namespace with a private tmpfs /tmp and /dev/shm
  bool ipcns = false;       // a new System V IPC / POSIX message queue namespace
  bool utsns = false;       // a new hostname
  bool readonly_recursive = false;  // mount_setattr(AT_RECURSIVE) makes every mount read-only
                                    // (Linux 5.12); without it only / and the function
                                    // directory are remounted read-only
  bool root = false;        // running as uid 0
  // The seccomp filters (docs/runtime.md lists what they refuse), one per sandbox.network
  // mode, indexed by config::NetworkMode; all empty when the host cannot install them.
  std::array<SeccompProgram, 3> seccomp;
  int self_exe = -1;  // O_PATH descriptor of our own binary, exec'd as the pid namespace's
                      // init; owned by the value detect_host() returned (cleanup_host closes
                      // it), copies only borrow it
  // At most one line naming every missing layer and what that means, for the log.
  std::vector<std::string> warnings;
};

// Probes cgroups (v2 unified with memory and pids controllers, else v1 memory and pids
// hierarchies) by creating "gatehouse-<pid>" directories under our own cgroups; namespaces,
// mounts and seccomp by trying them in short-lived children; builds the seccomp filters. Never
// fails; what is missing is in warnings (one line).
[[nodiscard]] HostCapabilities detect_host();
// Removes the directories detect_host() created (they must be empty) and closes self_exe.
void cleanup_host(HostCapabilities& host);

// Builds the seccomp filter for a function with sandbox.network `network`: every syscall
// allowed except the ones that reach the kernel's administrative or cross-process surface,
// which fail with EPERM (clone3 fails with ENOSYS so that libc falls back to clone, whose
// namespace flags are refused). none and loopback also refuse socket(AF_UNIX) and
// socket(AF_VSOCK) (the host's filesystem sockets and the hypervisor are outside any network
// namespace; socketpair stays), none also listen(). Errors: kInternal when libseccomp cannot
// build it.
[[nodiscard]] core::Result<SeccompProgram> build_seccomp(config::NetworkMode network);
// Installs `p` on the calling thread (needs no_new_privs or CAP_SYS_ADMIN). Async-signal-safe.
// Returns 0 or an errno value.
int install_seccomp(const SeccompProgram& p);

struct SpawnSpec {
  std::vector<std::string> argv;  // argv[0] absolute, or looked up in PATH
  std::vector<std::string> env;   // "NAME=value"
  std::string working_dir;        // "" = inherit
  std::string name;               // unique per process, names its cgroups ("fn-worker-12")
  bool runtime_api = false;  // create a loopback listener in the child's network namespace,
                             // hand it to the parent, and set AWS_LAMBDA_RUNTIME_API to it
  // The function's sandbox.network: none and loopback get a new network namespace (none:
  // listen() refused, loopback up only for the runtime API), host the host's network.
  config::NetworkMode network = config::NetworkMode::kNone;
  std::uint64_t tmp_bytes = 64ULL << 20;  // size of the private /tmp and /dev/shm (tmpfs)
  std::string hostname;                   // in its own UTS namespace; "" = "function"
  bool stdin_pipe = false;   // a pipe to the child's stdin (else /dev/null)
  std::uint64_t memory_bytes = 0;  // 0 = unlimited
  std::uint32_t max_pids = 0;      // 0 = unlimited
  bool drop_privileges = false;    // setgroups({}), setgid, setuid to uid/gid
  uid_t uid = 65534;
  gid_t gid = 65534;
};

// A started process. The caller owns the descriptors (close them) and must reap `pid`.
struct Spawned {
  pid_t pid = -1;
  int pidfd = -1;         // readable once the process has exited
  int api_listener = -1;  // runtime_api: the listening socket (in the child's netns)
  std::uint16_t api_port = 0;
  int stdin_fd = -1;  // stdin_pipe: write end
  int stdout_fd = -1;
  int stderr_fd = -1;
  int status_fd = -1;  // with a pid namespace: where its init reports the function's wait
                       // status (read by reap())
  std::vector<std::string> cgroup_dirs;  // to read OOM counts, kill and remove
};

// Starts `spec` in a new process group, inside new cgroups (when the host has them) with
// memory.max / pids.max, and in the sandbox: new pid, mount, IPC, UTS and (network none or
// loopback) network namespaces; every mount read-only; a private tmpfs /tmp and /dev/shm of
// spec.tmp_bytes each; a fresh /proc showing only its own processes; rlimits (RLIMIT_CORE 0,
// RLIMIT_NOFILE 1024, RLIMIT_DATA and RLIMIT_NPROC as fallbacks when cgroups are missing);
// PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG(SIGKILL), the seccomp filter, then execve. Layers the
// host lacks (HostCapabilities) are skipped. With a pid namespace the returned pid is the
// namespace's init (pid 1 inside, our own binary re-exec'd as "gatehouse-init"), whose only
// job is to reap and to report the function's wait status; killing it kills the namespace.
// Errors: kNotFound (the program), kIo (exec or a setup step failed, with errno text).
[[nodiscard]] core::Result<Spawned> spawn(const SpawnSpec& spec, const HostCapabilities& host);

// SIGKILLs the process group and every process still in the process's cgroups (so children that
// left the group die too). Returns without waiting.
void kill_tree(const Spawned& p);
// Reaps the process spawn() returned (blocking until it has exited) and returns the function's
// wait status: with a pid namespace the one its init reported (exit code or signal of the
// function itself), else waitpid's. Closes status_fd.
[[nodiscard]] int reap(Spawned& p);
// True if the kernel's OOM killer killed a process in these cgroups.
[[nodiscard]] bool oom_killed(const Spawned& p, const HostCapabilities& host);
// Kills what is left and removes the cgroup directories (after the process was reaped).
void release(Spawned& p);

}  // namespace gatehouse::runtime::detail
