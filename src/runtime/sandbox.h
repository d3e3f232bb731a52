#pragma once
// Private to the runtime: starting a function process inside its limits, and killing its whole
// process tree. Linux only. detect() and spawn() block (file I/O, fork); call them off the
// runtime's I/O thread. kill_tree() and the cgroup readers are cheap syscalls.

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/core.h"

namespace gatehouse::runtime::detail {

// What the host lets us use, found once at start.
struct HostCapabilities {
  enum class Cgroups : std::uint8_t { kNone, kV1, kV2 };
  Cgroups cgroups = Cgroups::kNone;
  std::string memory_root;  // our own directory in the memory hierarchy (v2: the only one)
  std::string pids_root;    // our own directory in the pids hierarchy (v2: == memory_root)
  bool netns = false;       // unshare(CLONE_NEWNET) works
  bool root = false;        // running as uid 0
  std::vector<std::string> warnings;  // one line per missing capability, for the log
};

// Probes cgroups (v2 unified with memory and pids controllers, else v1 memory and pids
// hierarchies) by creating "gatehouse-<pid>" directories under our own cgroups, and network
// namespaces by unsharing in a short-lived child. Never fails; what is missing is in warnings.
[[nodiscard]] HostCapabilities detect_host();
// Removes the directories detect_host() created (they must be empty).
void cleanup_host(const HostCapabilities& host);

struct SpawnSpec {
  std::vector<std::string> argv;  // argv[0] absolute, or looked up in PATH
  std::vector<std::string> env;   // "NAME=value"
  std::string working_dir;        // "" = inherit
  std::string name;               // unique per process, names its cgroups ("fn-worker-12")
  bool runtime_api = false;  // create a loopback listener in the child's network namespace,
                             // hand it to the parent, and set AWS_LAMBDA_RUNTIME_API to it
  bool new_netns = false;    // unshare(CLONE_NEWNET), bring its loopback up
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
  std::vector<std::string> cgroup_dirs;  // to read OOM counts, kill and remove
};

// Forks and execs `spec` in a new process group, inside new cgroups (when the host has them)
// with memory.max / pids.max, rlimits (RLIMIT_CORE 0, RLIMIT_NOFILE 1024, RLIMIT_DATA and
// RLIMIT_NPROC as fallbacks when cgroups are missing), PR_SET_NO_NEW_PRIVS and
// PR_SET_PDEATHSIG(SIGKILL). Errors: kNotFound (the program), kIo (exec or a setup step failed,
// with errno text).
[[nodiscard]] core::Result<Spawned> spawn(const SpawnSpec& spec, const HostCapabilities& host);

// SIGKILLs the process group and every process still in the process's cgroups (so children that
// left the group die too). Returns without waiting.
void kill_tree(const Spawned& p);
// True if the kernel's OOM killer killed a process in these cgroups.
[[nodiscard]] bool oom_killed(const Spawned& p, const HostCapabilities& host);
// Kills what is left and removes the cgroup directories (after the process was reaped).
void release(Spawned& p);

}  // namespace gatehouse::runtime::detail
