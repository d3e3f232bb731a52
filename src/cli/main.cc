// gatehouse: the command line. `serve` runs the gateway; `validate` checks a config file.
// Exceptions are allowed here (startup and CLI only); main turns them into a message and exit 1.

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <exception>
#include <future>
#include <string>

#include "auth/auth.h"
#include "cli/policy_cmd.h"
#include "config/config.h"
#include "gateway/gateway.h"
#include "identity/identity.h"
#include "runtime/runtime.h"
#include "store/store.h"

namespace {

using gatehouse::config::ConfigError;

void print_errors(const std::vector<ConfigError>& errors) {
  for (const auto& e : errors) {
    std::fprintf(stderr, "%s\n", e.to_string().c_str());
  }
}

int cmd_validate(const std::string& path) {
  auto loaded = gatehouse::config::load_file(path);
  if (!loaded) {
    print_errors(loaded.error());
    std::fprintf(stderr, "%s: %zu error(s)\n", path.c_str(), loaded.error().size());
    return 1;
  }
  std::printf("%s: OK (%zu routes, %zu upstreams, %zu stages)\n", path.c_str(),
              loaded->routes.size(), loaded->upstreams.size(), loaded->stages.size());
  return 0;
}

int cmd_serve(const std::string& path) {
  auto loaded = gatehouse::config::load_file(path);
  if (!loaded) {
    print_errors(loaded.error());
    return 1;
  }
  auto gw = gatehouse::gateway::Gateway::create(std::move(*loaded));
  if (!gw) {
    std::fprintf(stderr, "gatehouse: %s\n", gw.error().message.c_str());
    return 1;
  }
  if (auto r = (*gw)->start(); !r) {
    std::fprintf(stderr, "gatehouse: %s\n", r.error().message.c_str());
    return 1;
  }
  (*gw)->run_until_signal();
  return 0;
}

// Opens the store named by the config file's store.state (the keys live there).
std::unique_ptr<gatehouse::store::Store> open_store(const std::string& config_path,
                                                    gatehouse::config::Config& config) {
  auto loaded = gatehouse::config::load_file(config_path);
  if (!loaded) {
    print_errors(loaded.error());
    return nullptr;
  }
  config = std::move(*loaded);
  auto st = gatehouse::store::open(config.store.state, gatehouse::core::system_clock());
  if (!st) {
    std::fprintf(stderr, "gatehouse: %s\n", st.error().message.c_str());
    return nullptr;
  }
  return std::move(*st);
}

void print_key(const gatehouse::auth::ApiKey& k) {
  std::string stages;
  for (const auto& s : k.stages) {
    stages += (stages.empty() ? "" : ",") + s;
  }
  std::printf("%s\t%s\t%s\t%s\t%s\n", k.id.c_str(), k.name.c_str(), k.plan.c_str(),
              stages.empty() ? "*" : stages.c_str(), k.revoked ? "revoked" : "active");
}

int key_error(const gatehouse::core::Error& e) {
  std::fprintf(stderr, "gatehouse keys: %s\n", e.message.c_str());
  return e.code == gatehouse::core::ErrorCode::kNotFound ? 3 : 1;
}

struct KeyArgs {
  std::string config = "gatehouse.yaml";
  std::string name;
  std::string plan;
  std::vector<std::string> stages;
  std::string ref;
};

int cmd_keys(const std::string& action, const KeyArgs& a) {
  gatehouse::config::Config config;
  auto store = open_store(a.config, config);
  if (!store) {
    return 1;
  }
  if ((action == "create" || action == "attach") && config.find_plan(a.plan) == nullptr) {
    std::fprintf(stderr, "gatehouse keys: %s defines no plan '%s'\n", a.config.c_str(),
                 a.plan.c_str());
    return 1;
  }
  for (const auto& stage : a.stages) {
    bool known = false;
    for (const auto& s : config.stages) {
      known = known || s.name == stage;
    }
    if (!known) {
      std::fprintf(stderr, "gatehouse keys: %s defines no stage '%s'\n", a.config.c_str(),
                   stage.c_str());
      return 1;
    }
  }
  gatehouse::auth::KeyRegistry keys(*store, gatehouse::core::system_clock());
  if (action == "create" || action == "rotate") {
    auto created = action == "create" ? keys.create(a.name, a.plan, a.stages) : keys.rotate(a.ref);
    if (!created) {
      return key_error(created.error());
    }
    // The key is printed once, on stdout alone, so scripts can capture it; it is not stored.
    std::printf("%s\n", created->key.c_str());
    std::fprintf(stderr, "key %s (%s) on plan %s: store it now, it cannot be shown again\n",
                 created->record.id.c_str(), created->record.name.c_str(),
                 created->record.plan.c_str());
    return 0;
  }
  if (action == "list") {
    auto all = keys.list();
    if (!all) {
      return key_error(all.error());
    }
    std::printf("id\tname\tplan\tstages\tstatus\n");
    for (const auto& k : *all) {
      print_key(k);
    }
    return 0;
  }
  auto r = action == "revoke" ? keys.revoke(a.ref) : keys.attach(a.ref, a.plan, a.stages);
  if (!r) {
    return key_error(r.error());
  }
  print_key(*r);
  return 0;
}

struct CredentialArgs {
  std::string config = "gatehouse.yaml";
  std::string role;
  std::string id;
};

void print_access_key(const gatehouse::auth::AccessKey& k) {
  std::printf("%s\t%s\t%s\n", k.id.c_str(), k.principal.c_str(), k.revoked ? "revoked" : "active");
}

// `gatehouse credentials create|list|revoke`: SigV4 access keys. The KEK is created (0600) by
// the first `create`; list and revoke never decrypt a secret.
int cmd_credentials(const std::string& action, const CredentialArgs& a) {
  gatehouse::config::Config config;
  auto store = open_store(a.config, config);
  if (!store) {
    return 1;
  }
  if (action == "create" && config.find_role(a.role) == nullptr) {
    std::fprintf(stderr, "gatehouse credentials: %s defines no role '%s' (add it to roles)\n",
                 a.config.c_str(), a.role.c_str());
    return 1;
  }
  const std::string kek_path =
      gatehouse::auth::kek_path(config.credentials.kek_file, config.store.state);
  auto kek = gatehouse::auth::load_kek(kek_path, action == "create");
  // Listing and revoking never decrypt a secret: they work without the KEK file.
  if (!kek && !(action != "create" && kek.error().code == gatehouse::core::ErrorCode::kNotFound)) {
    std::fprintf(stderr, "gatehouse credentials: %s\n", kek.error().message.c_str());
    return 1;
  }
  gatehouse::auth::CredentialRegistry reg(*store, gatehouse::core::system_clock(),
                                          kek ? *kek : std::array<unsigned char, 32>{},
                                          config.account_id);
  auto fail = [](const gatehouse::core::Error& e) {
    std::fprintf(stderr, "gatehouse credentials: %s\n", e.message.c_str());
    return e.code == gatehouse::core::ErrorCode::kNotFound ? 3 : 1;
  };
  if (action == "create") {
    auto created = reg.create(a.role);
    if (!created) {
      return fail(created.error());
    }
    // Printed once, on stdout alone ("<access key id> <secret>"), so scripts can capture it.
    std::printf("%s %s\n", created->record.id.c_str(), created->secret.c_str());
    std::fprintf(stderr, "access key %s for %s: store the secret now, it cannot be shown again\n",
                 created->record.id.c_str(), created->record.principal.c_str());
    return 0;
  }
  if (action == "list") {
    auto all = reg.list();
    if (!all) {
      return fail(all.error());
    }
    std::printf("access_key_id\tprincipal\tstatus\n");
    for (const auto& k : *all) {
      print_access_key(k);
    }
    return 0;
  }
  auto r = reg.revoke(a.id);
  if (!r) {
    return fail(r.error());
  }
  print_access_key(*r);
  return 0;
}

struct UserArgs {
  std::string config = "gatehouse.yaml";
  std::string pool;
  std::string user;
};

// `gatehouse users ...`: user pool administration against the store (a running server sees
// key rotations within a second, and user changes at once: it reads users from the store).
int cmd_users(const std::string& action, const UserArgs& a) {
  gatehouse::config::Config config;
  auto store = open_store(a.config, config);
  if (!store) {
    return 1;
  }
  if (config.find_user_pool(a.pool) == nullptr) {
    std::fprintf(stderr, "gatehouse users: %s defines no user pool '%s'\n", a.config.c_str(),
                 a.pool.c_str());
    return 1;
  }
  gatehouse::identity::UserPools pools(config, *store, gatehouse::core::system_clock());
  const auto fail = [](const gatehouse::identity::IdpError& e) {
    std::fprintf(stderr, "gatehouse users: %s\n", e.message.c_str());
    return e.status == 404 ? 3 : 1;
  };
  const auto print_user = [](const gatehouse::identity::UserRecord& u) {
    std::printf("%s\t%s\t%s\n", u.username.c_str(), u.sub.c_str(),
                u.confirmed ? "confirmed" : "unconfirmed");
  };
  if (action == "list") {
    auto users = pools.list_users(a.pool);
    if (!users) {
      return fail(users.error());
    }
    std::printf("username\tsub\tstatus\n");
    for (const auto& u : *users) {
      print_user(u);
    }
    return 0;
  }
  if (action == "confirm" || action == "signout") {
    auto u = action == "confirm" ? pools.admin_confirm(a.pool, a.user)
                                 : pools.admin_sign_out(a.pool, a.user);
    if (!u) {
      return fail(u.error());
    }
    print_user(*u);
    return 0;
  }
  if (action == "rotate-key") {
    auto k = pools.rotate_key(a.pool);
    if (!k) {
      return fail(k.error());
    }
    std::printf("%s\t%s\tactive\n", k->kid.c_str(),
                std::string(gatehouse::identity::alg_name(k->alg)).c_str());
    return 0;
  }
  auto keys = pools.list_keys(a.pool);
  if (!keys) {
    return fail(keys.error());
  }
  std::printf("kid\talg\tstatus\n");
  for (const auto& k : *keys) {
    std::printf("%s\t%s\t%s\n", k.kid.c_str(),
                std::string(gatehouse::identity::alg_name(k.alg)).c_str(),
                k.retired_ms == 0 ? "active" : "retired");
  }
  return 0;
}

// An invocation from the CLI: the operator acts as the admin principal, under admin.policies
// like the admin API.
gatehouse::runtime::Invocation cli_invocation(const gatehouse::config::Config& config,
                                              const std::string& function,
                                              const std::string& payload, unsigned depth) {
  gatehouse::runtime::Invocation inv;
  inv.function = function;
  inv.payload = payload;
  inv.caller = gatehouse::runtime::admin_caller(config);
  inv.caller.request_id = "cli";
  inv.caller.depth = depth;
  return inv;
}

void print_accepted(const gatehouse::runtime::AcceptedEvent& e) {
  std::printf("{\"event_id\":\"%s\",\"message_id\":%lld}\n", e.event_id.c_str(),
              static_cast<long long>(e.message_id));
}

// Runs one invocation locally, with the same runtime and sandbox as `serve` (no server needed).
// The result goes to stdout; a failure's error document to stdout too, its summary to stderr.
int cmd_invoke(const std::string& config_path, const std::string& function,
               const std::string& payload, unsigned depth) {
  auto loaded = gatehouse::config::load_file(config_path);
  if (!loaded) {
    print_errors(loaded.error());
    return 1;
  }
  auto rt = gatehouse::runtime::Runtime::create(*loaded);
  if (!rt) {
    std::fprintf(stderr, "gatehouse invoke: %s\n", rt.error().message.c_str());
    return 1;
  }
  gatehouse::runtime::Invocation inv = cli_invocation(*loaded, function, payload, depth);
  std::promise<gatehouse::runtime::InvokeResult> done;
  auto result = done.get_future();
  (*rt)->invoke(std::move(inv),
                [&done](gatehouse::runtime::InvokeResult r) { done.set_value(std::move(r)); });
  const gatehouse::runtime::InvokeResult r = result.get();
  (*rt)->stop();
  std::printf("%s\n", r.payload.c_str());
  if (!r.ok) {
    std::fprintf(stderr, "gatehouse invoke: %s (%d %s): %s\n", r.error_type.c_str(),
                 gatehouse::core::http_status(r.code),
                 std::string(gatehouse::core::error_name(r.code)).c_str(), r.message.c_str());
    return 4;
  }
  return 0;
}

// Queues one asynchronous invocation straight into the store named by the config (no server
// needed; a running server's dispatcher picks it up within a second). Prints the event id.
int cmd_invoke_async(const std::string& config_path, const std::string& function,
                     const std::string& payload, unsigned depth) {
  gatehouse::config::Config config;
  auto store = open_store(config_path, config);
  if (!store) {
    return 1;
  }
  gatehouse::runtime::Invocation inv = cli_invocation(config, function, payload, depth);
  auto r = gatehouse::runtime::enqueue_event(*store, config, inv);
  if (!r) {
    std::fprintf(stderr, "gatehouse invoke: %s (%d %s)\n", r.error().message.c_str(),
                 gatehouse::core::http_status(r.error().code),
                 std::string(gatehouse::core::error_name(r.error().code)).c_str());
    return 4;
  }
  print_accepted(*r);
  return 0;
}

// gatehouse dead-letters list NAME | replay NAME ID, on the store named by the config.
int cmd_dead_letters(const std::string& action, const std::string& config_path,
                     const std::string& function, const std::string& event_id) {
  gatehouse::config::Config config;
  auto store = open_store(config_path, config);
  if (!store) {
    return 1;
  }
  if (action == "list") {
    auto list = gatehouse::runtime::list_dead_letters(*store, function, 100000);
    if (!list) {
      std::fprintf(stderr, "gatehouse dead-letters: %s\n", list.error().message.c_str());
      return 1;
    }
    for (const auto& d : *list) {
      std::printf("%s\n", gatehouse::runtime::dead_letter_json(d).c_str());
    }
    std::fprintf(stderr, "%zu dead letter(s) for %s\n", list->size(), function.c_str());
    return 0;
  }
  auto r = gatehouse::runtime::replay_dead_letter(*store, config, function, event_id);
  if (!r) {
    std::fprintf(stderr, "gatehouse dead-letters: %s\n", r.error().message.c_str());
    return r.error().code == gatehouse::core::ErrorCode::kNotFound ? 3 : 1;
  }
  print_accepted(*r);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    // A peer closing mid-write must be an error code, not a process kill.
    std::signal(SIGPIPE, SIG_IGN);
    // Operational logs go to stderr; stdout carries the access log when configured so.
    spdlog::set_default_logger(spdlog::stderr_color_mt("gatehouse"));

    CLI::App app{"Gatehouse: a hardened self-hosted serverless gateway"};
    app.require_subcommand(1);
    std::string config_path = "gatehouse.yaml";

    auto* serve = app.add_subcommand("serve", "Run the gateway");
    serve->add_option("-c,--config", config_path, "Configuration file")->capture_default_str();

    std::string validate_path;
    auto* validate =
        app.add_subcommand("validate", "Check a configuration file and print every error");
    validate->add_option("file", validate_path, "Configuration file")->required();

    KeyArgs key_args;
    std::string key_action;
    auto* keys = app.add_subcommand("keys", "Manage API keys (stored hashed in the store)");
    keys->require_subcommand(1);
    auto add_config = [&](CLI::App* c) {
      c->add_option("-c,--config", key_args.config, "Configuration file (for store.state)")
          ->capture_default_str();
    };
    auto* kc = keys->add_subcommand("create", "Create a key; prints it once");
    add_config(kc);
    kc->add_option("--name", key_args.name, "Label")->required();
    kc->add_option("--plan", key_args.plan, "Usage plan")->required();
    kc->add_option("--stage", key_args.stages, "Stage the key may call (repeat; default all)");
    auto* kl = keys->add_subcommand("list", "List keys (never their secrets)");
    add_config(kl);
    auto* kr = keys->add_subcommand("revoke", "Revoke a key");
    add_config(kr);
    kr->add_option("key", key_args.ref, "Key id or name")->required();
    auto* ko = keys->add_subcommand("rotate", "Give a key a new secret; prints it once");
    add_config(ko);
    ko->add_option("key", key_args.ref, "Key id or name")->required();
    auto* ka = keys->add_subcommand("attach", "Attach a key to a plan for some stages");
    add_config(ka);
    ka->add_option("key", key_args.ref, "Key id or name")->required();
    ka->add_option("--plan", key_args.plan, "Usage plan")->required();
    ka->add_option("--stage", key_args.stages, "Stage (repeat; default all)");
    for (auto* c : {kc, kl, kr, ko, ka}) {
      c->callback([&key_action, c] { key_action = c->get_name(); });
    }

    CredentialArgs cred_args;
    std::string cred_action;
    auto* creds = app.add_subcommand(
        "credentials", "Manage SigV4 access keys (secrets stored encrypted under a KEK file)");
    creds->require_subcommand(1);
    auto* cc = creds->add_subcommand("create", "Issue an access key to a role; prints it once");
    cc->add_option("--role", cred_args.role,
                   "Role name (principal arn:gatehouse:iam::ACCOUNT:role/NAME)")
        ->required();
    auto* cl = creds->add_subcommand("list", "List access keys (never their secrets)");
    auto* cr = creds->add_subcommand("revoke", "Revoke an access key");
    cr->add_option("access_key_id", cred_args.id, "Access key id")->required();
    for (auto* c : {cc, cl, cr}) {
      c->add_option("-c,--config", cred_args.config, "Configuration file")->capture_default_str();
      c->callback([&cred_action, c] { cred_action = c->get_name(); });
    }

    UserArgs user_args;
    std::string user_action;
    auto* users = app.add_subcommand("users", "Administer user pools (users and signing keys)");
    users->require_subcommand(1);
    auto add_pool = [&](CLI::App* c) {
      c->add_option("-c,--config", user_args.config, "Configuration file (for store.state)")
          ->capture_default_str();
      c->add_option("--pool", user_args.pool, "User pool")->required();
    };
    auto* ul = users->add_subcommand("list", "List a pool's users");
    auto* uc = users->add_subcommand("confirm", "Confirm a user (pools with confirmation: admin)");
    uc->add_option("user", user_args.user, "Username")->required();
    auto* us =
        users->add_subcommand("signout", "Sign a user out everywhere (revokes refresh tokens)");
    us->add_option("user", user_args.user, "Username")->required();
    auto* uk = users->add_subcommand("keys", "List a pool's signing keys");
    auto* ur = users->add_subcommand(
        "rotate-key",
        "Make a new signing key active; old ones stay published until their tokens expire");
    for (auto* c : {ul, uc, us, uk, ur}) {
      add_pool(c);
      c->callback([&user_action, c] { user_action = c->get_name(); });
    }

    // `gatehouse policy ...` has its own parser and exit codes (src/cli/policy_cmd.cc); this
    // entry only lists it in --help.
    app.add_subcommand("policy", "Validate IAM policies and simulate decisions")->allow_extras();
    if (argc > 1 && std::string_view(argv[1]) == "policy") {
      return gatehouse::cli::run_policy_command(argc - 1, argv + 1);
    }
    std::string invoke_config = "gatehouse.yaml";
    std::string invoke_function;
    std::string invoke_payload = "{}";
    unsigned invoke_depth = 1;
    auto* invoke = app.add_subcommand(
        "invoke", "Invoke a function once, locally (same runtime and sandbox as serve)");
    invoke->add_option("-c,--config", invoke_config, "Configuration file")->capture_default_str();
    invoke->add_option("function", invoke_function, "Function name")->required();
    invoke->add_option("--payload", invoke_payload, "Event JSON")->capture_default_str();
    invoke->add_option("--lineage-depth", invoke_depth, "Lineage depth of this call")
        ->capture_default_str();
    bool invoke_async = false;
    invoke->add_flag(
        "--async", invoke_async,
        "Queue the event in the store (store.state) for a server to run; print its id");

    std::string dl_config = "gatehouse.yaml";
    std::string dl_function;
    std::string dl_id;
    std::string dl_action;
    auto* dead = app.add_subcommand("dead-letters",
                                    "List or replay a function's failed asynchronous events");
    dead->require_subcommand(1);
    auto* dl_list = dead->add_subcommand("list", "Print each dead letter as one JSON line");
    auto* dl_replay = dead->add_subcommand("replay", "Queue a dead letter again");
    for (auto* c : {dl_list, dl_replay}) {
      c->add_option("-c,--config", dl_config, "Configuration file (for store.state)")
          ->capture_default_str();
      c->add_option("function", dl_function, "Function name")->required();
      c->callback([&dl_action, c] { dl_action = c->get_name(); });
    }
    dl_replay->add_option("id", dl_id, "Event id")->required();

    CLI11_PARSE(app, argc, argv);
    if (*invoke && invoke_async) {
      return cmd_invoke_async(invoke_config, invoke_function, invoke_payload, invoke_depth);
    }
    if (*dead) {
      return cmd_dead_letters(dl_action, dl_config, dl_function, dl_id);
    }
    if (*invoke) {
      return cmd_invoke(invoke_config, invoke_function, invoke_payload, invoke_depth);
    }
    if (*keys) {
      return cmd_keys(key_action, key_args);
    }
    if (*creds) {
      return cmd_credentials(cred_action, cred_args);
    }
    if (*users) {
      return cmd_users(user_action, user_args);
    }
    if (*serve) {
      return cmd_serve(config_path);
    }
    if (*validate) {
      return cmd_validate(validate_path);
    }
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gatehouse: %s\n", e.what());
    return 1;
  }
}
