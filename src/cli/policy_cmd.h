#pragma once
// `gatehouse policy ...`: validate IAM policy documents and simulate decisions offline. Kept apart
// from main.cc, which only dispatches `gatehouse policy` here.

namespace gatehouse::cli {

// Runs `gatehouse policy <validate|simulate> ...`; argv[0] is "policy". Returns the exit code:
// simulate: 0 allow, 1 deny (explicit or implicit), 2 usage error or an unreadable or invalid
// policy file; validate: 0 every file valid, 1 some file invalid or unreadable, 2 usage error.
int run_policy_command(int argc, char** argv);

}  // namespace gatehouse::cli
