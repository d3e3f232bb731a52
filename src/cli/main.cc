// gatehouse: the command line. `serve` runs the gateway; `validate` checks a config file.
// Exceptions are allowed here (startup and CLI only); main turns them into a message and exit 1.

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <exception>
#include <string>

#include "config/config.h"
#include "gateway/gateway.h"

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
    auto* validate = app.add_subcommand("validate", "Check a configuration file and print every error");
    validate->add_option("file", validate_path, "Configuration file")->required();

    CLI11_PARSE(app, argc, argv);
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
