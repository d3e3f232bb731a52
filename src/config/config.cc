#include "config/config.h"

#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <exception>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <system_error>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "config/schema.h"
#include "config/value.h"

namespace gatehouse::config {
namespace {

using detail::Decoded;
using detail::Position;
using detail::printable;

// A config is a few KiB; the cap keeps a hostile reload from parking a huge document in memory.
constexpr std::size_t kMaxDocumentBytes = std::size_t{16} * 1024 * 1024;

LoadResult one_error(const std::string& file, int line, int column, std::string message) {
  return tl::unexpected(
      std::vector<ConfigError>{ConfigError{file, line, column, std::move(message)}});
}

std::string at_line(Position pos) {
  return pos.line > 0 ? " (first at line " + std::to_string(pos.line) + ")" : std::string();
}

std::string suggestion(std::string_view word, const std::vector<std::string_view>& candidates) {
  const std::string_view guess = detail::closest(word, candidates);
  return guess.empty() ? std::string() : " (did you mean '" + std::string(guess) + "'?)";
}

// Names must be unique within a list; returns name -> index of its first definition. Empty names
// (missing or invalid, already reported) are skipped.
template <class T>
std::unordered_map<std::string_view, std::size_t> index_names(Decoded& d,
                                                              const std::vector<T>& items,
                                                              std::string_view list,
                                                              std::string_view what) {
  std::unordered_map<std::string_view, std::size_t> index;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const std::string& name = items[i].name;
    if (name.empty()) {
      continue;
    }
    const auto [it, inserted] = index.emplace(name, i);
    if (!inserted) {
      const std::string path = std::string(list) + "[" + std::to_string(i) + "].name";
      const std::string first = std::string(list) + "[" + std::to_string(it->second) + "].name";
      d.diagnostics.add(
          d.position(path), path,
          "duplicate " + std::string(what) + " '" + name + "'" + at_line(d.position(first)));
    }
  }
  return index;
}

template <class T>
std::vector<std::string_view> names_of(const std::vector<T>& items) {
  std::vector<std::string_view> names;
  names.reserve(items.size());
  for (const T& item : items) {
    names.push_back(item.name);
  }
  return names;
}

// The path of item `j` of the string list at `list` ("routes[0].stages[1]"), or of the list
// itself when it was written as a single string ("stages: prod").
std::string item_path(const Decoded& d, const std::string& list, std::size_t j) {
  std::string path = list + "[" + std::to_string(j) + "]";
  return d.positions.contains(path) ? path : list;
}

// Every name in a list of stages (routes[i].stages, plans[i].stages) must be defined.
void check_stage_list(Decoded& d, const std::string& list, const std::vector<std::string>& names,
                      const std::unordered_map<std::string_view, std::size_t>& stages,
                      const std::vector<std::string_view>& stage_names) {
  for (std::size_t j = 0; j < names.size(); ++j) {
    const std::string& stage = names[j];
    if (stage.empty() || stages.contains(stage)) {
      continue;  // empty: a placeholder for an invalid item, already reported
    }
    const std::string path = item_path(d, list, j);
    d.diagnostics.add(d.position(path), path,
                      "unknown stage '" + printable(stage) + "'" +
                          (stage_names.empty() ? std::string(" (no stages are defined)")
                                               : suggestion(stage, stage_names)));
  }
}

// Usage plans name stages and routes; an override must name a route the plan may call, once.
void check_plans(Decoded& d, const std::unordered_map<std::string_view, std::size_t>& stages,
                 const std::vector<std::string_view>& stage_names) {
  const Config& c = d.config;
  // Route names are final here (defaults filled in by check_references).
  std::unordered_map<std::string_view, std::size_t> routes;
  std::vector<std::string_view> route_names;
  for (std::size_t i = 0; i < c.routes.size(); ++i) {
    if (!c.routes[i].name.empty() && routes.emplace(c.routes[i].name, i).second) {
      route_names.push_back(c.routes[i].name);
    }
  }
  const auto unknown_route = [&](const std::string& path, const std::string& name) {
    d.diagnostics.add(d.position(path), path,
                      "unknown route '" + printable(name, 256) + "'" +
                          (route_names.empty() ? std::string(" (no routes are defined)")
                                               : suggestion(name, route_names)));
  };
  for (std::size_t i = 0; i < c.plans.size() && !d.diagnostics.full(); ++i) {
    const Plan& p = c.plans[i];
    const std::string base = "plans[" + std::to_string(i) + "]";
    check_stage_list(d, base + ".stages", p.stages, stages, stage_names);
    for (std::size_t j = 0; j < p.routes.size(); ++j) {
      if (!p.routes[j].empty() && !routes.contains(p.routes[j])) {
        unknown_route(item_path(d, base + ".routes", j), p.routes[j]);
      }
    }
    const std::unordered_set<std::string_view> allowed(p.routes.begin(), p.routes.end());
    std::unordered_map<std::string_view, std::size_t> overridden;
    for (std::size_t k = 0; k < p.overrides.size(); ++k) {
      const PlanOverride& o = p.overrides[k];
      if (o.route.empty()) {
        continue;  // missing or invalid, already reported
      }
      const std::string path = base + ".overrides[" + std::to_string(k) + "].route";
      const auto [first, inserted] = overridden.emplace(o.route, k);
      if (!inserted) {
        const int line = p.overrides[first->second].line;
        d.diagnostics.add(d.position(path), path,
                          "duplicate override for route '" + printable(o.route, 256) + "'" +
                              at_line(Position{line, 0}));
      } else if (!routes.contains(o.route)) {
        unknown_route(path, o.route);
      } else if (!allowed.empty() && !allowed.contains(o.route)) {
        // The override would never apply: keys on this plan cannot call the route.
        d.diagnostics.add(d.position(path), path,
                          "route '" + printable(o.route, 256) + "' is not among the plan's routes");
      }
    }
  }
}

// True if `pattern` (an invokers entry; a trailing '*' matches any suffix) matches `source`.
bool invoker_matches(std::string_view pattern, std::string_view source) {
  if (!pattern.empty() && pattern.back() == '*') {
    pattern.remove_suffix(1);
    return source.starts_with(pattern);
  }
  return pattern == source;
}

// A route that targets a function: the function must run something, and its invokers (when
// given) must let the route in; otherwise the route could only ever answer 403.
void check_function_target(Decoded& d, const std::string& base, const Route& r,
                           const FunctionConfig& f) {
  const std::string path = base + ".target.function";
  if (f.runtime == FunctionRuntime::kNone) {
    d.diagnostics.add(d.position(path), path,
                      "function '" + printable(f.name) +
                          "' has no runtime (it only carries limits); set its runtime to "
                          "lambda or exec" +
                          (f.line > 0 ? " (line " + std::to_string(f.line) + ")" : std::string()));
    return;
  }
  if (!f.invokers_set || r.name.empty()) {
    return;
  }
  const std::string source = "route:" + r.name;
  const bool allowed = std::any_of(f.invokers.begin(), f.invokers.end(),
                                   [&](const std::string& p) { return invoker_matches(p, source); });
  if (!allowed) {
    d.diagnostics.add(d.position(path), path,
                      "function '" + printable(f.name) + "' does not list '" +
                          printable(source, 256) + "' among its invokers");
  }
}

// A function's runtime keys only make sense together.
void check_function(Decoded& d, const std::string& base, const FunctionConfig& f) {
  static constexpr std::array<std::string_view, 13> kRuntimeKeys{
      "command",   "working_dir", "handler",        "env",      "memory_mb",
      "timeout_s", "max_queue",   "idle_timeout_s", "max_pids", "sandbox",
      "role",      "invokers",    "reserved_concurrency"};
  if (f.runtime == FunctionRuntime::kNone) {
    if (d.position(base + ".runtime").line > 0) {
      return;  // an invalid runtime, already reported
    }
    for (std::string_view key : kRuntimeKeys) {
      const std::string path = base + "." + std::string(key);
      const Position pos = d.position(path);
      if (pos.line > 0) {
        d.diagnostics.add(pos, path, "needs 'runtime' (lambda or exec) on the function");
      }
    }
    return;
  }
  if (f.command.empty()) {
    d.diagnostics.add(d.position(base), base, "missing required key 'command' (with a runtime)");
  }
  if (f.runtime == FunctionRuntime::kExec) {
    const std::string path = base + ".handler";
    if (d.position(path).line > 0) {
      d.diagnostics.add(d.position(path), path, "only applies to runtime lambda");
    }
  }
}

// The checks that need more than one value: references between sections, unique names, and the
// route name default (which must exist before names can be compared).
void check_references(Decoded& d) {
  Config& c = d.config;
  const auto stages = index_names(d, c.stages, "stages", "stage");
  const auto upstreams = index_names(d, c.upstreams, "upstreams", "upstream");
  const auto functions = index_names(d, c.functions, "functions", "function");
  index_names(d, c.plans, "plans", "plan");
  const std::vector<std::string_view> stage_names = names_of(c.stages);
  const std::vector<std::string_view> upstream_names = names_of(c.upstreams);
  const std::vector<std::string_view> function_names = names_of(c.functions);

  std::unordered_map<std::string, std::size_t> route_names;
  for (std::size_t i = 0; i < c.routes.size() && !d.diagnostics.full(); ++i) {
    Route& r = c.routes[i];
    const std::string base = "routes[" + std::to_string(i) + "]";
    const bool named = !r.name.empty();
    if (!named && !r.methods.empty() && !r.path.empty()) {
      for (const std::string& m : r.methods) {
        r.name += r.name.empty() ? "" : ",";
        r.name += m;
      }
      r.name += " " + r.path;
    }
    if (!r.name.empty()) {
      const auto [it, inserted] = route_names.emplace(r.name, i);
      if (!inserted) {
        const std::string path = named ? base + ".name" : base;
        const Route& first = c.routes[it->second];
        std::string message =
            "duplicate route name '" + printable(r.name, 256) + "'" +
            (first.line > 0 ? " (first at line " + std::to_string(first.line) + ")"
                            : std::string());
        if (!named) {
          message += "; give one of them a distinct name";
        }
        d.diagnostics.add(d.position(path), path, message);
      }
    }
    check_stage_list(d, base + ".stages", r.stages, stages, stage_names);
    if (r.auth == RouteAuth::kSigV4 && r.api_key != ApiKeyMode::kNone) {
      d.diagnostics.add(d.position(base + ".auth"), base + ".auth",
                        "auth: sigv4 cannot be combined with api_key: optional or required");
    }
    const std::string& function = r.target.function;
    if (!function.empty() && !functions.contains(function)) {
      const std::string path = d.position(base + ".function").line > 0 ||
                                       r.target.kind != Target::Kind::kFunction
                                   ? base + ".function"
                                   : base + ".target.function";
      d.diagnostics.add(d.position(path), path,
                        "unknown function '" + printable(function) + "'" +
                            (function_names.empty() ? std::string(" (no functions are defined)")
                                                    : suggestion(function, function_names)));
    }
    if (r.target.kind == Target::Kind::kFunction && functions.contains(function)) {
      check_function_target(d, base, r, c.functions[functions.at(function)]);
    }
    if (r.target.kind == Target::Kind::kHttp && !r.target.http.upstream.empty() &&
        !upstreams.contains(r.target.http.upstream)) {
      const std::string path = base + ".target.http.upstream";
      d.diagnostics.add(d.position(path), path,
                        "unknown upstream '" + printable(r.target.http.upstream) + "'" +
                            suggestion(r.target.http.upstream, upstream_names));
    }
  }

  if (!d.diagnostics.full()) {
    check_plans(d, stages, stage_names);
  }
  for (std::size_t i = 0; i < c.functions.size() && !d.diagnostics.full(); ++i) {
    check_function(d, "functions[" + std::to_string(i) + "]", c.functions[i]);
  }

  const AdminConfig& a = c.admin;
  if (a.health_path == a.metrics_path) {
    Position pos = d.position("admin.metrics_path");
    if (pos.line == 0) {
      pos = d.position("admin.health_path");
    }
    d.diagnostics.add(pos, "admin.metrics_path", "must differ from admin.health_path");
  }
}

// Sees the document boundaries of a stream: where each document starts and whether it holds
// anything but a lone null.
class DocumentScan final : public YAML::EventHandler {
 public:
  YAML::Mark start = YAML::Mark::null_mark();
  bool content = false;

  void OnDocumentStart(const YAML::Mark& mark) override { start = mark; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& /*mark*/, YAML::anchor_t /*anchor*/) override {}
  void OnAlias(const YAML::Mark& /*mark*/, YAML::anchor_t /*anchor*/) override { content = true; }
  void OnScalar(const YAML::Mark& /*mark*/, const std::string& /*tag*/, YAML::anchor_t /*anchor*/,
                const std::string& /*value*/) override {
    content = true;
  }
  void OnSequenceStart(const YAML::Mark& /*mark*/, const std::string& /*tag*/,
                       YAML::anchor_t /*anchor*/, YAML::EmitterStyle::value /*style*/) override {
    content = true;
  }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark& /*mark*/, const std::string& /*tag*/, YAML::anchor_t /*anchor*/,
                  YAML::EmitterStyle::value /*style*/) override {
    content = true;
  }
  void OnMapEnd() override {}
};

struct Problem {
  Position pos;
  std::string message;
};

// Walks the document boundaries before the tree is built. Only the first document is loaded, so
// a second one with content is refused rather than silently ignored (a stray "---" at the end is
// fine). This is also a guard: yaml-cpp 0.7 does not consume a ',' outside a flow collection,
// so YAML::LoadAll on "," loops forever, building empty documents until memory runs out (found
// by tests/fuzz/config_fuzz.cc). Here a document that starts where the previous one started
// made no progress, and is reported instead. Throws what the yaml-cpp parser throws.
std::optional<Problem> check_documents(std::string_view yaml) {
  std::istringstream in{std::string(yaml)};
  YAML::Parser parser(in);
  int previous = -1;
  for (int count = 0;; ++count) {
    DocumentScan scan;
    if (!parser.HandleNextDocument(scan)) {
      return std::nullopt;
    }
    const Position pos{scan.start.line + 1, scan.start.column + 1};
    if (scan.start.pos == previous) {
      const auto at = static_cast<std::size_t>(scan.start.pos);
      const std::string what = at < yaml.size() ? "'" + printable(yaml.substr(at, 1)) + "'"
                                                : std::string("end of input");
      return Problem{pos, "invalid YAML: unexpected " + what};
    }
    if (count > 0 && scan.content) {
      return Problem{pos, "only one YAML document is allowed; a second one starts here"};
    }
    previous = scan.start.pos;
  }
}

LoadResult load(std::string_view yaml, const std::string& name) {
  if (yaml.size() > kMaxDocumentBytes) {
    return one_error(
        name, 0, 0, "the file is " + std::to_string(yaml.size()) + " bytes; the maximum is 16 MiB");
  }
  YAML::Node root;
  try {
    if (auto problem = check_documents(yaml)) {
      return one_error(name, problem->pos.line, problem->pos.column, std::move(problem->message));
    }
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::DeepRecursion& e) {
    return one_error(
        name, e.mark.line + 1, e.mark.column + 1,
        "invalid YAML: nested more than " + std::to_string(e.depth()) + " levels deep");
  } catch (const YAML::Exception& e) {
    const bool known = !e.mark.is_null();
    return one_error(name, known ? e.mark.line + 1 : 0, known ? e.mark.column + 1 : 0,
                     "invalid YAML: " + printable(e.msg, 200));
  }

  Decoded d;
  d.config.source = name;
  detail::decode(root, d);
  if (!d.diagnostics.full()) {
    check_references(d);
  }
  if (!d.diagnostics.empty()) {
    return tl::unexpected(std::move(d.diagnostics).take(name));
  }
  return std::move(d.config);
}

LoadResult internal_error(const std::string& name, const char* what) {
  return one_error(name, 0, 0, std::string("internal error while loading: ") + what);
}

struct FileCloser {
  // NOLINTNEXTLINE(cppcoreguidelines-owning-memory): the unique_ptr below owns the FILE.
  void operator()(std::FILE* f) const noexcept { std::fclose(f); }
};

}  // namespace

const Upstream* Config::find_upstream(std::string_view name) const {
  for (const Upstream& u : upstreams) {
    if (u.name == name) {
      return &u;
    }
  }
  return nullptr;
}

const Plan* Config::find_plan(std::string_view name) const {
  for (const Plan& p : plans) {
    if (p.name == name) {
      return &p;
    }
  }
  return nullptr;
}

const FunctionConfig* Config::find_function(std::string_view name) const {
  for (const FunctionConfig& f : functions) {
    if (f.name == name) {
      return &f;
    }
  }
  return nullptr;
}

std::string ConfigError::to_string() const {
  if (line <= 0) {
    return file + ": " + message;
  }
  return file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " + message;
}

LoadResult load_string(std::string_view yaml, const std::string& name) {
  // yaml-cpp reports errors by throwing, and anything can throw bad_alloc; none of it may
  // escape (the reload path must keep serving the old config).
  try {
    return load(yaml, name);
  } catch (const std::exception& e) {
    return internal_error(name, e.what());
  } catch (...) {
    return internal_error(name, "unknown exception");
  }
}

LoadResult load_file(const std::string& path) {
  try {
    errno = 0;
    const std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
    if (!file) {
      return one_error(path, 0, 0,
                       "cannot read the file: " + std::generic_category().message(errno));
    }
    // Read through the cap plus one byte, so FIFOs and /dev/stdin work and a huge file is
    // refused without reading all of it.
    std::string text;
    char buf[64 * 1024];
    while (text.size() <= kMaxDocumentBytes) {
      const std::size_t n = std::fread(buf, 1, sizeof buf, file.get());
      text.append(buf, n);
      if (n < sizeof buf) {
        break;
      }
    }
    if (std::ferror(file.get()) != 0) {
      return one_error(path, 0, 0,
                       "cannot read the file: " + std::generic_category().message(errno));
    }
    if (text.size() > kMaxDocumentBytes) {
      return one_error(path, 0, 0, "the file is larger than the maximum of 16 MiB");
    }
    return load_string(text, path);
  } catch (const std::exception& e) {
    return internal_error(path, e.what());
  } catch (...) {
    return internal_error(path, "unknown exception");
  }
}

}  // namespace gatehouse::config
