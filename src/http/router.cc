#include "http/http.h"

// The router is a segment trie. Templates with the same shape (ignoring parameter names) end at
// the same node, which is what makes conflict detection a per-node check. Each node has sorted
// literal edges, at most one {param} child and at most one {param+} child; matching walks them in
// that order and backtracks. Every step of the walk consumes exactly one path segment (or, for a
// greedy child, all the rest), so each trie node is visited at most once per match: the cost is
// bounded by the trie, not by the request path, however hostile the path.
//
// Documented choices beyond http.h:
//  - Trailing slash is significant: "/items/" and "/items" are different paths. A template may end
//    with '/' (its last segment is then the empty literal); an empty segment anywhere else ("//a",
//    "/a//b") is a build error. "/" alone is the root route (no segments).
//  - {name} matches one non-empty segment. {name+} matches the non-empty rest of the path, whose
//    first segment must be non-empty (so "/files//etc" does not match "/files/{p+}"); later empty
//    segments and a trailing slash are passed through raw, as is everything else (no
//    percent-decoding, no dot-segment removal: handlers must not trust greedy values as paths).
//  - HEAD is served, in order of preference, by an explicit HEAD route, then a GET route, then an
//    ANY route on the same path (a GET route beats ANY so HEAD's headers mirror GET's). The Allow
//    list of a 405 names HEAD whenever GET is present.
//  - Methods are compared case-sensitively, as HTTP requires: "get" is not GET.
//  - With stages, "/prod" and "/prod/" both reach the root route "/".
//  - build() is stricter than the header's list: a method must be an upper-case token
//    ([A-Z0-9_-]+), "ANY" must stand alone, and a route may not repeat a method or a stage; stage
//    names must be non-empty, unique and free of '/'.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/core.h"

namespace gatehouse::http {

namespace {

constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();
// Above this many literal children a node switches from a linear scan to a binary search.
constexpr std::size_t kLinearScanMax = 8;

enum class SegKind : std::uint8_t { kLiteral, kParam, kGreedy };

struct Segment {
  SegKind kind = SegKind::kLiteral;
  std::string_view text;  // literal text, or parameter name (points into the template)
};

bool is_name_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

bool is_method_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

// Sets bit `i` in a dynamic bitset.
void set_bit(std::vector<std::uint64_t>& bits, std::size_t i) {
  bits[i / 64] |= std::uint64_t{1} << (i % 64);
}

bool test_bit(const std::vector<std::uint64_t>& bits, std::size_t i) {
  return i / 64 < bits.size() && ((bits[i / 64] >> (i % 64)) & 1U) != 0;
}

// An empty set means "every stage".
bool stages_overlap(const std::vector<std::uint64_t>& a, const std::vector<std::uint64_t>& b) {
  if (a.empty() || b.empty()) {
    return true;
  }
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if ((a[i] & b[i]) != 0) {
      return true;
    }
  }
  return false;
}

}  // namespace

struct Router::Impl {
  struct Edge {
    std::string key;  // literal segment; "" only for a template's trailing slash
    std::uint32_t child = kNone;
  };

  // One (route, method) pair ending at a node.
  struct Endpoint {
    std::uint32_t route = 0;
    std::string method;  // "ANY" when `any` is set
    bool any = false;
    std::vector<std::uint64_t> stages;  // bitset over stage indices; empty = every stage
  };

  struct Node {
    std::vector<Edge> literals;  // sorted by key
    std::uint32_t param = kNone;
    std::uint32_t greedy = kNone;
    std::vector<Endpoint> endpoints;
  };

  struct Route {
    std::string path;  // the template; param_names point into it
    std::vector<std::string_view> param_names;
  };

  // Per-call state of match(); lives on the caller's stack.
  struct Walk {
    std::string_view method;
    std::string_view path;
    std::uint32_t stage = kNone;       // index into stages; kNone when no stages are defined
    std::uint32_t first_node = kNone;  // first node whose path matched (for the 405 Allow list)
    std::array<std::string_view, kMaxPathParams> values{};
    Match* out = nullptr;
  };

  std::vector<Node> nodes;          // nodes[0] is the root
  std::vector<Route> routes;        // reserved once in build(); never reallocates afterwards
  std::vector<std::string> stages;  // as given to build()
  std::vector<Edge> stage_index;    // stage name -> index into stages, sorted by name

  static std::uint32_t find_edge(const std::vector<Edge>& edges, std::string_view key) {
    if (edges.size() <= kLinearScanMax) {
      for (const Edge& e : edges) {
        if (e.key == key) {
          return e.child;
        }
      }
      return kNone;
    }
    const auto it = std::lower_bound(edges.begin(), edges.end(), key,
                                     [](const Edge& e, std::string_view k) { return e.key < k; });
    if (it != edges.end() && it->key == key) {
      return it->child;
    }
    return kNone;
  }

  static bool in_stage(const Endpoint& ep, std::uint32_t stage) {
    if (ep.stages.empty()) {
      return true;
    }
    // Endpoints with a stage set exist only when stages are defined, and then stage != kNone
    // (kNone would simply test out of range).
    return test_bit(ep.stages, stage);
  }

  // The route serving `method` at `node` in `stage`, or kNone. Sets `path_matched` if any route
  // ends here in this stage.
  std::uint32_t resolve(const Node& node, std::string_view method, std::uint32_t stage,
                        bool& path_matched) const {
    std::uint32_t get = kNone;
    std::uint32_t any = kNone;
    path_matched = false;
    const bool head = method == "HEAD";
    for (const Endpoint& ep : node.endpoints) {
      if (!in_stage(ep, stage)) {
        continue;
      }
      path_matched = true;
      if (ep.any) {
        any = ep.route;
      } else if (ep.method == method) {
        return ep.route;  // build() guarantees one exact method per node and stage
      } else if (head && ep.method == "GET") {
        get = ep.route;
      }
    }
    return get != kNone ? get : any;
  }

  bool finish(Walk& w, std::uint32_t node_index, std::size_t nparams) const {
    bool path_matched = false;
    const std::uint32_t route = resolve(nodes[node_index], w.method, w.stage, path_matched);
    if (path_matched && w.first_node == kNone) {
      w.first_node = node_index;
    }
    if (route == kNone) {
      return false;
    }
    Match& out = *w.out;
    const Route& r = routes[route];
    // The trie path to this node has the template's shape, so it captured exactly one value per
    // parameter name.
    out.status = MatchStatus::kFound;
    out.route = route;
    out.param_count = nparams;
    for (std::size_t i = 0; i < nparams; ++i) {
      out.params[i] = PathParam{r.param_names[i], w.values[i]};
    }
    return true;
  }

  // `pos` is the index of the '/' that starts the next segment, or path.size() when the path is
  // consumed. `nparams` values have been captured; it stays below kMaxPathParams wherever a
  // {param} child exists, because build() rejects templates with more.
  bool walk(Walk& w, std::uint32_t node_index, std::size_t pos, std::size_t nparams) const {
    if (pos == w.path.size()) {
      return finish(w, node_index, nparams);
    }
    const Node& node = nodes[node_index];
    const std::size_t start = pos + 1;
    std::size_t end = w.path.find('/', start);
    if (end == std::string_view::npos) {
      end = w.path.size();
    }
    const std::string_view seg = w.path.substr(start, end - start);
    if (!node.literals.empty()) {
      const std::uint32_t child = find_edge(node.literals, seg);
      if (child != kNone && walk(w, child, end, nparams)) {
        return true;
      }
    }
    if (seg.empty()) {
      return false;  // parameters never match an empty segment
    }
    if (node.param != kNone) {
      w.values[nparams] = seg;
      if (walk(w, node.param, end, nparams + 1)) {
        return true;
      }
    }
    if (node.greedy != kNone) {
      w.values[nparams] = w.path.substr(start);
      if (finish(w, node.greedy, nparams + 1)) {
        return true;
      }
    }
    return false;
  }

  void build_allow(const Node& node, std::uint32_t stage, std::string& allow) const {
    std::vector<std::string_view> methods;
    methods.reserve(node.endpoints.size() + 1);
    for (const Endpoint& ep : node.endpoints) {
      if (in_stage(ep, stage)) {
        methods.emplace_back(ep.method);
        if (ep.method == "GET") {
          methods.emplace_back("HEAD");
        }
      }
    }
    std::sort(methods.begin(), methods.end());
    methods.erase(std::unique(methods.begin(), methods.end()), methods.end());
    for (std::size_t i = 0; i < methods.size(); ++i) {
      if (i != 0) {
        allow.append(", ");
      }
      allow.append(methods[i]);
    }
  }
};

Router::Router(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Router::~Router() = default;

namespace {

using Impl = Router::Impl;

std::string route_prefix(std::size_t index, std::string_view path) {
  std::string s = "route ";
  s += std::to_string(index);
  s += " (";
  s += path;
  s += "): ";
  return s;
}

tl::unexpected<core::Error> route_error(std::size_t index, std::string_view path,
                                        std::string_view what) {
  return core::make_error(core::ErrorCode::kInvalidArgument, route_prefix(index, path) += what);
}

// Splits and checks a template; `segments` and names point into `path`.
core::Result<void> parse_template(std::size_t index, std::string_view path,
                                  std::vector<Segment>& segments) {
  segments.clear();
  if (path.empty()) {
    return route_error(index, path, "empty path");
  }
  if (path.front() != '/') {
    return route_error(index, path, "path must start with '/'");
  }
  if (path == "/") {
    return {};  // root: no segments
  }
  std::size_t start = 1;
  std::size_t nparams = 0;
  while (true) {
    std::size_t end = path.find('/', start);
    const bool last = end == std::string_view::npos;
    if (last) {
      end = path.size();
    }
    const std::string_view seg = path.substr(start, end - start);
    if (seg.empty() && !last) {
      return route_error(index, path, "empty segment");
    }
    if (!segments.empty() && segments.back().kind == SegKind::kGreedy) {
      return route_error(index, path, "greedy parameter must be the last segment");
    }
    const bool has_brace = seg.find_first_of("{}") != std::string_view::npos;
    if (!has_brace) {
      segments.push_back(Segment{SegKind::kLiteral, seg});
    } else {
      if (seg.size() < 2 || seg.front() != '{' || seg.back() != '}') {
        return route_error(index, path,
                           "unbalanced or misplaced braces in segment \"" + std::string(seg) +
                               "\" (a parameter must be a whole segment)");
      }
      std::string_view name = seg.substr(1, seg.size() - 2);
      if (name.find_first_of("{}") != std::string_view::npos) {
        return route_error(
            index, path, "unbalanced or misplaced braces in segment \"" + std::string(seg) + "\"");
      }
      SegKind kind = SegKind::kParam;
      if (!name.empty() && name.back() == '+') {
        kind = SegKind::kGreedy;
        name.remove_suffix(1);
      }
      if (name.empty() || !std::all_of(name.begin(), name.end(), is_name_char)) {
        return route_error(
            index, path, "bad parameter name in \"" + std::string(seg) + "\" (want [A-Za-z0-9_]+)");
      }
      for (const Segment& s : segments) {
        if (s.kind != SegKind::kLiteral && s.text == name) {
          return route_error(index, path, "duplicate parameter name \"" + std::string(name) + "\"");
        }
      }
      if (++nparams > kMaxPathParams) {
        return route_error(index, path,
                           "more than " + std::to_string(kMaxPathParams) + " path parameters");
      }
      segments.push_back(Segment{kind, name});
    }
    if (last) {
      break;
    }
    start = end + 1;
  }
  return {};
}

core::Result<void> check_methods(std::size_t index, const RouteSpec& spec) {
  if (spec.methods.empty()) {
    return route_error(index, spec.path, "empty methods list");
  }
  for (std::size_t i = 0; i < spec.methods.size(); ++i) {
    const std::string& m = spec.methods[i];
    if (m.empty() || !std::all_of(m.begin(), m.end(), is_method_char)) {
      return route_error(index, spec.path,
                         "method \"" + m + "\" is not an upper-case token ([A-Z0-9_-]+)");
    }
    if (m == "ANY" && spec.methods.size() != 1) {
      return route_error(index, spec.path, "ANY cannot be combined with other methods");
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (spec.methods[j] == m) {
        return route_error(index, spec.path, "duplicate method " + m);
      }
    }
  }
  return {};
}

core::Result<void> check_stages(const std::vector<std::string>& stages) {
  for (std::size_t i = 0; i < stages.size(); ++i) {
    const std::string& s = stages[i];
    const std::string prefix = "stage " + std::to_string(i) + " (\"" + s + "\"): ";
    if (s.empty()) {
      return core::make_error(core::ErrorCode::kInvalidArgument, prefix + "empty stage name");
    }
    if (s.find('/') != std::string::npos) {
      return core::make_error(core::ErrorCode::kInvalidArgument,
                              prefix + "a stage name is one path segment (no '/')");
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (stages[j] == s) {
        return core::make_error(core::ErrorCode::kInvalidArgument, prefix + "duplicate stage");
      }
    }
  }
  return {};
}

// Returns the child of `node` for `seg`, creating it. May reallocate impl.nodes.
std::uint32_t child_for(Impl& impl, std::uint32_t node, const Segment& seg) {
  const auto new_node = [&impl]() {
    impl.nodes.emplace_back();
    return static_cast<std::uint32_t>(impl.nodes.size() - 1);
  };
  switch (seg.kind) {
    case SegKind::kParam: {
      if (impl.nodes[node].param == kNone) {
        const std::uint32_t c = new_node();
        impl.nodes[node].param = c;
      }
      return impl.nodes[node].param;
    }
    case SegKind::kGreedy: {
      if (impl.nodes[node].greedy == kNone) {
        const std::uint32_t c = new_node();
        impl.nodes[node].greedy = c;
      }
      return impl.nodes[node].greedy;
    }
    case SegKind::kLiteral:
      break;
  }
  auto& edges = impl.nodes[node].literals;
  const auto it =
      std::lower_bound(edges.begin(), edges.end(), seg.text,
                       [](const Impl::Edge& e, std::string_view k) { return e.key < k; });
  if (it != edges.end() && it->key == seg.text) {
    return it->child;
  }
  const auto pos = it - edges.begin();
  const std::uint32_t c = new_node();
  auto& edges_after = impl.nodes[node].literals;  // new_node() may have moved the node
  edges_after.insert(edges_after.begin() + pos, Impl::Edge{std::string(seg.text), c});
  return c;
}

}  // namespace

core::Result<std::unique_ptr<Router>> Router::build(const std::vector<RouteSpec>& routes,
                                                    const std::vector<std::string>& stages) {
  if (auto r = check_stages(stages); !r) {
    return tl::unexpected(std::move(r.error()));
  }
  if (routes.size() >= kNone) {
    return core::make_error(core::ErrorCode::kInvalidArgument, "too many routes");
  }
  auto impl = std::make_unique<Impl>();
  impl->stages = stages;
  impl->stage_index.reserve(stages.size());
  for (std::size_t i = 0; i < stages.size(); ++i) {
    impl->stage_index.push_back(Impl::Edge{stages[i], static_cast<std::uint32_t>(i)});
  }
  std::sort(impl->stage_index.begin(), impl->stage_index.end(),
            [](const Impl::Edge& a, const Impl::Edge& b) { return a.key < b.key; });
  const std::size_t stage_words = (stages.size() + 63) / 64;

  impl->nodes.emplace_back();  // root
  // Reserved once so that param_names (views into each Route::path) stay valid.
  impl->routes.reserve(routes.size());
  std::vector<Segment> segments;
  for (std::size_t i = 0; i < routes.size(); ++i) {
    const RouteSpec& spec = routes[i];
    if (auto r = check_methods(i, spec); !r) {
      return tl::unexpected(std::move(r.error()));
    }
    std::vector<std::uint64_t> stage_bits;
    if (!spec.stages.empty()) {
      stage_bits.assign(stage_words, 0);
      for (const std::string& s : spec.stages) {
        const std::uint32_t si = Impl::find_edge(impl->stage_index, s);
        if (si == kNone) {
          return route_error(i, spec.path, "unknown stage \"" + s + "\"");
        }
        if (test_bit(stage_bits, si)) {
          return route_error(i, spec.path, "duplicate stage \"" + s + "\"");
        }
        set_bit(stage_bits, si);
      }
    }

    Impl::Route& route = impl->routes.emplace_back();
    route.path = spec.path;
    if (auto r = parse_template(i, route.path, segments); !r) {
      return tl::unexpected(std::move(r.error()));
    }
    std::uint32_t node = 0;
    for (const Segment& seg : segments) {
      if (seg.kind != SegKind::kLiteral) {
        route.param_names.push_back(seg.text);
      }
      node = child_for(*impl, node, seg);
    }

    auto& endpoints = impl->nodes[node].endpoints;
    for (const std::string& m : spec.methods) {
      const bool any = m == "ANY";
      for (const Impl::Endpoint& ep : endpoints) {
        if (ep.method == m && stages_overlap(ep.stages, stage_bits)) {
          return route_error(i, spec.path,
                             "conflicts with route " + std::to_string(ep.route) + " (" +
                                 impl->routes[ep.route].path + "): same method " + m +
                                 ", equivalent template and overlapping stages");
        }
      }
      endpoints.push_back(Impl::Endpoint{static_cast<std::uint32_t>(i), m, any, stage_bits});
    }
  }
  // Private constructor: make_unique cannot reach it. Owned at once.
  return std::unique_ptr<Router>(new Router(std::move(impl)));
}

void Router::match(std::string_view method, std::string_view path, Match& out) const {
  const Impl& impl = *impl_;
  out.status = MatchStatus::kNotFound;
  out.route = 0;
  out.stage = {};
  out.param_count = 0;
  out.allow.clear();

  if (path.empty() || path.front() != '/') {
    return;
  }
  Impl::Walk w;
  w.method = method;
  w.out = &out;
  if (!impl.stages.empty()) {
    std::size_t end = path.find('/', 1);
    if (end == std::string_view::npos) {
      end = path.size();
    }
    const std::uint32_t si = Impl::find_edge(impl.stage_index, path.substr(1, end - 1));
    if (si == kNone) {
      return;
    }
    w.stage = si;
    out.stage = impl.stages[si];
    path.remove_prefix(end);
    if (path.empty()) {
      path = "/";
    }
  }
  w.path = path;
  // "/" is the root: no segments at all.
  const std::size_t pos = path.size() == 1 ? 1 : 0;
  if (impl.walk(w, 0, pos, 0)) {
    return;
  }
  out.param_count = 0;
  if (w.first_node != kNone) {
    out.status = MatchStatus::kMethodNotAllowed;
    impl.build_allow(impl.nodes[w.first_node], w.stage, out.allow);
  }
}

std::string_view Match::param(std::string_view name) const noexcept {
  for (std::size_t i = 0; i < param_count && i < params.size(); ++i) {
    if (params[i].name == name) {
      return params[i].value;
    }
  }
  return {};
}

}  // namespace gatehouse::http
