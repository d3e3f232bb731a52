#!/usr/bin/env bash
# Gatehouse static route vs nginx `return 200`, side by side in one run.
#
#   bash bench/gateway.sh            (after `make build`; wrk and nginx come from scripts/setup)
#
# Both servers answer GET /hello with "hello from gatehouse\n" (text/plain) on a free loopback
# port. The server under test is pinned to CPU 0 and wrk to CPU 1 (`wrk -t1 -c64 --latency`).
# One wrk thread saturates near 165k requests/s on a 2-vCPU guest, so requests/s alone does not
# separate the servers: the comparable figure is the server's CPU time per request, read from
# /proc/PID/stat (utime+stime of the whole process; for nginx master+worker) over the run
# divided by the requests wrk completed. Runs alternate nginx, gatehouse for ROUNDS rounds;
# the table gives medians. A second variant pipelines PIPELINE_DEPTH requests per write.
#
# Environment (defaults in brackets):
#   ROUNDS [3]  DURATION seconds per run [10]  CONNECTIONS [64]  PIPELINE_DEPTH [16]
#   WARMUP seconds of unrecorded load after each server starts [2]
#   SERVER_CPU [0]  CLIENT_CPU [1]
#   QUIET_WAIT seconds to wait for both CPUs to be idle before starting [60]
#   SERVERS ["nginx gatehouse"]  (e.g. SERVERS=nginx to run the nginx half alone)
#   VARIANTS ["plain pipelined"]
#   GH_BIN [build/src/cli/gatehouse]  NGINX_BIN [nginx from PATH or /usr/sbin/nginx]
#   KEEP_TMP=1 keeps the temp dir (configs, server logs, raw wrk output) for inspection.
#
# Progress goes to stderr; the Markdown table (medians, gatehouse/nginx ratio, then every run)
# to stdout, ready to paste. Each run also reports how busy each core was with work other than
# the server and wrk: above 10 % the figures are flagged as upper bounds.
#
# Every process started here is stopped on exit (trap). Each wrk run is bounded by `timeout`,
# server start-up by a 15 s readiness poll, shutdown by 5 s before SIGKILL. With the defaults
# the whole run takes about 2.5 minutes (plus up to QUIET_WAIT).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GH_BIN=${GH_BIN:-$ROOT/build/src/cli/gatehouse}
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
NGINX_CONF_TEMPLATE=$ROOT/bench/nginx-static.conf
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
PIPELINE_DEPTH=${PIPELINE_DEPTH:-16}
WARMUP=${WARMUP:-2}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
SERVERS=${SERVERS:-"nginx gatehouse"}
VARIANTS=${VARIANTS:-"plain pipelined"}
QUIET_WAIT=${QUIET_WAIT:-60}
BODY='hello from gatehouse'$'\n'

die() {
  echo "gateway.sh: $*" >&2
  exit 1
}
log() { echo "# $*" >&2; }

# ---- prerequisites ----------------------------------------------------------------------------

for s in $SERVERS; do
  [[ $s == nginx || $s == gatehouse ]] || die "unknown server '$s' in SERVERS (nginx, gatehouse)"
done
for v in $VARIANTS; do
  [[ $v == plain || $v == pipelined ]] || die "unknown variant '$v' in VARIANTS (plain, pipelined)"
done
for n in ROUNDS DURATION CONNECTIONS PIPELINE_DEPTH WARMUP SERVER_CPU CLIENT_CPU QUIET_WAIT; do
  [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a non-negative integer (got '${!n}')"
done
((ROUNDS >= 1 && DURATION >= 1 && CONNECTIONS >= 1 && PIPELINE_DEPTH >= 1)) ||
  die "ROUNDS, DURATION, CONNECTIONS and PIPELINE_DEPTH must be at least 1"

if [[ " $SERVERS " == *" gatehouse "* && ! -x $GH_BIN ]]; then
  die "$GH_BIN not found or not executable: run \`make build\` first (or set GH_BIN)"
fi
if [[ " $SERVERS " == *" nginx "* && ! -x $NGINX_BIN ]]; then
  die "nginx not found ($NGINX_BIN): run \`make setup\` (installs nginx-light) or set NGINX_BIN"
fi
[[ -r $NGINX_CONF_TEMPLATE ]] || die "missing $NGINX_CONF_TEMPLATE"

# ---- process bookkeeping ----------------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-bench.XXXXXX")
STARTED=()  # every pid this script started (servers, nginx workers, wrk)

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"  # stop_pids, cleanup traps, forget_pid, cpu_ticks, ...
check_bench_host wrk taskset timeout curl getconf awk sort

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
    return
  fi
  local p
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  die "no free port found"
}

# Sets CHILD_CPU to the CPU seconds (user+sys) used so far by this shell's reaped children, so
# it brackets a wrk run. `times` must run in this shell (not in a pipe or $(...)), hence the file.
CHILD_CPU=0

wait_ready() {  # name url pid logfile
  local name=$1 url=$2 pid=$3 logf=$4 i
  for ((i = 0; i < 150; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "---- $name output ----" >&2
      tail -n 30 "$logf" >&2 || true
      die "$name exited during start-up"
    fi
    if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  tail -n 30 "$logf" >&2 || true
  die "$name did not answer $url within 15 s"
}

check_response() {  # name url
  local name=$1 url=$2 got ctype
  got=$(curl -fsS --max-time 2 "$url"; printf x)
  got=${got%x}
  [[ $got == "$BODY" ]] || die "$name answered $(printf %q "$got") instead of the expected body"
  ctype=$(curl -fsS --max-time 2 -o /dev/null -w '%{content_type}' "$url")
  [[ $ctype == text/plain* ]] || die "$name answered Content-Type '$ctype' instead of text/plain"
  # Whole response size (status line + headers + body), for the record.
  RESP_BYTES[$name]=$(curl -fsS --max-time 2 -i "$url" | wc -c)
}

declare -A PIDS URL RESP_BYTES

start_nginx() {
  local port dir=$TMP/nginx pid w
  port=$(free_port)
  mkdir -p "$dir"
  sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" "$NGINX_CONF_TEMPLATE" >"$dir/nginx.conf"
  "$NGINX_BIN" -t -q -p "$dir" -e "$dir/nginx-error.log" -c "$dir/nginx.conf" >"$dir/out.log" 2>&1 ||
    { cat "$dir/out.log" "$dir/nginx-error.log" >&2 2>/dev/null; die "nginx rejected $dir/nginx.conf"; }
  taskset -c "$SERVER_CPU" "$NGINX_BIN" -p "$dir" -e "$dir/nginx-error.log" -c "$dir/nginx.conf" \
    >>"$dir/out.log" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  URL[nginx]="http://127.0.0.1:$port/hello"
  wait_ready nginx "${URL[nginx]}" "$pid" "$dir/nginx-error.log"
  # The master's children are its workers (worker_processes 1): their CPU time counts too.
  PIDS[nginx]="$pid"
  for w in $(ps -o pid= --ppid "$pid"); do
    PIDS[nginx]+=" $w"
    STARTED+=("$w")
  done
  [[ ${PIDS[nginx]} == *" "* ]] || die "nginx started no worker process"
  log "nginx: master+worker pids ${PIDS[nginx]} on port $port"
}

start_gatehouse() {
  local port dir=$TMP/gatehouse pid
  port=$(free_port)
  mkdir -p "$dir"
  cat >"$dir/gatehouse.yaml" <<EOF
server: {listen: "127.0.0.1:$port", threads: 1}
log: {level: warn, access_log: "off"}
store: {state: "sqlite://$dir/gh.db"}
limits: {max_connections_per_ip: 100000, idle_timeout: 60s}
routes:
  - {method: GET, path: /hello, target: {static: {status: 200, body: "hello from gatehouse\n", content_type: text/plain}}}
EOF
  taskset -c "$SERVER_CPU" "$GH_BIN" serve --config "$dir/gatehouse.yaml" >"$dir/out.log" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  URL[gatehouse]="http://127.0.0.1:$port/hello"
  wait_ready gatehouse "${URL[gatehouse]}" "$pid" "$dir/out.log"
  PIDS[gatehouse]="$pid"
  log "gatehouse: pid $pid on port $port"
}

# ---- wrk ---------------------------------------------------------------------------------------

cat >"$TMP/pipeline.lua" <<EOF
-- $PIPELINE_DEPTH requests per write; wrk counts each response as one request.
init = function(args)
  local r = {}
  for i = 1, $PIPELINE_DEPTH do
    r[i] = wrk.format(nil, wrk.path)
  end
  req = table.concat(r)
end
request = function()
  return req
end
EOF

# "323.00us" / "1.20ms" / "2.00s" / "1.00m" -> microseconds

run_wrk() {  # server variant seconds outfile
  local server=$1 variant=$2 secs=$3 out=$4 pid rc
  local args=(-t1 "-c$CONNECTIONS" "-d${secs}s" --latency --timeout 5s)
  [[ $variant == pipelined ]] && args+=(-s "$TMP/pipeline.lua")
  timeout -k 5 $((secs + 20)) taskset -c "$CLIENT_CPU" wrk "${args[@]}" "${URL[$server]}" >"$out" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  rc=0
  wait "$pid" || rc=$?
  forget_pid "$pid"
  if ((rc != 0)); then
    cat "$out" >&2
    die "wrk against $server ($variant) failed (exit $rc)"
  fi
}

RESULTS=$TMP/results.tsv
: >"$RESULTS"

measure() {  # server variant round
  local server=$1 variant=$2 round=$3 out before after reqs rps p50 p99 errs non2xx cpu_us
  out=$TMP/wrk-$server-$variant-$round.txt
  local cpu_before cpu_after other ccpu_before ccpu_after wrk_before wrk_after other_client
  cpu_before=$(cpu_jiffies "$SERVER_CPU")
  ccpu_before=$(cpu_jiffies "$CLIENT_CPU")
  children_cpu
  wrk_before=$CHILD_CPU
  # shellcheck disable=SC2086
  before=$(cpu_ticks ${PIDS[$server]})
  run_wrk "$server" "$variant" "$DURATION" "$out"
  # shellcheck disable=SC2086
  after=$(cpu_ticks ${PIDS[$server]})
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
  local ub sb ua sa ticks user_us
  read -r ub sb <<<"$before"
  read -r ua sa <<<"$after"
  ticks=$(((ua - ub) + (sa - sb)))
  cpu_us=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
  user_us=$(awk -v t=$((ua - ub)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
  # Time the server's CPU spent busy on anything but the server (other processes, interrupts):
  # near 0 % on a quiet machine; a large share means the run competed for its core.
  other=$(awk -v b="$cpu_before" -v a="$cpu_after" -v s="$ticks" 'BEGIN {
    split(b, x, " "); split(a, y, " "); busy = y[1] - x[1]; tot = y[2] - x[2]
    o = (busy - s) / (tot > 0 ? tot : 1) * 100; if (o < 0) o = 0; printf "%.0f", o }')
  # The same for wrk's core (wrk's own CPU time from this shell's children times).
  other_client=$(awk -v b="$ccpu_before" -v a="$ccpu_after" -v w0="$wrk_before" -v w1="$wrk_after" -v hz="$CLK_TCK" 'BEGIN {
    split(b, x, " "); split(a, y, " "); busy = y[1] - x[1]; tot = y[2] - x[2]
    o = (busy - (w1 - w0) * hz) / (tot > 0 ? tot : 1) * 100; if (o < 0) o = 0; printf "%.0f", o }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$variant" "$round" "$reqs" "$rps" \
    "$p50" "$p99" "$cpu_us" "${errs:-0}" "${non2xx:-0}" "$other" "$user_us" "$other_client" >>"$RESULTS"
  printf '  %-9s %-9s round %d: %9s req/s  p50 %8s µs  p99 %8s µs  %6s µs CPU/req (user %s)  (%s requests, %d ticks; other work: CPU %s %s%%, CPU %s %s%%%s%s)\n' \
    "$server" "$variant" "$round" "$rps" "$p50" "$p99" "$cpu_us" "$user_us" "$reqs" "$ticks" "$SERVER_CPU" "$other" "$CLIENT_CPU" "$other_client" \
    "${errs:+, socket errors $errs}" "${non2xx:+, non-2xx $non2xx}" >&2
}

# ---- run ---------------------------------------------------------------------------------------

CPU_MODEL=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
log "gatehouse bench/gateway.sh — $(date -u '+%Y-%m-%d %H:%M UTC')"
log "machine: $(nproc) CPU(s), ${CPU_MODEL:-unknown CPU}, kernel $(uname -r)"
log "server on CPU $SERVER_CPU, wrk -t1 -c$CONNECTIONS -d${DURATION}s on CPU $CLIENT_CPU; $ROUNDS round(s); CLK_TCK=$CLK_TCK"

# Other work on either core inflates every figure (the server competes for its core, wrk for
# its own). Wait up to QUIET_WAIT seconds for both to fall under 10 % busy; then go on and
# say so (each run also reports how busy the server's core was with other work).
busy_pct() {  # cpu index, over 1 s
  local a b
  a=$(cpu_jiffies "$1")
  sleep 1
  b=$(cpu_jiffies "$1")
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[2] - x[2]; printf "%.0f", (t > 0 ? (y[1] - x[1]) / t * 100 : 0) }'
}
waited=0
while :; do
  bs=$(busy_pct "$SERVER_CPU")
  bc=$(busy_pct "$CLIENT_CPU")
  if ((bs <= 10 && bc <= 10)); then break; fi
  if ((waited >= QUIET_WAIT)); then
    log "warning: CPU $SERVER_CPU is $bs% and CPU $CLIENT_CPU $bc% busy before the run; figures will be inflated (close other work, or QUIET_WAIT=seconds to wait)"
    break
  fi
  log "CPU $SERVER_CPU $bs% / CPU $CLIENT_CPU $bc% busy with other work; waiting for quiet ($waited/${QUIET_WAIT} s)"
  sleep 3
  waited=$((waited + 5))
done

for s in $SERVERS; do
  "start_$s"
  check_response "$s" "${URL[$s]}"
  log "$s: response is ${RESP_BYTES[$s]} bytes on the wire (status line + headers + body)"
  if ((WARMUP > 0)); then
    run_wrk "$s" plain "$WARMUP" "$TMP/warmup-$s.txt"
  fi
done

for variant in $VARIANTS; do
  for ((round = 1; round <= ROUNDS; round++)); do
    for s in $SERVERS; do
      measure "$s" "$variant" "$round"
    done
  done
done

# Still alive and still answering correctly after the load?
for s in $SERVERS; do
  check_response "$s" "${URL[$s]}"
done

# ---- report ------------------------------------------------------------------------------------

col() {  # server variant column -> values
  awk -F'\t' -v s="$1" -v v="$2" -v c="$3" '$1 == s && $2 == v { print $c }' "$RESULTS"
}

echo
echo "Gateway static route vs nginx: GET /hello, ${#BODY}-byte text/plain body; server on 1 core, wrk -t1 -c$CONNECTIONS -d${DURATION}s on another; medians of $ROUNDS runs."
echo
echo "| variant | server | requests/s | p50 latency | p99 latency | server CPU per request | gatehouse / nginx CPU |"
echo "|---|---|---:|---:|---:|---:|---:|"
for variant in $VARIANTS; do
  label="1 request per round trip"
  [[ $variant == pipelined ]] && label="pipelined, $PIPELINE_DEPTH per write"
  declare -A MED_CPU=()
  for s in $SERVERS; do
    MED_CPU[$s]=$(col "$s" "$variant" 8 | median)
  done
  ratio="—"
  if [[ -n ${MED_CPU[nginx]:-} && -n ${MED_CPU[gatehouse]:-} ]]; then
    ratio=$(awk -v g="${MED_CPU[gatehouse]}" -v n="${MED_CPU[nginx]}" 'BEGIN { printf "%.2fx", g / n }')
  fi
  for s in $SERVERS; do
    rps=$(col "$s" "$variant" 5 | median)
    # Latency medians only when wrk gave a value in every run.
    p50=n/a
    p99=n/a
    if ! col "$s" "$variant" 6 | grep -q n/a; then p50=$(col "$s" "$variant" 6 | median); fi
    if ! col "$s" "$variant" 7 | grep -q n/a; then p99=$(col "$s" "$variant" 7 | median); fi
    r="—"
    [[ $s == gatehouse ]] && r=$ratio
    [[ $p50 == n/a ]] || p50="$p50 µs"
    [[ $p99 == n/a ]] || p99="$p99 µs"
    printf '| %s | %s | %s | %s | %s | %s µs | %s |\n' "$label" "$s" \
      "$(awk -v x="$rps" 'BEGIN { printf "%.0f", x }')" "$p50" "$p99" "${MED_CPU[$s]}" "$r"
  done
  unset MED_CPU
done
echo
errors=$(awk -F'\t' '$9 > 0 || $10 > 0' "$RESULTS" | wc -l)
if ((errors > 0)); then
  echo "Warning: $errors run(s) saw socket errors or non-2xx responses:"
  awk -F'\t' '$9 > 0 || $10 > 0 { printf "  %s %s round %s: socket errors %s, non-2xx %s\n", $1, $2, $3, $9, $10 }' "$RESULTS"
fi
other_med=$(cut -f11 "$RESULTS" | median)
other_max=$(cut -f11 "$RESULTS" | sort -g | tail -n 1)
client_med=$(cut -f13 "$RESULTS" | median)
client_max=$(cut -f13 "$RESULTS" | sort -g | tail -n 1)
echo "Other work (not the server, not wrk) during the runs: CPU $SERVER_CPU median $other_med %, max $other_max %; CPU $CLIENT_CPU median $client_med %, max $client_max %."
if ((other_max > 10 || client_max > 10)); then
  echo "Warning: above 10 % the runs competed for their cores; treat these figures as upper bounds and rerun on a quiet machine."
fi
echo "Server CPU per request = (utime+stime of the server process(es) over the run, /proc/PID/stat, CLK_TCK=$CLK_TCK) / requests completed by wrk."
[[ " $VARIANTS " == *" pipelined "* ]] &&
  echo "Pipelined latency is per batch of $PIPELINE_DEPTH (wrk records one sample when a batch's last response arrives); n/a: in at least one run wrk printed 0.00us for that percentile (a wrk 4.1.0 artifact at high rates)."
echo "Per-run figures:"
echo
echo "| server | variant | round | requests | requests/s | p50 µs | p99 µs | CPU µs/req | of which user | other work on CPU $SERVER_CPU / CPU $CLIENT_CPU |"
echo '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|'
awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s %% / %s %% |\n", $1, $2, $3, $4, $5, $6, $7, $8, $12, $11, $13 }' "$RESULTS"
