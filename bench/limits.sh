#!/usr/bin/env bash
# API-key throttling through a gateway to an upstream: Gatehouse vs nginx `limit_req` vs HAProxy
# stick tables, side by side in one run, with the same keys and the same limits.
#
#   bash bench/limits.sh     (after `make build`; wrk, nginx and haproxy come from scripts/setup)
#
# Every gateway proxies GET /api/hello to one upstream, an nginx `return 200`
# (bench/limits-upstream.conf, one worker). The gateway under test AND the upstream are pinned to
# CPU 0, wrk (`-t1 -c64 --latency`) to CPU 1. The figure compared is the GATEWAY's CPU per
# request: utime+stime of the gateway's own processes from /proc/PID/stat (Gatehouse: the process;
# nginx: master+worker; HAProxy: the process) over the run, divided by the responses wrk got. The
# upstream's CPU time is read the same way and reported beside it, never added in.
#
# Gatehouse (config written to the temp dir) checks, per request: the API key (SHA-256 + index
# lookup), whether the key's plan allows the route, and three GCRA rate layers: the route, its
# function and the key's plan. nginx (bench/limits-nginx.conf) checks one `limit_req` zone keyed on the
# header; HAProxy (bench/limits-haproxy.cfg) one stick table keyed on the header. Neither of the
# peers validates the key.
#
# Scenarios (SCENARIOS), each with one key and with KEYS distinct keys:
#   allowed-1, allowed-N  limits far above the load (1,000,000/s, burst 1,000,000 on every layer):
#                         nothing is refused; every request is proxied. Expect 0 non-2xx.
#   flood-1,   flood-N    every key over its limit: 1 request per minute per key with a burst of 1
#                         (Gatehouse plan `tight`, nginx `rate=1r/m`, HAProxy
#                         `sc_http_req_rate(0) gt 1` over 60 s), keys already used in the warm-up.
#                         Expect 429 for everything; Gatehouse and nginx let through one request
#                         per key per minute (counted as non-429 in the table).
# With one key wrk sends a fixed request (key set in wrk.headers); with N keys a wrk Lua
# `request()` hands out the KEYS pre-formatted requests round-robin. In every run a wrk Lua
# `response()` callback counts the statuses, so the status mix is that of the measured requests.
# (The callback costs wrk some CPU: about 8 % fewer 429s/s from nginx in a quick check, the same
# for every server. COUNT_STATUSES=0 drops it; non-2xx then come from wrk's own count and are
# assumed to be 429s.)
# Gatehouse keys are made with `gatehouse keys create` (KEY_JOBS processes in parallel) before
# the gateway starts: KEYS on plan `bench`, KEYS on plan `tight`. nginx and HAProxy get the same
# key strings.
#
# Environment (defaults in brackets):
#   ROUNDS [3]  DURATION seconds per run [10]  CONNECTIONS [64]  KEYS [10000]  KEY_JOBS [2]
#   WARMUP seconds of unrecorded load per server before each scenario [2] (it also uses up the
#     flood keys' single allowance)
#   SERVER_CPU [0] (gateways and upstream)  CLIENT_CPU [1] (wrk)
#   QUIET_WAIT seconds to wait for both CPUs to be idle before starting [60]
#   RUN_QUIET_WAIT seconds to wait again before each measured run [20]
#   SERVERS ["nginx haproxy gatehouse"]  SCENARIOS ["allowed-1 allowed-N flood-1 flood-N"]
#   COUNT_STATUSES [1]: count every status with a wrk Lua response() callback
#   GH_BIN [build/src/cli/gatehouse]  NGINX_BIN [nginx]  HAPROXY_BIN [haproxy]
#   KEEP_TMP=1 keeps the temp dir (configs, keys, server logs, raw wrk output).
#
# Progress goes to stderr; Markdown tables (medians, then every run) to stdout. Each run reports
# how busy each core was with work other than the gateway under test, the upstream and wrk.
# Every process started here is stopped on exit (trap); wrk runs are bounded by `timeout`.
# With the defaults a run takes about 13 minutes, 3 of them creating 20,000 keys.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GH_BIN=${GH_BIN:-$ROOT/build/src/cli/gatehouse}
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
HAPROXY_BIN=${HAPROXY_BIN:-$(command -v haproxy || echo /usr/sbin/haproxy)}
UPSTREAM_CONF=$ROOT/bench/limits-upstream.conf
NGINX_CONF_TEMPLATE=$ROOT/bench/limits-nginx.conf
HAPROXY_CONF_TEMPLATE=$ROOT/bench/limits-haproxy.cfg
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
KEYS=${KEYS:-10000}
KEY_JOBS=${KEY_JOBS:-2}
WARMUP=${WARMUP:-2}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
SERVERS=${SERVERS:-"nginx haproxy gatehouse"}
SCENARIOS=${SCENARIOS:-"allowed-1 allowed-N flood-1 flood-N"}
QUIET_WAIT=${QUIET_WAIT:-60}
RUN_QUIET_WAIT=${RUN_QUIET_WAIT:-20}
COUNT_STATUSES=${COUNT_STATUSES:-1}
UPSTREAM_BODY='hello from upstream'$'\n'
REQ_PATH=/api/hello

die() {
  echo "limits.sh: $*" >&2
  exit 1
}
log() { echo "# $*" >&2; }

# ---- prerequisites ----------------------------------------------------------------------------

for s in $SERVERS; do
  [[ $s == nginx || $s == haproxy || $s == gatehouse ]] ||
    die "unknown server '$s' in SERVERS (nginx, haproxy, gatehouse)"
done
for c in $SCENARIOS; do
  [[ $c == allowed-1 || $c == allowed-N || $c == flood-1 || $c == flood-N ]] ||
    die "unknown scenario '$c' in SCENARIOS (allowed-1, allowed-N, flood-1, flood-N)"
done
for n in ROUNDS DURATION CONNECTIONS KEYS KEY_JOBS WARMUP SERVER_CPU CLIENT_CPU QUIET_WAIT RUN_QUIET_WAIT COUNT_STATUSES; do
  [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a non-negative integer (got '${!n}')"
done
((ROUNDS >= 1 && DURATION >= 1 && CONNECTIONS >= 1 && KEYS >= 1 && KEY_JOBS >= 1)) ||
  die "ROUNDS, DURATION, CONNECTIONS, KEYS and KEY_JOBS must be at least 1"

[[ -x $GH_BIN ]] || die "$GH_BIN not found or not executable: run \`make build\` first (or set GH_BIN)"
[[ -x $NGINX_BIN ]] || die "nginx not found ($NGINX_BIN): run \`make setup\` (installs nginx-light) or set NGINX_BIN"
if [[ " $SERVERS " == *" haproxy "* && ! -x $HAPROXY_BIN ]]; then
  die "haproxy not found ($HAPROXY_BIN): run \`make setup\` (installs haproxy) or set HAPROXY_BIN"
fi
for f in "$UPSTREAM_CONF" "$NGINX_CONF_TEMPLATE" "$HAPROXY_CONF_TEMPLATE"; do
  [[ -r $f ]] || die "missing $f"
done

# ---- process bookkeeping ----------------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-limits.XXXXXX")
STARTED=()  # every pid this script started (servers, nginx workers, wrk)

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"  # stop_pids, cleanup traps, forget_pid, cpu_ticks, ...
check_bench_host wrk taskset timeout curl getconf awk sort xargs python3

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Resident memory in MiB, summed over the given pids (VmRSS from /proc/PID/status).
rss_mib() {
  local pid kb=0 v
  for pid in "$@"; do
    v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
    kb=$((kb + ${v:-0}))
  done
  awk -v k="$kb" 'BEGIN { printf "%.1f", k / 1024 }'
}

# CPU seconds (user+sys) used so far by this shell's reaped children (brackets a wrk run).
CHILD_CPU=0

wait_ready() {  # name url pid logfile [curl args...]
  local name=$1 url=$2 pid=$3 logf=$4 i
  shift 4
  for ((i = 0; i < 150; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "---- $name output ----" >&2
      tail -n 30 "$logf" >&2 || true
      die "$name exited during start-up"
    fi
    if curl -sS -o /dev/null --max-time 1 "$@" "$url" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  tail -n 30 "$logf" >&2 || true
  die "$name did not answer $url within 15 s"
}

declare -A PIDS URL_ALLOWED URL_FLOOD RESP_BYTES
UPSTREAM_PIDS=""

start_upstream() {
  local port dir=$TMP/upstream pid w
  port=$(free_port)
  mkdir -p "$dir"
  sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" "$UPSTREAM_CONF" >"$dir/nginx.conf"
  "$NGINX_BIN" -t -q -p "$dir" -e "$dir/nginx-error.log" -c "$dir/nginx.conf" >"$dir/out.log" 2>&1 ||
    { cat "$dir/out.log" "$dir/nginx-error.log" >&2 2>/dev/null; die "nginx rejected $dir/nginx.conf"; }
  taskset -c "$SERVER_CPU" "$NGINX_BIN" -p "$dir" -e "$dir/nginx-error.log" -c "$dir/nginx.conf" \
    >>"$dir/out.log" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  UPSTREAM_PORT=$port
  wait_ready upstream "http://127.0.0.1:$port/" "$pid" "$dir/nginx-error.log"
  UPSTREAM_PIDS=$pid
  for w in $(ps -o pid= --ppid "$pid"); do
    UPSTREAM_PIDS+=" $w"
    STARTED+=("$w")
  done
  [[ $UPSTREAM_PIDS == *" "* ]] || die "upstream nginx started no worker process"
  log "upstream nginx: master+worker pids $UPSTREAM_PIDS on port $port"
}

start_nginx() {
  local pa pf dir=$TMP/nginx pid w
  pa=$(free_port)
  pf=$(free_port)
  mkdir -p "$dir"
  sed -e "s|@DIR@|$dir|g" -e "s|@PORT_ALLOWED@|$pa|g" -e "s|@PORT_FLOOD@|$pf|g" \
    -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" "$NGINX_CONF_TEMPLATE" >"$dir/nginx.conf"
  "$NGINX_BIN" -t -q -p "$dir" -e "$dir/nginx-error.log" -c "$dir/nginx.conf" >"$dir/out.log" 2>&1 ||
    { cat "$dir/out.log" "$dir/nginx-error.log" >&2 2>/dev/null; die "nginx rejected $dir/nginx.conf"; }
  taskset -c "$SERVER_CPU" "$NGINX_BIN" -p "$dir" -e "$dir/nginx-error.log" -c "$dir/nginx.conf" \
    >>"$dir/out.log" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  URL_ALLOWED[nginx]="http://127.0.0.1:$pa$REQ_PATH"
  URL_FLOOD[nginx]="http://127.0.0.1:$pf$REQ_PATH"
  wait_ready nginx "${URL_ALLOWED[nginx]}" "$pid" "$dir/nginx-error.log"
  PIDS[nginx]="$pid"
  for w in $(ps -o pid= --ppid "$pid"); do
    PIDS[nginx]+=" $w"
    STARTED+=("$w")
  done
  [[ ${PIDS[nginx]} == *" "* ]] || die "nginx started no worker process"
  log "nginx: master+worker pids ${PIDS[nginx]} on ports $pa (allowed) and $pf (flood)"
}

start_haproxy() {
  local pa pf dir=$TMP/haproxy pid
  pa=$(free_port)
  pf=$(free_port)
  mkdir -p "$dir"
  sed -e "s|@PORT_ALLOWED@|$pa|g" -e "s|@PORT_FLOOD@|$pf|g" \
    -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" "$HAPROXY_CONF_TEMPLATE" >"$dir/haproxy.cfg"
  "$HAPROXY_BIN" -c -q -f "$dir/haproxy.cfg" >"$dir/out.log" 2>&1 ||
    { cat "$dir/out.log" >&2; die "haproxy rejected $dir/haproxy.cfg"; }
  taskset -c "$SERVER_CPU" "$HAPROXY_BIN" -db -f "$dir/haproxy.cfg" >>"$dir/out.log" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  URL_ALLOWED[haproxy]="http://127.0.0.1:$pa$REQ_PATH"
  URL_FLOOD[haproxy]="http://127.0.0.1:$pf$REQ_PATH"
  wait_ready haproxy "${URL_ALLOWED[haproxy]}" "$pid" "$dir/out.log"
  [[ -z $(ps -o pid= --ppid "$pid") ]] || die "haproxy forked; expected one process (-db)"
  PIDS[haproxy]="$pid"
  log "haproxy: pid $pid on ports $pa (allowed) and $pf (flood)"
}

# Gatehouse: the config is written (and the keys created) before start_gatehouse.
GH_PORT=""
write_gatehouse_config() {
  local dir=$TMP/gatehouse
  GH_PORT=$(free_port)
  mkdir -p "$dir"
  cat >"$dir/gatehouse.yaml" <<EOF
server: {listen: "127.0.0.1:$GH_PORT", threads: 1}
log: {level: warn, access_log: "off"}
store: {state: "sqlite://$dir/gh.db"}
limits: {max_connections_per_ip: 100000, idle_timeout: 60s}
admin: {metrics_public: true}
# forward: the peers pass the key header on to the upstream, so Gatehouse does too here (its
# default removes it).
api_keys: {header: x-api-key, forward: true}
upstreams:
  - {name: up, url: "http://127.0.0.1:$UPSTREAM_PORT"}
functions:
  - {name: fn, throttle: {rate: 1000000, burst: 1000000}}
plans:
  - {name: bench, throttle: {rate: 1000000, burst: 1000000}}
  # 1 request per minute (rate in requests per second), burst 1: the nginx 1r/m of the peer.
  - {name: tight, throttle: {rate: 0.0166667, burst: 1}}
routes:
  - {name: api, method: GET, path: "/api/{proxy+}", api_key: required, function: fn, throttle: {rate: 1000000, burst: 1000000}, target: {http: {upstream: up}}}
EOF
  "$GH" validate "$dir/gatehouse.yaml" >"$dir/validate.log" 2>&1 ||
    { cat "$dir/validate.log" >&2; die "gatehouse rejected $dir/gatehouse.yaml"; }
}

start_gatehouse() {
  local dir=$TMP/gatehouse pid
  taskset -c "$SERVER_CPU" "$GH" serve --config "$dir/gatehouse.yaml" >"$dir/out.log" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  URL_ALLOWED[gatehouse]="http://127.0.0.1:$GH_PORT$REQ_PATH"
  URL_FLOOD[gatehouse]="http://127.0.0.1:$GH_PORT$REQ_PATH"
  wait_ready gatehouse "http://127.0.0.1:$GH_PORT/metrics" "$pid" "$dir/out.log"
  PIDS[gatehouse]="$pid"
  log "gatehouse: pid $pid on port $GH_PORT"
}

# ---- keys ----------------------------------------------------------------------------------------

# KEYS keys on plan `bench` (allowed path) and KEYS on `tight` (flood path), one
# `gatehouse keys create` process each (it prints the key on stdout), KEY_JOBS at a time.
# `keys create` fails at once with "database is locked" when another process holds the store's
# lock as it opens it (the store sets its busy timeout only after `PRAGMA journal_mode = WAL`):
# such a failure happens before anything is written, so it is retried; retries are counted.
create_one_key() {  # name plan -> key on stdout
  local try out err=$TMP/gatehouse/key-$BASHPID.err
  for ((try = 1; try <= 50; try++)); do
    if out=$("$GH" keys create --config "$TMP/gatehouse/gatehouse.yaml" --name "$1" --plan "$2" \
      2>"$err"); then
      printf '%s\n' "$out"
      return 0
    fi
    grep -q 'database is locked' "$err" || { cat "$err" >&2; return 1; }
    echo "$1" >>"$TMP/gatehouse/key-retries"
    sleep "0.0$((RANDOM % 50 + 10))"
  done
  cat "$err" >&2
  return 1
}

create_keys() {  # plan prefix outfile
  local plan=$1 prefix=$2 out=$3 n t0 t1 j i pids=() pid rc=0
  t0=$(date +%s.%N)
  for ((j = 0; j < KEY_JOBS; j++)); do
    (
      for ((i = 1 + j; i <= KEYS; i += KEY_JOBS)); do create_one_key "$prefix$i" "$plan" || exit 1; done
    ) >"$out.$j" &
    pids+=($!)
    STARTED+=($!)
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || rc=1
    forget_pid "$pid"
  done
  ((rc == 0)) || die "gatehouse keys create failed"
  cat "$out".* >"$out"
  rm -f "$out".*
  n=$(grep -c '^ghk_[0-9a-f]\{16\}_[0-9a-f]\{48\}$' "$out" || true)
  [[ $n == "$KEYS" && $(sort -u "$out" | wc -l) == "$KEYS" ]] ||
    die "expected $KEYS distinct keys on plan $plan, got $n"
  t1=$(date +%s.%N)
  log "created $KEYS keys on plan $plan in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }') s ($KEY_JOBS in parallel; $( (wc -l <"$TMP/gatehouse/key-retries") 2>/dev/null || echo 0) retries so far after \"database is locked\")"
}

# ---- wrk scripts -----------------------------------------------------------------------------------

# Status counting, shared by every script: a thread-global table read back in done().
STATUS_LUA=''
((COUNT_STATUSES)) && STATUS_LUA='
counts = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body) counts[status] = (counts[status] or 0) + 1 end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("counts")) do io.write(string.format("status %d %d\n", code, n)) end
  end
end'

write_wrk_scripts() {
  local plan k
  for plan in bench tight; do
    k=$(head -n 1 "$TMP/keys-$plan.txt")
    {
      echo "-- one key: a fixed request (no request() function), statuses counted"
      echo "wrk.headers[\"x-api-key\"] = \"$k\""
      echo "$STATUS_LUA"
    } >"$TMP/one-$plan.lua"
    {
      echo "-- $KEYS keys round-robin: the requests are formatted once, in init()"
      echo "local reqs, i = {}, 0"
      echo "function init(args)"
      echo "  for key in io.lines(\"$TMP/keys-$plan.txt\") do"
      echo "    reqs[#reqs + 1] = wrk.format(nil, nil, {[\"x-api-key\"] = key})"
      echo "  end"
      echo "end"
      echo "function request()"
      echo "  i = i + 1"
      echo "  if i > #reqs then i = 1 end"
      echo "  return reqs[i]"
      echo "end"
      echo "$STATUS_LUA"
    } >"$TMP/many-$plan.lua"
  done
}

# scenario -> wrk script and which URL
scenario_script() {
  case $1 in
    allowed-1) echo "$TMP/one-bench.lua" ;;
    allowed-N) echo "$TMP/many-bench.lua" ;;
    flood-1) echo "$TMP/one-tight.lua" ;;
    flood-N) echo "$TMP/many-tight.lua" ;;
  esac
}
scenario_url() {  # server scenario
  case $2 in
    allowed-*) echo "${URL_ALLOWED[$1]}" ;;
    flood-*) echo "${URL_FLOOD[$1]}" ;;
  esac
}
scenario_label() {
  case $1 in
    *-1) echo "1 key" ;;
    *-N) echo "$KEYS keys" ;;
  esac
}

# ---- checks ------------------------------------------------------------------------------------

# The allowed path answers 200 with the upstream's body, three times on one connection; the flood
# path answers 429 (its key is used up first), also keeping the connection.
check_server() {  # server
  local s=$1 kb kt got codes
  kb=$(head -n 1 "$TMP/keys-bench.txt")
  kt=$(head -n 1 "$TMP/keys-tight.txt")
  got=$(curl -sS --max-time 2 -H "x-api-key: $kb" "${URL_ALLOWED[$s]}"; printf x)
  got=${got%x}
  [[ $got == "$UPSTREAM_BODY" ]] || die "$s (allowed) answered $(printf %q "$got") instead of the upstream's body"
  codes=$(curl -sS --max-time 2 -o /dev/null -o /dev/null -o /dev/null -w '%{http_code}/%{num_connects} ' -H "x-api-key: $kb" \
    "${URL_ALLOWED[$s]}" "${URL_ALLOWED[$s]}" "${URL_ALLOWED[$s]}")
  [[ $codes == "200/1 200/0 200/0 " ]] || die "$s (allowed): status/new connections $codes, expected 200/1 200/0 200/0"
  curl -sS --max-time 2 -o /dev/null -H "x-api-key: $kt" "${URL_FLOOD[$s]}" || true
  codes=$(curl -sS --max-time 2 -o /dev/null -o /dev/null -o /dev/null -w '%{http_code}/%{num_connects} ' -H "x-api-key: $kt" \
    "${URL_FLOOD[$s]}" "${URL_FLOOD[$s]}" "${URL_FLOOD[$s]}")
  [[ $codes == "429/1 429/0 429/0 " ]] || die "$s (flood): status/new connections $codes, expected 429/1 429/0 429/0"
  # Whole 429 (status line + headers + body), for the record.
  RESP_BYTES[$s]=$(curl -sS --max-time 2 -i -H "x-api-key: $kt" "${URL_FLOOD[$s]}" | wc -c)
}

# ---- wrk -----------------------------------------------------------------------------------------


run_wrk() {  # server scenario seconds outfile
  local server=$1 scenario=$2 secs=$3 out=$4 pid rc
  local args=(-t1 "-c$CONNECTIONS" "-d${secs}s" --latency --timeout 5s -s "$(scenario_script "$scenario")")
  timeout -k 5 $((secs + 30)) taskset -c "$CLIENT_CPU" wrk "${args[@]}" "$(scenario_url "$server" "$scenario")" >"$out" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  rc=0
  wait "$pid" || rc=$?
  forget_pid "$pid"
  if ((rc != 0)); then
    cat "$out" >&2
    die "wrk against $server ($scenario) failed (exit $rc)"
  fi
}



RESULTS=$TMP/results.tsv
: >"$RESULTS"

measure() {  # server scenario round
  local server=$1 scenario=$2 round=$3 out reqs rps p50 p99 errs non2xx
  local before after ub sb ua sa ticks cpu_us user_us up_before up_after up_ticks up_us
  local cpu_before cpu_after ccpu_before ccpu_after wrk_before wrk_after other other_client
  local n429 n2xx nother mix rss
  out=$TMP/wrk-$server-$scenario-$round.txt
  wait_quiet "$RUN_QUIET_WAIT" "before $server $scenario round $round"
  cpu_before=$(cpu_jiffies "$SERVER_CPU")
  ccpu_before=$(cpu_jiffies "$CLIENT_CPU")
  children_cpu
  wrk_before=$CHILD_CPU
  # shellcheck disable=SC2086
  before=$(cpu_ticks ${PIDS[$server]})
  # shellcheck disable=SC2086
  up_before=$(cpu_ticks $UPSTREAM_PIDS)
  run_wrk "$server" "$scenario" "$DURATION" "$out"
  # shellcheck disable=SC2086
  after=$(cpu_ticks ${PIDS[$server]})
  # shellcheck disable=SC2086
  up_after=$(cpu_ticks $UPSTREAM_PIDS)
  cpu_after=$(cpu_jiffies "$SERVER_CPU")
  ccpu_after=$(cpu_jiffies "$CLIENT_CPU")
  children_cpu
  wrk_after=$CHILD_CPU
  reqs=$(awk '/ requests in /{print $1}' "$out")
  rps=$(awk '/^Requests\/sec:/{print $2}' "$out")
  p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$out")")
  p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$out")")
  errs=$(awk '/Socket errors:/{gsub(",", ""); print $4 + $6 + $8 + $10}' "$out")
  non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF}' "$out")
  [[ -n $reqs && $reqs -gt 0 ]] || { cat "$out" >&2; die "wrk reported no requests against $server"; }
  # Status mix from the Lua response() counter.
  n2xx=$(awk '$1 == "status" && $2 >= 200 && $2 < 300 { s += $3 } END { print s + 0 }' "$out")
  n429=$(awk '$1 == "status" && $2 == 429 { s += $3 } END { print s + 0 }' "$out")
  nother=$(awk '$1 == "status" && !($2 >= 200 && $2 < 300) && $2 != 429 { s += $3 } END { print s + 0 }' "$out")
  mix=$(awk '$1 == "status" { printf "%s%s:%s", sep, $2, $3; sep = " " }' "$out")
  if ! ((COUNT_STATUSES)); then  # wrk's own count only: non-2xx assumed to be 429
    n2xx=$((reqs - ${non2xx:-0}))
    n429=${non2xx:-0}
    nother=0
    mix="2xx:$n2xx non-2xx:$n429"
  fi
  read -r ub sb <<<"$before"
  read -r ua sa <<<"$after"
  ticks=$(((ua - ub) + (sa - sb)))
  cpu_us=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
  user_us=$(awk -v t=$((ua - ub)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
  read -r ub sb <<<"$up_before"
  read -r ua sa <<<"$up_after"
  up_ticks=$(((ua - ub) + (sa - sb)))
  up_us=$(awk -v t="$up_ticks" -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
  # Time CPU 0 spent on anything but the gateway under test and the upstream.
  other=$(awk -v b="$cpu_before" -v a="$cpu_after" -v s=$((ticks + up_ticks)) 'BEGIN {
    split(b, x, " "); split(a, y, " "); busy = y[1] - x[1]; tot = y[2] - x[2]
    o = (busy - s) / (tot > 0 ? tot : 1) * 100; if (o < 0) o = 0; printf "%.0f", o }')
  other_client=$(awk -v b="$ccpu_before" -v a="$ccpu_after" -v w0="$wrk_before" -v w1="$wrk_after" -v hz="$CLK_TCK" 'BEGIN {
    split(b, x, " "); split(a, y, " "); busy = y[1] - x[1]; tot = y[2] - x[2]
    o = (busy - (w1 - w0) * hz) / (tot > 0 ? tot : 1) * 100; if (o < 0) o = 0; printf "%.0f", o }')
  # shellcheck disable=SC2086
  rss=$(rss_mib ${PIDS[$server]})
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$server" "$scenario" "$round" "$reqs" "$rps" "$p50" "$p99" "$cpu_us" "${errs:-0}" "${non2xx:-0}" \
    "$other" "$user_us" "$other_client" "$up_us" "$n2xx" "$n429" "$nother" "$mix" "$rss" >>"$RESULTS"
  printf '  %-9s %-9s round %d: %9s req/s  p50 %8s µs  p99 %8s µs  gateway %6s µs/req (user %s), upstream %s µs/req  statuses [%s]  RSS %s MiB  (%s requests; other work: CPU %s %s%%, CPU %s %s%%%s)\n' \
    "$server" "$scenario" "$round" "$rps" "$p50" "$p99" "$cpu_us" "$user_us" "$up_us" "$mix" "$rss" "$reqs" \
    "$SERVER_CPU" "$other" "$CLIENT_CPU" "$other_client" "${errs:+, socket errors $errs}" >&2
}

# ---- run ---------------------------------------------------------------------------------------

GH=$TMP/gatehouse-bin  # a copy: a rebuild of build/ during the run changes nothing here
cp "$GH_BIN" "$GH"
CPU_MODEL=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
GIT_DESC=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(cd "$ROOT" && git status --porcelain --untracked-files=no 2>/dev/null) ]]; then GIT_DESC+=" + uncommitted changes"; fi
log "gatehouse bench/limits.sh — $(date -u '+%Y-%m-%d %H:%M UTC'), tree $GIT_DESC, binary $(date -u -r "$GH_BIN" '+built %H:%M UTC')"
log "machine: $(nproc) CPU(s), ${CPU_MODEL:-unknown CPU}, kernel $(uname -r); $("$NGINX_BIN" -v 2>&1 | sed 's/.*: //'), $("$HAPROXY_BIN" -v 2>/dev/null | awk 'NR == 1 { print "HAProxy " $3 }')"
log "gateways and upstream on CPU $SERVER_CPU, wrk -t1 -c$CONNECTIONS -d${DURATION}s on CPU $CLIENT_CPU; $ROUNDS round(s); $KEYS keys; CLK_TCK=$CLK_TCK"

start_upstream
write_gatehouse_config
create_keys bench b "$TMP/keys-bench.txt"
create_keys tight t "$TMP/keys-tight.txt"
write_wrk_scripts

for s in $SERVERS; do "start_$s"; done
for s in $SERVERS; do
  check_server "$s"
  log "$s: checked (allowed 200 with the upstream's body, flood 429, keep-alive); a 429 is ${RESP_BYTES[$s]} bytes on the wire"
done

wait_quiet "$QUIET_WAIT" "before the run"

for scenario in $SCENARIOS; do
  log "scenario $scenario ($(scenario_label "$scenario"))"
  if ((WARMUP > 0)); then
    for s in $SERVERS; do run_wrk "$s" "$scenario" "$WARMUP" "$TMP/warmup-$s-$scenario.txt"; done
  fi
  for ((round = 1; round <= ROUNDS; round++)); do
    for s in $SERVERS; do
      measure "$s" "$scenario" "$round"
    done
  done
done

# Still alive and still answering correctly after the load?
for s in $SERVERS; do check_server "$s"; done
GH_METRICS=""
if [[ " $SERVERS " == *" gatehouse "* ]]; then
  GH_METRICS=$(curl -fsS --max-time 2 "http://127.0.0.1:$GH_PORT/metrics" |
    grep -E '^gatehouse_(requests_total|refusals_total)' || true)
  if [[ -s $TMP/gatehouse/out.log ]]; then
    log "gatehouse wrote to its log (level warn):"
    tail -n 20 "$TMP/gatehouse/out.log" >&2
  fi
fi

# ---- report ------------------------------------------------------------------------------------

col() {  # server scenario column -> values
  awk -F'\t' -v s="$1" -v v="$2" -v c="$3" '$1 == s && $2 == v { print $c }' "$RESULTS"
}
total() {  # server scenario column -> sum
  col "$1" "$2" "$3" | awk '{ s += $1 } END { print s + 0 }'
}

report() {  # path (allowed|flood)
  local path=$1 scenario s rps p50 p99 ratio up nbad nall
  declare -A MED=()
  echo
  if [[ $path == allowed ]]; then
    echo "Allowed path: GET $REQ_PATH with an API key, proxied to an nginx \`return 200\` upstream; gateway and upstream on CPU $SERVER_CPU, wrk -t1 -c$CONNECTIONS -d${DURATION}s on CPU $CLIENT_CPU; medians of $ROUNDS runs. Gateway CPU excludes the upstream's."
    echo
    echo "| keys | server | requests/s | p50 | p99 | gateway CPU per request | gateway / nginx CPU | upstream CPU per request | non-2xx (all runs) |"
  else
    echo "Flood path: every key over its limit (1 request per minute, used up in the warm-up), so requests are refused with 429 (nginx and Gatehouse let one request per key per minute through; HAProxy counts refused requests too and lets none through); same setup; medians of $ROUNDS runs."
    echo
    echo "| keys | server | refusals/s | p50 | p99 | gateway CPU per refusal | gateway / nginx CPU | non-429 (all runs) |"
  fi
  if [[ $path == allowed ]]; then echo '|---|---|---:|---:|---:|---:|---:|---:|---:|'; else echo '|---|---|---:|---:|---:|---:|---:|---:|'; fi
  for scenario in $SCENARIOS; do
    [[ $scenario == "$path"-* ]] || continue
    for s in $SERVERS; do MED[$s]=$(col "$s" "$scenario" 8 | median); done
    for s in $SERVERS; do
      ratio="—"
      if [[ $s != nginx && -n ${MED[nginx]:-} ]]; then
        ratio=$(awk -v g="${MED[$s]}" -v n="${MED[nginx]}" 'BEGIN { printf "%.2fx", g / n }')
      fi
      if [[ $path == allowed ]]; then
        rps=$(col "$s" "$scenario" 5 | median)
      else
        # refusals/s: requests/s times the 429 share of the run
        rps=$(awk -F'\t' -v s="$s" -v v="$scenario" '$1 == s && $2 == v { print $5 * $16 / $4 }' "$RESULTS" | median)
      fi
      p50=n/a
      p99=n/a
      if ! col "$s" "$scenario" 6 | grep -q n/a; then p50="$(col "$s" "$scenario" 6 | median) µs"; fi
      if ! col "$s" "$scenario" 7 | grep -q n/a; then p99="$(col "$s" "$scenario" 7 | median) µs"; fi
      nall=$(total "$s" "$scenario" 4)
      if [[ $path == allowed ]]; then
        nbad=$(($(total "$s" "$scenario" 16) + $(total "$s" "$scenario" 17)))
        up=$(col "$s" "$scenario" 14 | median)
        printf '| %s | %s | %.0f | %s | %s | %s µs | %s | %s µs | %s of %s |\n' "$(scenario_label "$scenario")" "$s" \
          "$rps" "$p50" "$p99" "${MED[$s]}" "$ratio" "$up" "$nbad" "$nall"
      else
        nbad=$(($(total "$s" "$scenario" 15) + $(total "$s" "$scenario" 17)))
        printf '| %s | %s | %.0f | %s | %s | %s µs | %s | %s of %s |\n' "$(scenario_label "$scenario")" "$s" \
          "$rps" "$p50" "$p99" "${MED[$s]}" "$ratio" "$nbad" "$nall"
      fi
    done
  done
}

[[ " $SCENARIOS " == *" allowed-"* ]] && report allowed
[[ " $SCENARIOS " == *" flood-"* ]] && report flood
echo
errors=$(awk -F'\t' '$9 > 0' "$RESULTS" | wc -l)
if ((errors > 0)); then
  echo "Warning: $errors run(s) saw socket errors:"
  awk -F'\t' '$9 > 0 { printf "  %s %s round %s: socket errors %s\n", $1, $2, $3, $9 }' "$RESULTS"
fi
other_med=$(cut -f11 "$RESULTS" | median)
other_max=$(cut -f11 "$RESULTS" | sort -g | tail -n 1)
client_med=$(cut -f13 "$RESULTS" | median)
client_max=$(cut -f13 "$RESULTS" | sort -g | tail -n 1)
echo "Other work (not the gateway under test, not the upstream, not wrk) during the runs: CPU $SERVER_CPU median $other_med %, max $other_max %; CPU $CLIENT_CPU median $client_med %, max $client_max %. Waited $QUIET_WAITED s in total for quiet."
if ((other_max > 10 || client_max > 10)); then
  echo "Warning: above 10 % the runs competed for their cores; treat those runs' figures as upper bounds."
fi
echo "Gateway CPU per request = (utime+stime of the gateway's process(es) over the run, /proc/PID/stat, CLK_TCK=$CLK_TCK) / responses wrk got. Non-2xx and non-429 are counted by a wrk Lua response() callback over every measured request."
((COUNT_STATUSES)) || echo "COUNT_STATUSES=0: statuses were not counted one by one; non-2xx responses (wrk's count) are assumed to be 429s."
if [[ -n $GH_METRICS ]]; then
  echo "Gatehouse /metrics at the end (warm-ups, checks and runs together):"
  echo
  echo '```'
  echo "$GH_METRICS"
  echo '```'
fi
echo "Per-run figures:"
echo
echo "| server | scenario | round | requests | requests/s | p50 µs | p99 µs | gateway CPU µs/req | of which user | upstream CPU µs/req | statuses | gateway RSS after | other work on CPU $SERVER_CPU / CPU $CLIENT_CPU |"
echo '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|'
awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s MiB | %s %% / %s %% |\n", $1, $2, $3, $4, $5, $6, $7, $8, $12, $14, $18, $19, $11, $13 }' "$RESULTS"
