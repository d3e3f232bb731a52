#!/usr/bin/env bash
# User-space instructions per request of the Gatehouse static route (and of the nginx peer),
# counted by callgrind: repeatable where hardware counters are not available.
#
#   bash bench/gateway-callgrind.sh     (after `make build`; needs valgrind: apt-get install valgrind)
#
# Same servers and configs as bench/gateway.sh. Each server runs under
# `valgrind --tool=callgrind`; a small Python client sends WARMUP requests, the counters are
# zeroed (callgrind_control -z), REQUESTS more are sent over CONNECTIONS keep-alive connections
# (DEPTH requests per write: 1, and 16 for the pipelined variant), the counters are dumped
# (callgrind_control -d) and the server is stopped. Instructions per request = dumped Ir total /
# REQUESTS. The kernel is invisible to callgrind: these are user-space instructions only.
#
# SCENARIO=allowed profiles the allowed path of bench/limits.sh: every request carries an API key
# on a plan far above the load and is proxied to an nginx `return 200` upstream
# (bench/limits-upstream.conf, started outside valgrind, its work not counted). Gatehouse checks
# the key and the account, route, function and key layers; nginx (bench/nginx-allowed.conf) one
# `limit_req` zone keyed on the header, then `proxy_pass`.
#
# SCENARIO=refusal profiles the flood path of bench/limits.sh instead: every request carries an
# API key over its plan's limit (1 request per minute, burst 1) and is refused with 429.
# Gatehouse verifies the key (SHA-256 + index), checks its plan's routes and the account, route,
# function and key layers; nginx counts one `limit_req` zone keyed on the header (its `return`
# would run before `limit_req`, so the location proxies to a closed port that the measured
# requests never reach).
#
# Environment: REQUESTS [20000] CONNECTIONS [8] WARMUP [1600] DEPTHS ["1 16"]
#   SCENARIO [static]: static | allowed | refusal
#   SERVERS ["gatehouse nginx"] TOP [25] functions listed per profile
#   OUT [a new temp dir, kept]: where callgrind.out files go, for callgrind_annotate.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GH_BIN=${GH_BIN:-$ROOT/build/src/cli/gatehouse}
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
REQUESTS=${REQUESTS:-20000}
CONNECTIONS=${CONNECTIONS:-8}
WARMUP=${WARMUP:-1600}
DEPTHS=${DEPTHS:-"1 16"}
SERVERS=${SERVERS:-"gatehouse nginx"}
TOP=${TOP:-25}
SCENARIO=${SCENARIO:-static}

die() {
  echo "gateway-callgrind.sh: $*" >&2
  exit 1
}

[[ " $SERVERS " != *" gatehouse "* || -x $GH_BIN ]] ||
  die "$GH_BIN not found: run \`make build\` first (or set GH_BIN)"
[[ " $SERVERS " != *" nginx "* || -x $NGINX_BIN ]] || die "nginx not found: run \`make setup\`"
for tool in valgrind callgrind_control callgrind_annotate python3 curl timeout; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (valgrind: apt-get install valgrind)"
done
[[ $SCENARIO =~ ^(static|allowed|refusal)$ ]] || die "SCENARIO must be static, allowed or refusal"
for d in $DEPTHS; do [[ $d =~ ^[0-9]+$ && $d -ge 1 ]] || die "DEPTHS must be positive integers"; done

OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-callgrind.XXXXXX")}
mkdir -p "$OUT"
VG_PID=""
UPSTREAM_PID=""

cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  if [[ -n $UPSTREAM_PID ]]; then
    kill -TERM "$UPSTREAM_PID" 2>/dev/null || true
    wait "$UPSTREAM_PID" 2>/dev/null || true
  fi
  if [[ -n $VG_PID ]]; then
    kill -TERM "$VG_PID" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$VG_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$VG_PID" 2>/dev/null || true
    wait "$VG_PID" 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cat >"$OUT/client.py" <<'EOF'
"""Exact-count HTTP/1.1 load.

client.py PORT CONNECTIONS REQUESTS_PER_CONNECTION DEPTH PATH EXPECT [HEADER]: every response
must have status EXPECT ("any" accepts all: the warm-up)."""
import socket, sys, threading

port, conns, per_conn, depth = (int(a) for a in sys.argv[1:5])
path, expect = sys.argv[5], sys.argv[6]
extra = sys.argv[7] + "\r\n" if len(sys.argv) > 7 else ""
req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode()
failures = []

def worker():
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=120)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf, left = b"", per_conn
        while left:
            k = min(depth, left)
            s.sendall(req * k)
            got = 0
            while got < k:
                i = buf.find(b"\r\n\r\n")
                if i >= 0:
                    head = buf[:i].decode("latin-1")
                    n = 0
                    for line in head.split("\r\n")[1:]:
                        name, _, value = line.partition(":")
                        if name.strip().lower() == "content-length":
                            n = int(value)
                    if len(buf) >= i + 4 + n:
                        if expect != "any" and not head.startswith("HTTP/1.1 " + expect):
                            failures.append(head.split("\r\n")[0])
                        buf = buf[i + 4 + n:]
                        got += 1
                        continue
                data = s.recv(65536)
                if not data:
                    raise RuntimeError("connection closed early")
                buf += data
            left -= k
        s.close()
    except Exception as e:  # reported below; the exit status says it failed
        failures.append(repr(e))

threads = [threading.Thread(target=worker) for _ in range(conns)]
for t in threads: t.start()
for t in threads: t.join()
if failures:
    sys.exit(f"{len(failures)} failure(s), first: {failures[0]}")
EOF

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

profile() {  # server depth
  local server=$1 depth=$2 tag="$1-depth$2" port dir per cmd i dump total
  port=$(free_port)
  dir=$OUT/$tag
  rm -rf "$dir"
  mkdir -p "$dir"
  if [[ $server == gatehouse ]]; then
    cat >"$dir/gatehouse.yaml" <<EOF
server: {listen: "127.0.0.1:$port", threads: 1}
log: {level: warn, access_log: "off"}
store: {state: "sqlite://$dir/gh.db"}
limits: {max_connections_per_ip: 100000, idle_timeout: 60s}
functions:
  - {name: fn, throttle: {rate: 1000000, burst: 1000000}}
upstreams:
  - {name: up, url: "http://127.0.0.1:${UPSTREAM_PORT:-9}"}
plans:
  - {name: tight, throttle: {rate: 0.0166667, burst: 1}}
  - {name: bench, throttle: {rate: 1000000, burst: 1000000}}
throttling: {account: {rate: 1000000, burst: 1000000}}
api_keys: {forward: true}  # as nginx does: the key header goes on to the upstream
routes:
  - {method: GET, path: /hello, target: {static: {status: 200, body: "hello from gatehouse\n", content_type: text/plain}}}
  - {name: api, method: GET, path: "/api/{proxy+}", api_key: required, function: fn, throttle: {rate: 1000000, burst: 1000000}, target: {http: {upstream: up}}}
EOF
    cmd=("$GH_BIN" serve --config "$dir/gatehouse.yaml")
    if [[ $SCENARIO != static ]]; then
      local plan=tight
      [[ $SCENARIO == refusal ]] || plan=bench
      KEY=$("$GH_BIN" keys create --name bench --plan "$plan" --config "$dir/gatehouse.yaml" |
        grep -o 'ghk_[0-9a-f_]*' | head -n 1)
      [[ -n $KEY ]] || die "gatehouse keys create printed no key"
    fi
  else
    # One process (no master) so callgrind sees the worker's work without following forks.
    local conf=$ROOT/bench/nginx-static.conf
    [[ $SCENARIO != refusal ]] || conf=$ROOT/bench/nginx-refusal.conf
    [[ $SCENARIO != allowed ]] || conf=$ROOT/bench/nginx-allowed.conf
    sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" -e "s|@UPSTREAM_PORT@|${UPSTREAM_PORT:-9}|g" \
      -e 's|^worker_processes 1;|worker_processes 1;\nmaster_process off;|' "$conf" >"$dir/nginx.conf"
    cmd=("$NGINX_BIN" -p "$dir" -e "$dir/nginx-error.log" -c "$dir/nginx.conf")
    KEY=ghk_0123456789abcdef_0123456789abcdef0123456789abcdef0123456789abcdef
  fi
  valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out.%p" "${cmd[@]}" >"$dir/valgrind.log" 2>&1 &
  VG_PID=$!
  for ((i = 0; i < 300; i++)); do
    kill -0 "$VG_PID" 2>/dev/null || { tail -n 20 "$dir/valgrind.log" >&2; die "$server exited under valgrind"; }
    curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$port/hello" && break
    sleep 0.2
  done
  ((i < 300)) || die "$server did not answer under valgrind within 60 s"
  local req=(/hello 200)
  [[ $SCENARIO != refusal ]] || req=(/api/hello 429 "x-api-key: $KEY")
  [[ $SCENARIO != allowed ]] || req=(/api/hello 200 "x-api-key: $KEY")
  per=$(((WARMUP + CONNECTIONS - 1) / CONNECTIONS))
  timeout 300 python3 "$OUT/client.py" "$port" "$CONNECTIONS" "$per" "$depth" "${req[0]}" any "${req[@]:2}"
  callgrind_control -z "$VG_PID" >/dev/null 2>&1 || die "callgrind_control -z failed"
  per=$((REQUESTS / CONNECTIONS))
  timeout 600 python3 "$OUT/client.py" "$port" "$CONNECTIONS" "$per" "$depth" "${req[@]}"
  callgrind_control -d "$VG_PID" >/dev/null 2>&1 || die "callgrind_control -d failed"
  kill -TERM "$VG_PID"
  for ((i = 0; i < 100; i++)); do kill -0 "$VG_PID" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$VG_PID" 2>/dev/null || true
  wait "$VG_PID" 2>/dev/null || true
  VG_PID=""
  dump=$(find "$dir" -name 'callgrind.out.*.1' | head -n 1)
  [[ -n $dump ]] || die "no callgrind dump for $tag"
  total=$(awk '/^summary:/ { print $2 }' "$dump")
  RESULT[$tag]=$(awk -v t="$total" -v n=$((per * CONNECTIONS)) 'BEGIN { printf "%.0f", t / n }')
  echo "## $server, $depth request(s) per write: ${RESULT[$tag]} instructions per request ($total over $((per * CONNECTIONS)) requests)"
  echo "profile: $dump"
  echo
  # Exclusive cost per request of the top functions (the first lines of callgrind_annotate list
  # the thread entry points at 100 % inclusive; they are skipped).
  callgrind_annotate --auto=no --threshold=100 --inclusive=no "$dump" 2>/dev/null |
    python3 -c '
import re, sys
n, top, shown = int(sys.argv[1]), int(sys.argv[2]), 0
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+) \(\s*([\d.]+)%\)\s+(.*)", line)
    if not m or "PROGRAM TOTALS" in line or m.group(2) == "100.0":
        continue
    name = re.sub(r" \[[^]]*\]$", "", m.group(3)).replace("(anonymous namespace)", "{anon}")
    name = re.sub(r"^[^:]*:(?!:)", "", name, count=1)  # drop "file:"
    name = re.sub(r"\(.*", "", name)                    # drop the parameter list
    ir = int(m.group(1).replace(",", ""))
    shown += 1
    if shown <= top:  # keep reading to the end: no SIGPIPE for callgrind_annotate
        print("%9.1f  %s" % (ir / n, name[:110]))
' $((per * CONNECTIONS)) "$TOP"
  echo
}

declare -A RESULT
if [[ $SCENARIO == allowed ]]; then
  UPSTREAM_PORT=$(free_port)
  mkdir -p "$OUT/upstream"
  sed -e "s|@DIR@|$OUT/upstream|g" -e "s|@PORT@|$UPSTREAM_PORT|g" "$ROOT/bench/limits-upstream.conf" \
    >"$OUT/upstream/nginx.conf"
  "$NGINX_BIN" -p "$OUT/upstream" -e "$OUT/upstream/error.log" -c "$OUT/upstream/nginx.conf" &
  UPSTREAM_PID=$!
  for ((i = 0; i < 50; i++)); do
    curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$UPSTREAM_PORT/" && break
    sleep 0.1
  done
fi
echo "# user-space instructions per request (callgrind), scenario $SCENARIO, $(date -u '+%Y-%m-%d %H:%M UTC'); outputs in $OUT"
echo
for server in $SERVERS; do
  for depth in $DEPTHS; do
    profile "$server" "$depth"
  done
done

row="| requests per write |"
sep="|---|"
for s in $SERVERS; do
  row+=" $s instructions/request |"
  sep+="---:|"
done
echo "$row"
echo "$sep"
for depth in $DEPTHS; do
  row="| $depth |"
  for s in $SERVERS; do row+=" ${RESULT[$s-depth$depth]} |"; done
  echo "$row"
done
