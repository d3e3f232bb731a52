# Shared by the wrk benchmarks (gateway.sh, limits.sh, invoke.sh). Source it after setting TMP (a scratch
# directory removed on exit unless KEEP_TMP=1) and STARTED (an array of pids to stop on exit), and
# after defining log() and die(). It installs the EXIT/INT/TERM traps.

# Dies unless every tool named is on PATH and SERVER_CPU and CLIENT_CPU can be pinned (warns when
# they are the same CPU); sets CLK_TCK.
check_bench_host() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found: run \`make setup\` (installs wrk, curl, procps, python3)"
  done
  if ! taskset -c "$SERVER_CPU" true 2>/dev/null || ! taskset -c "$CLIENT_CPU" true 2>/dev/null; then
    die "cannot pin to CPUs $SERVER_CPU and $CLIENT_CPU (this machine has $(nproc) CPU(s)); set SERVER_CPU/CLIENT_CPU"
  fi
  [[ $SERVER_CPU != "$CLIENT_CPU" ]] || log "warning: servers and wrk share CPU $SERVER_CPU; figures will not be comparable"
  CLK_TCK=$(getconf CLK_TCK)
}

stop_pids() {
  local pid i alive
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for ((i = 0; i < 50; i++)); do
    alive=0
    for pid in "$@"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((${#STARTED[@]})); then stop_pids "${STARTED[@]}"; fi
  if [[ ${KEEP_TMP:-0} == 1 ]]; then
    log "kept $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

forget_pid() {
  local keep=() p
  for p in "${STARTED[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  STARTED=("${keep[@]}")
}

# "utime stime" in clock ticks, summed over the given pids (from /proc/PID/stat; the comm field
# may contain spaces, so fields are counted after the last ')').
cpu_ticks() {
  local pid u=0 s=0 t f
  for pid in "$@"; do
    [[ -r /proc/$pid/stat ]] || die "server process $pid is gone"
    t=$(sed 's/.*) //' "/proc/$pid/stat")
    read -r -a f <<<"$t"
    u=$((u + f[11]))
    s=$((s + f[12]))
  done
  echo "$u $s"
}

# Busy and total jiffies of one CPU (from /proc/stat): "busy total".
cpu_jiffies() {
  awk -v c="cpu$1" '$1 == c { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6 }' /proc/stat
}

children_cpu() {
  times >"$TMP/times"
  CHILD_CPU=$(awk 'NR == 2 { s = 0
    for (i = 1; i <= NF; i++) { m = $i; sub(/s$/, "", m); split(m, b, "m"); s += b[1] * 60 + b[2] }
    printf "%.3f", s }' "$TMP/times")
}

# ---- shared by the wrk benchmarks' reports ------------------------------------------------------

# A wrk latency ("812.00us", "1.20ms") in µs, or n/a.
to_us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") f = 1; else if (u == "ms") f = 1000; else if (u == "s") f = 1e6;
    else if (u == "m") f = 6e7; else if (u == "h") f = 3.6e9; else f = -1
    # wrk 4.1.0 prints 0.00us for upper percentiles it failed to compute (seen with pipelining
    # at high rates); report those as n/a rather than as a measurement.
    if (f < 0 || n == 0) print "n/a"; else printf "%.1f", n * f }'
}

median() {  # values on stdin -> median of the numeric ones ("n/a" if none)
  { grep -E '^[0-9.]+$' || true; } | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Needs SERVER_CPU and CLIENT_CPU.
busy_pcts() {  # -> "busy% of SERVER_CPU, busy% of CLIENT_CPU" over the same second
  local a1 a2 b1 b2
  a1=$(cpu_jiffies "$SERVER_CPU")
  a2=$(cpu_jiffies "$CLIENT_CPU")
  sleep 1
  b1=$(cpu_jiffies "$SERVER_CPU")
  b2=$(cpu_jiffies "$CLIENT_CPU")
  awk -v a="$a1" -v b="$b1" -v c="$a2" -v d="$b2" 'BEGIN {
    split(a, x, " "); split(b, y, " "); t = y[2] - x[2]; p = (t > 0 ? (y[1] - x[1]) / t * 100 : 0)
    split(c, x, " "); split(d, y, " "); t = y[2] - x[2]; q = (t > 0 ? (y[1] - x[1]) / t * 100 : 0)
    printf "%.0f %.0f", p, q }'
}

# Needs SERVER_CPU, CLIENT_CPU and log(). MAX 0 does not wait. QUIET_WAITED sums the waits.
QUIET_WAITED=0
# Waits up to $1 seconds for both cores to be under 10 % busy; returns how long it waited.
wait_quiet() {  # max_seconds label
  local max=$1 what=$2 bs bc waited=0
  ((max > 0)) || return 0
  while :; do
    read -r bs bc <<<"$(busy_pcts)"
    if ((bs <= 10 && bc <= 10)); then break; fi
    if ((waited >= max)); then
      log "warning: CPU $SERVER_CPU is $bs% and CPU $CLIENT_CPU $bc% busy with other work $what; going on (figures will be inflated)"
      break
    fi
    ((waited % 15 == 0)) && log "CPU $SERVER_CPU $bs% / CPU $CLIENT_CPU $bc% busy with other work $what; waiting for quiet ($waited/$max s)"
    sleep 2
    waited=$((waited + 3))
  done
  QUIET_WAITED=$((QUIET_WAITED + waited))
}
