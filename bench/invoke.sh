#!/usr/bin/env bash
# Function invocation through the gateway: warm overhead and cold start, for a native function
# (tests/functions/native/echo.cc, built with sdk/gatehouse_lambda.h) and a Node.js function run
# by the npm aws-lambda-ric (tests/functions/node/index.mjs), against a `static` route of the same
# shape in the same run.
#
#   bash bench/invoke.sh     (after `make build`: the gatehouse binary and the fn_echo target;
#                             wrk, node and aws-lambda-ric come from scripts/setup)
#
# One gateway serves three routes: GET /static (a `static` target), GET /native and GET /node
# (function targets; payload format 2.0). The gateway and its function workers (its child
# processes) are pinned to CPU 0, wrk (`-t1 -c$CONNECTIONS --latency`) to CPU 1.
#
# Warm: after WARMUP seconds of unrecorded load on a route (so the workers are started), ROUNDS
# runs of DURATION seconds per route, interleaved static, native, node. Per run: p50 and p99 from
# wrk --latency, and CPU per request: utime+stime from /proc/PID/stat over the run, divided by
# the responses wrk got, for the gateway process and, separately, for its function workers (the
# same worker pids before and after the run; a run whose workers changed is flagged). The
# overhead of a function route is its p50 (and p99) minus the static route's in the same round.
# Functions get reserved_concurrency = CONNECTIONS, so every connection has a warm worker.
#
# Cold start: a second gateway whose functions have idle_timeout_s: 1. COLD_RUNS times per
# function: wait until it has no worker (gatehouse_function_workers = 0), then time one request
# with curl (time_total); the cold-start counter must have gone up by one, or the run fails.
# Reported: the median, min and max.
#
# Every response is checked: 200 (node: 201) from each route before and after the runs, and wrk's non-2xx count after
# each run (reported; a run with errors is flagged).
#
# Environment (defaults in brackets):
#   ROUNDS [3]  DURATION seconds per run [10]  CONNECTIONS [1]  WARMUP seconds [2]
#   COLD_RUNS [5]  TARGETS ["static native node"] (static is always measured: it is the baseline)
#   SERVER_CPU [0] (gateway and functions)  CLIENT_CPU [1] (wrk)
#   QUIET_WAIT seconds to wait for both CPUs to be idle before starting [60]
#   RUN_QUIET_WAIT seconds to wait again before each measured run [20]
#   GH_BIN [build/src/cli/gatehouse]  FN_ECHO [build/tests/functions/fn_echo]
#   NODE_BIN [node from PATH]  NODE_DIR [tests/functions/node] (with node_modules/aws-lambda-ric)
#   KEEP_TMP=1 keeps the temp dir (configs, server logs, raw wrk output).
#
# A short smoke run: DURATION=2 ROUNDS=1 WARMUP=1 COLD_RUNS=2 QUIET_WAIT=0 RUN_QUIET_WAIT=0.
# Progress goes to stderr; Markdown tables (medians, then every run, then cold starts) to stdout.
# Every process started here is stopped on exit (trap); wrk runs are bounded by `timeout`.
# With the defaults a run takes about 3 minutes (plus the quiet waits).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GH_BIN=${GH_BIN:-$ROOT/build/src/cli/gatehouse}
FN_ECHO=${FN_ECHO:-$(dirname "$(dirname "$(dirname "$GH_BIN")")")/tests/functions/fn_echo}
NODE_BIN=${NODE_BIN:-$(command -v node || echo /usr/bin/node)}
NODE_DIR=${NODE_DIR:-$ROOT/tests/functions/node}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-1}
WARMUP=${WARMUP:-2}
COLD_RUNS=${COLD_RUNS:-5}
TARGETS=${TARGETS:-"static native node"}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
QUIET_WAIT=${QUIET_WAIT:-60}
RUN_QUIET_WAIT=${RUN_QUIET_WAIT:-20}

die() {
  echo "invoke.sh: $*" >&2
  exit 1
}
log() { echo "# $*" >&2; }

# ---- prerequisites ----------------------------------------------------------------------------

FUNCTIONS=""
for t in $TARGETS; do
  case $t in
    static) ;;
    native | node) FUNCTIONS+="${FUNCTIONS:+ }$t" ;;
    *) die "unknown target '$t' in TARGETS (static, native, node)" ;;
  esac
done
ALL_TARGETS="static${FUNCTIONS:+ $FUNCTIONS}"
for n in ROUNDS DURATION CONNECTIONS WARMUP COLD_RUNS SERVER_CPU CLIENT_CPU QUIET_WAIT RUN_QUIET_WAIT; do
  [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a non-negative integer (got '${!n}')"
done
((ROUNDS >= 1 && DURATION >= 1 && CONNECTIONS >= 1)) ||
  die "ROUNDS, DURATION and CONNECTIONS must be at least 1"
((CONNECTIONS <= 1000)) || die "CONNECTIONS must be at most 1000 (it is the functions' reserved_concurrency)"

[[ -x $GH_BIN ]] || die "$GH_BIN not found or not executable: run \`make build\` first (or set GH_BIN)"
if [[ " $FUNCTIONS " == *" native "* ]]; then
  [[ -x $FN_ECHO ]] || die "$FN_ECHO not found: build the fn_echo target (make build) or set FN_ECHO"
fi
if [[ " $FUNCTIONS " == *" node "* ]]; then
  [[ -x $NODE_BIN ]] || die "node not found ($NODE_BIN): run \`make setup\` or set NODE_BIN"
  [[ -r $NODE_DIR/node_modules/aws-lambda-ric/index.mjs ]] ||
    die "$NODE_DIR/node_modules/aws-lambda-ric is missing: run scripts/setup (npm ci in tests/functions/node)"
fi

# ---- process bookkeeping ----------------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-invoke.XXXXXX")
STARTED=()  # every pid this script started (gateways, wrk)

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"  # stop_pids, cleanup traps, forget_pid, cpu_ticks, cpu_jiffies, ...
check_bench_host wrk taskset timeout curl getconf awk sort ps python3

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Every descendant of a pid (function workers and whatever they started), one per line.
descendants() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2; pids[NR] = $1 }
    END {
      for (i = 1; i <= NR; i++) {
        p = pids[i]; q = parent[p]; n = 0
        while (q != "" && q != 0 && q != root && n++ < 64) q = parent[q]
        if (q == root) print p
      }
    }' | sort -n
}

# Functions run as an unprivileged user when the gateway runs as root: give them world-readable
# copies of their code in the temp dir.
mkdir -p "$TMP/fn"
chmod 755 "$TMP" "$TMP/fn"
if [[ " $FUNCTIONS " == *" native "* ]]; then
  cp "$FN_ECHO" "$TMP/fn/fn_echo"
fi
if [[ " $FUNCTIONS " == *" node "* ]]; then
  mkdir -p "$TMP/fn/node"
  cp -r "$NODE_DIR/index.mjs" "$NODE_DIR/package.json" "$NODE_DIR/node_modules" "$TMP/fn/node/"
fi
chmod -R a+rX "$TMP/fn"

# ---- gateways ---------------------------------------------------------------------------------

ADMIN_TOKEN=bench-$RANDOM$RANDOM$RANDOM
ADMIN_SHA=$(printf %s "$ADMIN_TOKEN" | sha256sum | awk '{ print $1 }')

write_config() {  # name idle_timeout_s -> $TMP/NAME/gatehouse.yaml, port in PORT[NAME]
  local name=$1 idle=$2 dir=$TMP/$1 port
  port=$(free_port)
  PORT[$name]=$port
  mkdir -p "$dir"
  {
    cat <<EOF
server: {listen: "127.0.0.1:$port", threads: 1}
log: {level: warn, access_log: "off"}
store: {state: "sqlite://$dir/gh.db"}
limits: {max_connections_per_ip: 100000, idle_timeout: 60s}
admin: {token_sha256: "$ADMIN_SHA", metrics_public: true}
functions:
EOF
    if [[ " $FUNCTIONS " == *" native "* ]]; then
      echo "  - {name: native, runtime: lambda, command: [\"$TMP/fn/fn_echo\"], timeout_s: 10, reserved_concurrency: $CONNECTIONS, max_queue: 1000, idle_timeout_s: $idle}"
    fi
    if [[ " $FUNCTIONS " == *" node "* ]]; then
      echo "  - {name: node, runtime: lambda, command: [\"$NODE_BIN\", \"$TMP/fn/node/node_modules/aws-lambda-ric/index.mjs\"], working_dir: \"$TMP/fn/node\", handler: index.handler, memory_mb: 256, max_pids: 128, timeout_s: 20, reserved_concurrency: $CONNECTIONS, max_queue: 1000, idle_timeout_s: $idle}"
    fi
    echo "routes:"
    echo "  - {name: static, method: GET, path: /static, target: {static: {status: 200, body: \"{\\\"static\\\":true}\", content_type: application/json}}}"
    for f in $FUNCTIONS; do
      echo "  - {name: $f, method: GET, path: /$f, target: {function: $f}}"
    done
  } >"$dir/gatehouse.yaml"
  "$GH" validate "$dir/gatehouse.yaml" >"$dir/validate.log" 2>&1 ||
    { cat "$dir/validate.log" >&2; die "gatehouse rejected $dir/gatehouse.yaml"; }
}

start_gateway() {  # name
  local name=$1 dir=$TMP/$1 pid i
  taskset -c "$SERVER_CPU" "$GH" serve --config "$dir/gatehouse.yaml" >"$dir/out.log" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$dir/out.log" >&2; die "gatehouse ($name) exited during start-up"; }
    if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:${PORT[$name]}/static" 2>/dev/null; then
      GW_PID[$name]=$pid
      log "gatehouse ($name): pid $pid on port ${PORT[$name]}"
      return 0
    fi
    sleep 0.1
  done
  tail -n 30 "$dir/out.log" >&2
  die "gatehouse ($name) did not answer within 15 s"
}

stop_gateway() {  # name
  local pid=${GW_PID[$1]}
  stop_pids "$pid"
  forget_pid "$pid"
}

metric() {  # gateway name labels -> value (0 when absent)
  curl -fsS --max-time 2 "http://127.0.0.1:${PORT[$1]}/metrics" |
    awk -v n="$2{$3}" 'index($0, n " ") == 1 { v = $2 } END { print v + 0 }'
}

# The route answers 200 with what the target returns.
check_route() {  # gateway target
  local gw=$1 t=$2 out code want=200
  [[ $t != node ]] || want=201  # tests/functions/node/index.mjs answers 201
  out=$TMP/check-$gw-$t.txt
  code=$(curl -sS --max-time 30 -o "$out" -w '%{http_code}' "http://127.0.0.1:${PORT[$gw]}/$t") || code=000
  [[ $code == "$want" ]] || { cat "$out" >&2; tail -n 20 "$TMP/$gw/out.log" >&2; die "GET /$t on the $gw gateway answered $code, expected $want"; }
  case $t in
    static) grep -q '"static":true' "$out" || die "GET /static answered $(cat "$out")" ;;
    native) grep -q '"echo":' "$out" || die "GET /native answered $(cat "$out")" ;;
    node) grep -q '"functionName":"node"' "$out" || die "GET /node answered $(cat "$out")" ;;
  esac
}

# ---- wrk ----------------------------------------------------------------------------------------


run_wrk() {  # target seconds outfile
  local t=$1 secs=$2 out=$3 pid rc=0
  timeout -k 5 $((secs + 30)) taskset -c "$CLIENT_CPU" \
    wrk -t1 "-c$CONNECTIONS" "-d${secs}s" --latency --timeout 5s "http://127.0.0.1:${PORT[warm]}/$t" >"$out" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  wait "$pid" || rc=$?
  forget_pid "$pid"
  ((rc == 0)) || { cat "$out" >&2; die "wrk against /$t failed (exit $rc)"; }
}



ticks_sum() {  # "u s" -> u+s
  local u s
  read -r u s <<<"$1"
  echo $((u + s))
}

RESULTS=$TMP/results.tsv
: >"$RESULTS"

measure() {  # target round
  local t=$1 round=$2 out reqs rps p50 p99 errs non2xx gw_before gw_after fn_before=0 fn_after=0
  local workers workers_after gw_us fn_us flag="" other cpu_before cpu_after
  out=$TMP/wrk-$t-$round.txt
  wait_quiet "$RUN_QUIET_WAIT" "before $t round $round"
  workers=$(descendants "${GW_PID[warm]}" | tr '\n' ' ')
  cpu_before=$(cpu_jiffies "$SERVER_CPU")
  gw_before=$(ticks_sum "$(cpu_ticks "${GW_PID[warm]}")")
  # shellcheck disable=SC2086
  [[ -z $workers ]] || fn_before=$(ticks_sum "$(cpu_ticks $workers)")
  run_wrk "$t" "$DURATION" "$out"
  gw_after=$(ticks_sum "$(cpu_ticks "${GW_PID[warm]}")")
  workers_after=$(descendants "${GW_PID[warm]}" | tr '\n' ' ')
  if [[ $workers_after != "$workers" ]]; then
    flag="workers changed during the run ($workers-> $workers_after)"
  elif [[ -n $workers ]]; then
    # shellcheck disable=SC2086
    fn_after=$(ticks_sum "$(cpu_ticks $workers)")
  fi
  cpu_after=$(cpu_jiffies "$SERVER_CPU")
  reqs=$(awk '/ requests in /{print $1}' "$out")
  rps=$(awk '/^Requests\/sec:/{print $2}' "$out")
  p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$out")")
  p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$out")")
  errs=$(awk '/Socket errors:/{gsub(",", ""); print $4 + $6 + $8 + $10}' "$out")
  non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF}' "$out")
  [[ -n $reqs && $reqs -gt 0 ]] || { cat "$out" >&2; die "wrk reported no requests against /$t"; }
  ((${non2xx:-0} == 0 && ${errs:-0} == 0)) || flag+="${flag:+; }${non2xx:-0} non-2xx, ${errs:-0} socket errors"
  gw_us=$(awk -v t=$((gw_after - gw_before)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
  fn_us=$(awk -v t=$((fn_after - fn_before)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
  other=$(awk -v b="$cpu_before" -v a="$cpu_after" -v s=$((gw_after - gw_before + fn_after - fn_before)) 'BEGIN {
    split(b, x, " "); split(a, y, " "); busy = y[1] - x[1]; tot = y[2] - x[2]
    o = (busy - s) / (tot > 0 ? tot : 1) * 100; if (o < 0) o = 0; printf "%.0f", o }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$round" "$reqs" "$rps" "$p50" "$p99" \
    "$gw_us" "$fn_us" "$other" "$flag" >>"$RESULTS"
  printf '  %-6s round %d: %9s req/s  p50 %8s µs  p99 %8s µs  gateway %6s µs/req  functions %6s µs/req  (%s requests; other work on CPU %s: %s%%)%s\n' \
    "$t" "$round" "$rps" "$p50" "$p99" "$gw_us" "$fn_us" "$reqs" "$SERVER_CPU" "$other" "${flag:+  !! $flag}" >&2
}

# Cold starts: each run waits for the function's workers to be gone (idle_timeout_s: 1), then
# times one request; the cold-start counter must go up by exactly one.
COLD=$TMP/cold.tsv
: >"$COLD"
cold_start() {  # function run
  local f=$1 run=$2 i before after t code
  for ((i = 0; i < 200; i++)); do
    [[ $(metric cold gatehouse_function_workers "function=\"$f\"") == 0 ]] && break
    sleep 0.05
  done
  ((i < 200)) || die "the $f function still had workers 10 s after its idle timeout"
  before=$(metric cold gatehouse_function_cold_starts_total "function=\"$f\"")
  read -r code t < <(curl -sS --max-time 30 -o "$TMP/cold-$f-$run.txt" -w '%{http_code} %{time_total}\n' \
    "http://127.0.0.1:${PORT[cold]}/$f" || echo "000 0")
  [[ $code == 20[01] ]] || { cat "$TMP/cold-$f-$run.txt" >&2; die "cold GET /$f answered $code"; }
  after=$(metric cold gatehouse_function_cold_starts_total "function=\"$f\"")
  ((after == before + 1)) || die "cold GET /$f: cold starts went from $before to $after (expected one more)"
  t=$(awk -v s="$t" 'BEGIN { printf "%.1f", s * 1000 }')
  printf '%s\t%s\t%s\n' "$f" "$run" "$t" >>"$COLD"
  log "  cold $f run $run: $t ms"
}

# ---- run -----------------------------------------------------------------------------------------

GH=$TMP/gatehouse-bin  # a copy: a rebuild of build/ during the run changes nothing here
cp "$GH_BIN" "$GH"
declare -A PORT GW_PID
CPU_MODEL=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
GIT_DESC=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(cd "$ROOT" && git status --porcelain --untracked-files=no 2>/dev/null) ]]; then GIT_DESC+=" + uncommitted changes"; fi
log "gatehouse bench/invoke.sh — $(date -u '+%Y-%m-%d %H:%M UTC'), tree $GIT_DESC, binary $(date -u -r "$GH_BIN" '+built %H:%M UTC')"
log "machine: $(nproc) CPU(s), ${CPU_MODEL:-unknown CPU}, kernel $(uname -r)${FUNCTIONS:+; node $("$NODE_BIN" --version 2>/dev/null || echo n/a)}"
log "gateway and functions on CPU $SERVER_CPU, wrk -t1 -c$CONNECTIONS -d${DURATION}s on CPU $CLIENT_CPU; $ROUNDS round(s); targets: $ALL_TARGETS; CLK_TCK=$CLK_TCK"

write_config warm 3600
start_gateway warm
for t in $ALL_TARGETS; do check_route warm "$t"; done
log "warm gateway: every route answered as expected"

wait_quiet "$QUIET_WAIT" "before the run"
if ((WARMUP > 0)); then
  for t in $ALL_TARGETS; do run_wrk "$t" "$WARMUP" "$TMP/warmup-$t.txt"; done
fi
for ((round = 1; round <= ROUNDS; round++)); do
  for t in $ALL_TARGETS; do measure "$t" "$round"; done
done
for t in $ALL_TARGETS; do check_route warm "$t"; done
if [[ -s $TMP/warm/out.log ]]; then
  log "gatehouse (warm) wrote to its log (level warn):"
  tail -n 20 "$TMP/warm/out.log" >&2
fi
stop_gateway warm

if [[ -n $FUNCTIONS ]] && ((COLD_RUNS > 0)); then
  write_config cold 1
  start_gateway cold
  for f in $FUNCTIONS; do
    for ((run = 1; run <= COLD_RUNS; run++)); do cold_start "$f" "$run"; done
  done
  stop_gateway cold
fi

# ---- report ------------------------------------------------------------------------------------

col() {  # target column -> values
  awk -F'\t' -v t="$1" -v c="$2" '$1 == t { print $c }' "$RESULTS"
}
# Per round, the function route's figure minus the static route's (column c), then the median.
overhead() {  # target column
  awk -F'\t' -v t="$1" -v c="$2" '
    $1 == "static" { s[$2] = $c } $1 == t { f[$2] = $c }
    END { for (r in f) if ((r in s) && f[r] != "n/a" && s[r] != "n/a") printf "%.1f\n", f[r] - s[r] }' "$RESULTS" |
    sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}  # (not median(): a difference may be negative)

echo
echo "Warm invocation through the gateway: GET /static (a \`static\` target) vs GET /native and GET /node (function targets, payload 2.0, warm workers), gateway and functions on CPU $SERVER_CPU, wrk -t1 -c$CONNECTIONS -d${DURATION}s --latency on CPU $CLIENT_CPU; medians of $ROUNDS run(s). Overhead = the route's p50 (p99) minus the static route's in the same round."
echo
echo "| target | requests/s | p50 µs | p99 µs | p50 overhead µs | p99 overhead µs | gateway CPU µs/req | function CPU µs/req | flagged runs |"
echo "|---|---|---|---|---|---|---|---|---|"
for t in $ALL_TARGETS; do
  if [[ $t == static ]]; then o50="—" o99="—"; else o50=$(overhead "$t" 5) o99=$(overhead "$t" 6); fi
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$(col "$t" 4 | median)" \
    "$(col "$t" 5 | median)" "$(col "$t" 6 | median)" "$o50" "$o99" "$(col "$t" 7 | median)" \
    "$(col "$t" 8 | median)" "$(awk -F'\t' -v t="$t" '$1 == t && $10 != "" { n++ } END { print n + 0 }' "$RESULTS")"
done
echo
echo "Every run:"
echo
echo "| target | round | requests | requests/s | p50 µs | p99 µs | gateway CPU µs/req | function CPU µs/req | other work on CPU $SERVER_CPU % | flag |"
echo "|---|---|---|---|---|---|---|---|---|---|"
awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }' "$RESULTS"
if [[ -s $COLD ]]; then
  echo
  echo "Cold start: one GET through the gateway to a function with no worker (idle_timeout_s: 1, waited out), curl time_total, $COLD_RUNS run(s) per function."
  echo
  echo "| function | median ms | min ms | max ms |"
  echo "|---|---|---|---|"
  for f in $FUNCTIONS; do
    vals=$(awk -F'\t' -v f="$f" '$1 == f { print $3 }' "$COLD")
    printf '| %s | %s | %s | %s |\n' "$f" "$(median <<<"$vals")" "$(sort -g <<<"$vals" | head -n 1)" "$(sort -g <<<"$vals" | tail -n 1)"
  done
fi
