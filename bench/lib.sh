# Shared by the wrk benchmarks (gateway.sh, limits.sh). Source it after setting TMP (a scratch
# directory removed on exit unless KEEP_TMP=1) and STARTED (an array of pids to stop on exit), and
# after defining log(). It installs the EXIT/INT/TERM traps.

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
