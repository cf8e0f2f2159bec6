#!/usr/bin/env bash
# Benchmark `unreliable serve` against nginx on one machine (Linux, 2+ cores).
#
# Builds the release binary, installs wrk and nginx when missing, pins the servers to one core and
# wrk to another, alternates them for $ROUNDS rounds with 0, 2,000 and 10,000 hung connections
# held open, measures CPU per request, RSS, threads, context switches and syscalls, the log's
# memory per entry, the client's wall time, start-up time and the static binary's size, then
# prints a Markdown report of medians on stdout (progress goes to stderr).
# These are benchmarks, not tests: the exit status is 0 whether or not a target is met.
#
# Usage: bench/run.sh            (environment knobs: see bench/README.md)
set -euo pipefail

ROUNDS=${ROUNDS:-3}                    # rounds of (unreliable, nginx) per phase
DURATION=${DURATION:-10s}              # wrk -d
CONNECTIONS=${CONNECTIONS:-64}         # wrk -c
HUNG_LEVELS=${HUNG_LEVELS:-"2000 10000"}
SERVER_CORE=${SERVER_CORE:-0}          # both servers run here
CLIENT_CORE=${CLIENT_CORE:-1}          # wrk, perf, strace, the helpers and this script run here
SYSCALL_SECONDS=${SYSCALL_SECONDS:-5s}    # wrk -d under perf stat, then under strace -c
LOGCAP_ENTRIES=${LOGCAP_ENTRIES:-1000000}
LOGCAP_MAX_SECONDS=${LOGCAP_MAX_SECONDS:-150}
CLIENT_RUNS=${CLIENT_RUNS:-3}
STARTUP_RUNS=${STARTUP_RUNS:-20}
PROFILE=${PROFILE:-1}                  # 1: perf record both servers (needs perf), 0: skip
MAX_NOISE_PERCENT=${MAX_NOISE_PERCENT:-5}  # a run whose server core was busier with others is
MAX_STEAL_PERCENT=${MAX_STEAL_PERCENT:-1}  # ... or whose cores the hypervisor took for longer is
NOISE_RETRIES=${NOISE_RETRIES:-3}          # ... repeated, at most this many times
KEEP=${KEEP:-1}                        # 1: keep the work directory (small raw outputs), 0: delete

readonly HOST=127.0.0.1                # the only target, by design
readonly REQUEST_ID=0a1b2c3d-12345-1   # shaped like the client's ids (run-request-attempt)
readonly MUSL_TARGET=x86_64-unknown-linux-musl

bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(dirname "$bench_dir")
work=$(mktemp -d "${TMPDIR:-/tmp}/unreliable-bench.XXXXXX")
started_pids=()

log() { printf '[bench %(%T)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
fact() { printf '%s=%s\n' "$1" "$2" >>"$work/facts.txt"; }

# ---------------------------------------------------------------- processes we start

forget_pid() {
  local kept=() pid
  for pid in "${started_pids[@]}"; do
    [[ $pid == "$1" ]] || kept+=("$pid")
  done
  started_pids=("${kept[@]}")
}

# Stops one process we started: SIGTERM, up to 10 s, then SIGKILL. Returns its exit status.
stop_pid() {
  local pid=$1 tries=0 status=0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && ((tries < 100)); do
      sleep 0.1
      tries=$((tries + 1))
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || status=$?
  forget_pid "$pid"
  return "$status"
}

cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  for pid in "${started_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${started_pids[@]}"; do
    stop_pid "$pid" || true
  done
  rm -f "$work"/*.log
  if ((KEEP)); then
    log "raw outputs kept in $work"
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- setup

as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

# Installs distribution packages for the commands that are missing: pairs of command and package.
install_missing() {
  local wanted=() manager
  while (($# >= 2)); do
    command -v "$1" >/dev/null || wanted+=("$2")
    shift 2
  done
  ((${#wanted[@]})) || return 0
  log "installing ${wanted[*]}"
  for manager in apt-get dnf yum zypper pacman apk; do
    command -v "$manager" >/dev/null && break
  done
  case $manager in
    apt-get) as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive \
               apt-get install -y -qq "${wanted[@]}" >&2 ;;
    dnf | yum) as_root "$manager" install -y "${wanted[@]}" >&2 ;;
    zypper) as_root zypper --non-interactive install "${wanted[@]}" >&2 ;;
    pacman) as_root pacman -S --noconfirm --needed "${wanted[@]}" >&2 ;;
    apk) as_root apk add "${wanted[@]}" >&2 ;;
    *) die "no package manager found; install: ${wanted[*]}" ;;
  esac
}

check_machine() {
  [[ $(uname -s) == Linux ]] || die "Linux only (reads /proc)"
  (($(nproc) >= 2)) || die "needs 2+ cores (server and wrk on separate cores)"
  command -v cargo >/dev/null || die "needs cargo (https://rustup.rs)"
  local tool
  install_missing wrk wrk nginx nginx curl curl python3 python3 taskset util-linux
  # For the syscall counts only; perf's package name differs too much between distributions.
  install_missing strace strace || log "could not install strace: per-syscall counts skipped"
  for tool in wrk nginx curl python3 taskset; do
    command -v "$tool" >/dev/null || die "$tool is still missing"
  done
  # Both servers raise their soft open-file limit to the hard one; 10,000 hung connections need it.
  local hard
  hard=$(ulimit -Hn)
  if [[ $hard != unlimited ]] && ((hard < 30000)); then
    ulimit -Hn 30000 2>/dev/null || log "open-file hard limit stays $hard"
  fi
  ulimit -Sn "$(ulimit -Hn)"
  open_file_limit=$(ulimit -Hn)
  if [[ $open_file_limit == unlimited ]]; then open_file_limit=1048576; fi
}

build() {
  log "building the release binary"
  (cd "$repo_dir" && cargo build --release --quiet) || die "cargo build --release failed"
  local target_dir
  target_dir=$(cd "$repo_dir" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  # A copy, so that a rebuild during the benchmark does not change what is measured.
  bin=$work/unreliable
  cp "$target_dir/release/unreliable" "$bin"
  fact binary_size_gnu "$(stat -c %s "$bin")"

  log "building the static binary ($MUSL_TARGET)"
  if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$MUSL_TARGET"; then
    rustup target add "$MUSL_TARGET" >&2 || true
  fi
  if (cd "$repo_dir" && cargo build --release --quiet --target "$MUSL_TARGET"); then
    musl_bin=$work/unreliable-musl
    strip -o "$musl_bin" "$target_dir/$MUSL_TARGET/release/unreliable"
    fact binary_size_musl "$(stat -c %s "$musl_bin")"
    fact binary_static "$(file -b "$musl_bin" | grep -o 'static[a-z-]* linked' || echo unknown)"
  else
    log "musl build failed: size and static start-up skipped"
    musl_bin=
  fi
  if [[ -n $PROFILE && $PROFILE != 0 ]] && command -v perf >/dev/null; then
    log "building a symbolised copy for perf record (target/bench-profile)"
    (cd "$repo_dir" && CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
      cargo build --release --quiet --target-dir "$target_dir/bench-profile") || PROFILE=0
    [[ $PROFILE == 0 ]] || cp "$target_dir/bench-profile/release/unreliable" "$work/unreliable-symbols"
  else
    PROFILE=0
  fi
}

record_machine() {
  fact nproc "$(nproc)"
  fact cpu "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
  fact kernel "$(uname -r)"
  fact memory_mib "$(($(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo) / 1024))"
  # shellcheck disable=SC1091 # the distribution's own file
  fact os "$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-unknown}")"
  fact rustc "$(rustc --version)"
  fact nginx "$(nginx -v 2>&1 | sed 's/^nginx version: //')"
  fact wrk "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
  fact commit "$(git -C "$repo_dir" rev-parse --short HEAD 2>/dev/null || echo unknown)$(
    git -C "$repo_dir" status --porcelain -- src 2>/dev/null | grep -q . && echo ' (+ uncommitted src changes)')"
  fact server_core "$SERVER_CORE"
  fact client_core "$CLIENT_CORE"
  fact rounds "$ROUNDS"
  fact duration "$DURATION"
  fact connections "$CONNECTIONS"
  fact open_file_limit "$open_file_limit"
  fact clock_ticks "$clock_ticks"
  fact max_noise_percent "$MAX_NOISE_PERCENT"
  fact max_steal_percent "$MAX_STEAL_PERCENT"
  fact noise_retries "$NOISE_RETRIES"
  fact load_average "$(cut -d' ' -f1-3 /proc/loadavg)"
  local cores
  cores=$(taskset -c "$SERVER_CORE" nproc)
  # The server's default worker count, as in src/cli.rs (WORKERS_PER_CORE, MIN_/MAX_DEFAULT_WORKERS):
  # 8 per core it may run on, 8 to 256.
  fact server_cpus "$cores"
  fact expected_workers "$(( cores * 8 < 8 ? 8 : cores * 8 > 256 ? 256 : cores * 8 ))"
}

# ---------------------------------------------------------------- servers

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_unreliable NAME ARGS...: sets server_pid and server_port.
start_unreliable() {
  local name=$1 tries=0
  shift
  taskset -c "$SERVER_CORE" "$bin" serve --host "$HOST" --port 0 "$@" >"$work/$name.out" 2>&1 &
  server_pid=$!
  started_pids+=("$server_pid")
  until grep -qs '^listening on' "$work/$name.out"; do
    kill -0 "$server_pid" 2>/dev/null || die "unreliable ($name) exited: $(cat "$work/$name.out")"
    ((tries++ < 100)) || die "unreliable ($name) printed no 'listening on' line"
    sleep 0.05
  done
  server_port=$(sed -n 's|^listening on http://[0-9.]*:\([0-9]*\).*|\1|p' "$work/$name.out")
}

# Stops an unreliable server (it flushes its log file on SIGTERM); sets log_lines to the file's lines.
stop_unreliable_and_count_lines() {
  local pid=$1 file=$2 status=0
  stop_pid "$pid" || status=$?
  ((status == 0)) || log "unreliable exited with status $status"
  log_lines=0
  if [[ -f $file ]]; then log_lines=$(wc -l <"$file"); fi
}

status_kib() { # PID KEY: a "KEY:  N kB" line of /proc/PID/status
  local key value _
  while read -r key value _; do
    if [[ $key == "$2:" ]]; then echo "$value"; return; fi
  done <"/proc/$1/status"
}

stats_field() { # PORT KEY [SUBKEY]: a number from unreliable's /stats
  curl -sf "http://$HOST:$1/stats" |
    python3 -c 'import json, sys; d = json.load(sys.stdin)
for key in sys.argv[1:]: d = d[key]
print(d)' "${@:2}"
}

# Writes the nginx page: the median size of unreliable's 200 /getbalance body, no `$`, `'` or `\`.
measure_body_size() {
  local port=$1 sizes
  sizes=$(for _ in $(seq 31); do
    curl -s -o /dev/null -w '%{size_download}\n' "http://$HOST:$port/getbalance"
  done | sort -n)
  body_size=$(sed -n 16p <<<"$sizes")
  fact body_min "$(head -1 <<<"$sizes")"
  fact body_median "$body_size"
  fact body_max "$(tail -1 <<<"$sizes")"
  fact head_unreliable "$(curl -s -o /dev/null -w '%{size_header}' "http://$HOST:$port/getbalance")"
  python3 - "$body_size" >"$work/page.html" <<'EOF'
import sys
size = int(sys.argv[1])
head, tail = "<!DOCTYPE html>\n<html><head><title>Balance</title></head><body><p>", "</p></body></html>\n"
filler = ("Account balance statement " * (size // 26 + 1))[: max(0, size - len(head) - len(tail))]
sys.stdout.write(head + filler + tail)
EOF
}

# start_nginx NAME: one worker on SERVER_CORE, `return 200` of page.html; sets nginx_pids, nginx_port.
start_nginx() {
  local name=$1 dir=$work/nginx-$1 tries=0 master worker=
  mkdir -p "$dir"
  nginx_port=$(free_port)
  {
    printf 'worker_processes 1;\ndaemon off;\nmaster_process on;\n'
    printf 'pid %s/nginx.pid;\nerror_log %s/error.log warn;\n' "$dir" "$dir"
    printf 'worker_rlimit_nofile %s;\n' "$open_file_limit"
    printf 'events { worker_connections %s; }\n' "$((open_file_limit - 100))"
    printf 'http {\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 15m;\n'
    for temp in client_body proxy fastcgi uwsgi scgi; do
      printf '  %s_temp_path %s/%s;\n' "$temp" "$dir" "$temp"
    done
    printf '  default_type "text/html; charset=utf-8";\n'
    printf '  server {\n    listen %s:%s;\n    location = /getbalance {\n' "$HOST" "$nginx_port"
    printf '      add_header Cache-Control no-store;\n      return 200 '\''%s'\'';\n' "$(cat "$work/page.html")"
    printf '    }\n  }\n}\n'
  } >"$dir/nginx.conf"
  local early_log=() # -e (nginx 1.19.5+) keeps nginx off /var/log/nginx before it reads the config
  nginx -h 2>&1 | grep -q -- '-e filename' && early_log=(-e "$dir/error.log")
  taskset -c "$SERVER_CORE" nginx -p "$dir" "${early_log[@]}" -c "$dir/nginx.conf" \
    >"$work/$name.out" 2>&1 &
  master=$!
  started_pids+=("$master")
  until [[ -n $worker ]] && curl -sf -o /dev/null "http://$HOST:$nginx_port/getbalance"; do
    kill -0 "$master" 2>/dev/null || die "nginx ($name) exited: $(cat "$dir/error.log" "$work/$name.out")"
    ((tries++ < 100)) || die "nginx ($name) did not answer"
    sleep 0.05
    worker=$(pgrep -P "$master" | head -1 || true)
  done
  nginx_pids="$master $worker"
}

stop_nginx() {
  local master=${nginx_pids%% *}
  stop_pid "$master" || true
}

# ---------------------------------------------------------------- measurements

# take_snapshot PIDS...: sets the array `snapshot` to (CPU ticks of the processes, utime+stime,
# which covers all their threads; voluntary and involuntary context switches summed over every
# thread; busy and steal ticks of the server's core and of the client's core, from /proc/stat;
# milliseconds of CPU used by this shell's finished children, from `times`). Builtins only, no
# fork, so that taking it costs the client core next to nothing. A core's busy time includes irq
# and softirq: a process's stime includes the softirq work it triggered (loopback TCP receive).
take_snapshot() {
  local pid stat fields task key value cpu=0 voluntary=0 involuntary=0 name user nice system _
  local irq softirq steal server_busy=0 server_steal=0 client_busy=0 client_steal=0 children=0 part
  local minutes seconds
  for pid in "$@"; do
    read -r stat <"/proc/$pid/stat"
    read -ra fields <<<"${stat##*) }" # fields[0] is field 3 (state): utime is 14, stime 15
    cpu=$((cpu + fields[11] + fields[12]))
    for task in /proc/"$pid"/task/*; do
      while read -r key value; do
        case $key in
          voluntary_ctxt_switches:) voluntary=$((voluntary + value)) ;;
          nonvoluntary_ctxt_switches:) involuntary=$((involuntary + value)) ;;
        esac
      done <"$task/status" 2>/dev/null || true
    done
  done
  while read -r name user nice system _ _ irq softirq steal _; do
    if [[ $name == "cpu$SERVER_CORE" ]]; then
      server_busy=$((user + nice + system + irq + softirq)) server_steal=$steal
    elif [[ $name == "cpu$CLIENT_CORE" ]]; then
      client_busy=$((user + nice + system + irq + softirq)) client_steal=$steal
    fi
  done </proc/stat
  times >"$work/times" # the second line: children's user and system time, as 0m1.234s
  { read -r _ _; read -r user system; } <"$work/times"
  for part in "$user" "$system"; do
    minutes=${part%%m*} seconds=${part#*m}
    seconds=${seconds%s}
    children=$((children + minutes * 60000 + 10#${seconds%.*} * 1000 + 10#${seconds#*.}))
  done
  snapshot=("$cpu" "$voluntary" "$involuntary" "$server_busy" "$server_steal" "$client_busy"
    "$client_steal" "$children")
}

# sample_peaks OUT PIDS...: every 100 ms, the summed VmRSS and Threads; writes the peaks to OUT
# when OUT.stop appears. Sleeps by a read timeout on a FIFO, so it forks nothing.
sample_peaks() {
  local out=$1 pid key value rss threads peak_rss=0 peak_threads=0 tick
  shift
  [[ -p $work/tick ]] || mkfifo "$work/tick"
  exec {tick}<>"$work/tick"
  while :; do
    rss=0 threads=0
    for pid in "$@"; do
      while read -r key value _; do
        case $key in
          VmRSS:) rss=$((rss + value)) ;;
          Threads:) threads=$((threads + value)) ;;
        esac
      done <"/proc/$pid/status" 2>/dev/null || true
    done
    ((rss > peak_rss)) && peak_rss=$rss
    ((threads > peak_threads)) && peak_threads=$threads
    [[ -e $out.stop ]] && break
    read -r -t 0.1 -u "$tick" _ || true
  done
  echo "$peak_rss $peak_threads" >"$out"
}

# Prints "requests/s p50_ms p99_ms errors requests" from a wrk --latency output.
parse_wrk() {
  awk '
    function ms(text) {
      if (text ~ /us$/) return substr(text, 1, length(text) - 2) / 1000
      if (text ~ /ms$/) return substr(text, 1, length(text) - 2) + 0
      if (text ~ /s$/) return substr(text, 1, length(text) - 1) * 1000
      return text + 0
    }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    / requests in / { requests = $1 }
    /^Requests\/sec:/ { rps = $2 }
    /Socket errors:/ { gsub(",", ""); errors += $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { errors += $5 }
    END { printf "%s %s %s %d %s\n", rps, p50 == "" ? "-" : p50, p99 == "" ? "-" : p99, errors, requests }' "$1"
}

# measure_wrk PHASE SERVER ROUND ATTEMPT PORT LOGFILE PIDS...: one wrk run, one row of runs.tsv.
# Sets noise_percent: the larger share of the run that the server's core spent on anything but
# the server, or the client's core on anything but this script's children (wrk, the sampler):
# other processes, steal by the hypervisor. Sets steal_hundredths: the larger share of either
# core the hypervisor took, in hundredths of a percent. Stolen time stops everything on that
# core while the clocks run on, so at saturation it lands on the latency of all requests in
# flight: with -c64 a few milliseconds stolen ten times a second are the whole p99.
measure_wrk() {
  local phase=$1 server=$2 round=$3 attempt=$4 port=$5 logfile=$6 tag sampler peaks lag=- total
  local before after started ended wall rps p50 p99 errors requests rss_peak threads_peak
  local server_others client_others client_noise
  shift 6
  tag=$phase-$server-$round-$attempt
  take_snapshot "$@"
  before=("${snapshot[@]}")
  sample_peaks "$work/peaks-$tag" "$@" &
  sampler=$!
  started_pids+=("$sampler")
  started=${EPOCHREALTIME/./}
  taskset -c "$CLIENT_CORE" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency \
    "http://$HOST:$port/getbalance" >"$work/wrk-$tag.txt"
  ended=${EPOCHREALTIME/./}
  touch "$work/peaks-$tag.stop"
  wait "$sampler" || true
  forget_pid "$sampler"
  take_snapshot "$@"
  after=("${snapshot[@]}")
  peaks=$(<"$work/peaks-$tag")
  if [[ $logfile != - ]]; then # how far the log file is behind, 200 ms after the run
    sleep 0.2
    total=$(stats_field "$port" total)
    lag=$((total - $(wc -l <"$logfile")))
  fi
  read -r rps p50 p99 errors requests < <(parse_wrk "$work/wrk-$tag.txt")
  read -r rss_peak threads_peak <<<"$peaks"
  wall=$((ended - started))
  # Milliseconds of the server's core used by others, and of the client's core.
  server_others=$(((after[3] - before[3] + after[4] - before[4] - after[0] + before[0]) \
    * 1000 / clock_ticks))
  client_others=$(((after[5] - before[5] + after[6] - before[6]) * 1000 / clock_ticks \
    - (after[7] - before[7])))
  noise_percent=$((server_others > 0 ? server_others * 100000 / wall : 0))
  client_noise=$((client_others > 0 ? client_others * 100000 / wall : 0))
  ((client_noise > noise_percent)) && noise_percent=$client_noise
  local server_steal=$((after[4] - before[4])) client_steal=$((after[6] - before[6]))
  ((client_steal > server_steal)) && server_steal=$client_steal
  steal_hundredths=$((server_steal * 10000000000 / clock_ticks / wall))
  printf '%s\t' "$phase" "$server" "$round" "$attempt" "$rps" "$p50" "$p99" "$errors" "$requests" \
    "$((after[0] - before[0]))" "$((after[1] - before[1]))" "$((after[2] - before[2]))" \
    "$rss_peak" "$threads_peak" "$lag" "$wall" "$((after[3] - before[3]))" \
    "$((after[4] - before[4]))" "$((after[7] - before[7]))" "$((after[5] - before[5]))" \
    "$((after[6] - before[6]))" >>"$work/runs.tsv"
  echo "$noise_percent" >>"$work/runs.tsv"
  log "  $server round $round: $rps req/s, p99 ${p99} ms, errors $errors, noise ${noise_percent}%," \
    "steal $((steal_hundredths / 100)).$(printf %02d $((steal_hundredths % 100)))%"
}

# measure ARGS...: measure_wrk ARGS, again (up to NOISE_RETRIES times) while either core was busy
# with something else for more than MAX_NOISE_PERCENT of the run or stolen by the hypervisor for
# more than MAX_STEAL_PERCENT; the last attempt counts. Every attempt stays in runs.tsv.
measure() {
  local attempt=1 steal_limit
  steal_limit=$(awk -v p="$MAX_STEAL_PERCENT" 'BEGIN { printf "%d", p * 100 }')
  while :; do
    measure_wrk "$1" "$2" "$3" "$attempt" "${@:4}"
    if ((attempt > NOISE_RETRIES)) ||
      ((noise_percent <= MAX_NOISE_PERCENT && steal_hundredths <= steal_limit)); then
      break
    fi
    log "  (noisy: again)"
    attempt=$((attempt + 1))
  done
}

# syscall_counts NAME PORT PIDS...: syscalls per request over a short wrk run (SYSCALL_SECONDS),
# counted by perf (all syscalls, low overhead) and by strace -c (per syscall; slows the server,
# so its rate is lower but the count per request is what matters). wrk rather than ab -k, so the
# counts come from the same HTTP/1.1 client as the throughput runs.
syscall_counts() {
  local name=$1 port=$2 pid_list tracer pid_args=() pid requests
  shift 2
  pid_list=$(tr ' ' ',' <<<"$*")
  local wrk_command=(wrk -t1 -c"$CONNECTIONS" -d"$SYSCALL_SECONDS" "http://$HOST:$port/getbalance")
  if command -v perf >/dev/null; then # with -p, the command only sets how long perf counts
    taskset -c "$CLIENT_CORE" perf stat -x, -e raw_syscalls:sys_enter -p "$pid_list" \
      -o "$work/perf-stat-$name.txt" -- "${wrk_command[@]}" >"$work/wrk-perf-$name.txt" 2>&1 || true
    read -r _ _ _ _ requests < <(parse_wrk "$work/wrk-perf-$name.txt")
    fact "syscalls_perf_$name" "$(awk -F, -v n="$requests" \
      '/raw_syscalls:sys_enter/ { printf "%.2f", $1 / n }' "$work/perf-stat-$name.txt")"
  fi
  if command -v strace >/dev/null; then
    for pid in "$@"; do pid_args+=(-p "$pid"); done
    taskset -c "$CLIENT_CORE" strace -c -f -q -o "$work/strace-$name.txt" "${pid_args[@]}" &
    tracer=$!
    started_pids+=("$tracer")
    sleep 1
    taskset -c "$CLIENT_CORE" "${wrk_command[@]}" >"$work/wrk-strace-$name.txt" 2>&1 || true
    kill -TERM "$tracer" 2>/dev/null || true # strace detaches and writes its summary
    wait "$tracer" || true
    forget_pid "$tracer"
    read -r _ _ _ _ requests < <(parse_wrk "$work/wrk-strace-$name.txt")
    fact "syscalls_strace_$name" "$(awk -v n="$requests" \
      '$NF == "total" { printf "%.2f", $4 / n }' "$work/strace-$name.txt")"
    fact "syscalls_top_$name" "$(awk -v n="$requests" \
      '$1 ~ /^[0-9.]+$/ && $NF != "total" { printf "%s %.2f\n", $NF, $4 / n }' \
      "$work/strace-$name.txt" | sort -k2,2nr | head -7 | awk '{ printf "%s%s %s", sep, $1, $2; sep = ", " }')"
  fi
}

# profile NAME PORT PIDS...: perf record during one wrk run; the top symbols go to the facts.
profile() {
  local name=$1 port=$2 pid_list
  shift 2
  pid_list=$(tr ' ' ',' <<<"$*")
  # With -p, the command (wrk) only sets how long perf records.
  taskset -c "$CLIENT_CORE" perf record -q -F 999 -g -p "$pid_list" -o "$work/perf-$name.data" -- \
    wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "http://$HOST:$port/getbalance" >/dev/null 2>&1 || true
  perf report -i "$work/perf-$name.data" --stdio --no-children -g none --sort dso,symbol \
    --percent-limit 1 2>/dev/null | grep -E '^ +[0-9.]+%' | sed 's/[ -]*$//' | head -25 >"$work/perf-top-$name.txt" || true
  perf report -i "$work/perf-$name.data" --stdio --no-children -g none --sort comm \
    2>/dev/null | grep -E '^ +[0-9.]+%' | sed 's/[ -]*$//' | head -8 >"$work/perf-threads-$name.txt" || true
}

# ---------------------------------------------------------------- phases

warm_up() { # PORT
  taskset -c "$CLIENT_CORE" wrk -t1 -c"$CONNECTIONS" -d2s "http://$HOST:$1/getbalance" >/dev/null
}

# hold N PORT NAME: starts bench/hold.py; waits until every connection is open; sets holder_pid.
hold() {
  local count=$1 port=$2 name=$3 tries=0
  taskset -c "$CLIENT_CORE" python3 "$bench_dir/hold.py" "$port" "$count" \
    >"$work/hold-$name.out" 2>&1 &
  holder_pid=$!
  started_pids+=("$holder_pid")
  until grep -qs '^holding' "$work/hold-$name.out"; do
    kill -0 "$holder_pid" 2>/dev/null || die "hold.py ($name) failed: $(cat "$work/hold-$name.out")"
    ((tries++ < 1800)) || die "hold.py ($name) could not open $count connections in 180 s"
    sleep 0.1
  done
}

holder_status() { # NAME: the helper's last "open=... answered=... closed=..." line
  grep -s '^open=' "$work/hold-$1.out" | tail -1
}

# hold_for SERVER HUNG PORT: makes SERVER's HUNG connections the only ones held, before it is
# measured. Holding both servers' connections at once would put twice HUNG idle connections on
# the machine, and 20,000 idle connections to nginx were measured to double the p99 of an
# unreliable holding none of them (BENCHMARKS.md): each server is measured with its own HUNG.
# Uses and sets held_for and held_pid; the helper resets its connections on exit.
hold_for() {
  local server=$1 hung=$2 port=$3 tries=0 taken_before=0
  [[ $held_for == "$server" ]] && return 0
  if [[ -n $held_for ]]; then
    fact "held_at_end_${held_for}_$hung" "$(holder_status "$held_for-$hung")"
    stop_pid "$held_pid" || true
    sleep 1 # the server closes what the helper reset, off the measured run
  fi
  [[ $server == unreliable ]] && taken_before=$(stats_field "$port" forced_counts timeout)
  hold "$hung" "$port" "$server-$hung"
  held_pid=$holder_pid held_for=$server
  until if [[ $server == unreliable ]]; then
    (($(stats_field "$port" forced_counts timeout) >= taken_before + hung))
  else
    [[ $(holder_status "$server-$hung") == *"answered=$hung "* ]]
  fi; do
    ((tries++ < 600)) || die "$server did not take all $hung held connections in 60 s"
    sleep 0.1
  done
}

# phase HUNG: fresh servers, HUNG connections held on each, ROUNDS alternating wrk runs.
phase() {
  local hung=$1 extra=() unreliable_pid unreliable_port round server order
  local logfile=$work/unreliable-$hung.log total held_for='' held_pid=
  ((hung >= 5000)) && extra=(--max-connections 20000)
  log "phase: $hung hung connections"
  start_unreliable "unreliable-$hung" --weights 200=1 --hang 10m --log-file "$logfile" "${extra[@]}"
  unreliable_pid=$server_pid unreliable_port=$server_port
  if [[ ! -f $work/page.html ]]; then
    measure_body_size "$unreliable_port"
  fi
  start_nginx "$hung"
  # shellcheck disable=SC2086 # nginx_pids is a list of pids
  set -- $nginx_pids
  # Unreliable first in odd rounds, nginx first in even ones (ABBA), so slow drifts in the
  # machine's noise weigh on both alike, and hung connections change hands once per round.
  for ((round = 1; round <= ROUNDS; round++)); do
    order=(unreliable nginx)
    ((round % 2)) || order=(nginx unreliable)
    for server in "${order[@]}"; do
      if [[ $server == unreliable ]]; then
        ((hung > 0)) && hold_for unreliable "$hung" "$unreliable_port"
        ((round == 1)) && warm_up "$unreliable_port"
        measure "$hung" unreliable "$round" "$unreliable_port" "$logfile" "$unreliable_pid"
      else
        ((hung > 0)) && hold_for nginx "$hung" "$nginx_port"
        ((round == 1)) && warm_up "$nginx_port"
        measure "$hung" nginx "$round" "$nginx_port" - "$@"
      fi
    done
  done
  if ((hung == 0)); then
    log "syscalls per request (wrk -d$SYSCALL_SECONDS under perf stat, then under strace -c -f)"
    syscall_counts unreliable "$unreliable_port" "$unreliable_pid"
    syscall_counts nginx "$nginx_port" "$@"
  fi
  if [[ -n $held_for ]]; then
    fact "held_at_end_${held_for}_$hung" "$(holder_status "$held_for-$hung")"
    stop_pid "$held_pid" || true
  fi
  total=$(stats_field "$unreliable_port" total)
  stop_unreliable_and_count_lines "$unreliable_pid" "$logfile"
  fact "log_requests_$hung" "$total"
  fact "log_lines_$hung" "$log_lines"
  rm -f "$logfile"
  stop_nginx
}

profile_phase() {
  log "profile: perf record of each server under wrk (symbolised copy of the binary)"
  local saved_bin=$bin
  bin=$work/unreliable-symbols
  start_unreliable unreliable-profile --weights 200=1 --hang 10m --log-file "$work/profile.log"
  bin=$saved_bin
  warm_up "$server_port"
  profile unreliable "$server_port" "$server_pid"
  stop_pid "$server_pid" || true
  start_nginx profile
  warm_up "$nginx_port"
  # shellcheck disable=SC2086 # nginx_pids is a list of pids
  profile nginx "$nginx_port" $nginx_pids
  stop_nginx
  rm -f "$work/profile.log"
}

# The memory of LOGCAP_ENTRIES log entries: push that many requests (each with an X-Request-Id
# shaped like the client's) into a server with --log-capacity LOGCAP_ENTRIES and compare RSS.
log_capacity_phase() {
  local logfile=$work/logcap.log start rss_before total_before total rss_after
  log "log memory: pushing $LOGCAP_ENTRIES requests into --log-capacity $LOGCAP_ENTRIES"
  start_unreliable logcap --weights 200=1 --log-capacity "$LOGCAP_ENTRIES" --log-file "$logfile"
  warm_up "$server_port"
  sleep 0.3
  rss_before=$(status_kib "$server_pid" VmRSS)
  total_before=$(stats_field "$server_port" total)
  start=$SECONDS
  total=$total_before
  while ((total < LOGCAP_ENTRIES + LOGCAP_ENTRIES / 20 && SECONDS - start < LOGCAP_MAX_SECONDS)); do
    taskset -c "$CLIENT_CORE" wrk -t1 -c"$CONNECTIONS" -d10s -H "X-Request-Id: $REQUEST_ID" \
      "http://$HOST:$server_port/getbalance" >/dev/null
    total=$(stats_field "$server_port" total)
  done
  sleep 0.3
  rss_after=$(status_kib "$server_pid" VmRSS)
  fact logcap_rss_before_kib "$rss_before"
  fact logcap_entries_before "$total_before"
  fact logcap_rss_after_kib "$rss_after"
  fact logcap_hwm_kib "$(status_kib "$server_pid" VmHWM)"
  fact logcap_entries_after "$total"
  fact logcap_capacity "$LOGCAP_ENTRIES"
  fact logcap_seconds "$((SECONDS - start))"
  stop_unreliable_and_count_lines "$server_pid" "$logfile"
  fact logcap_file_lines "$log_lines"
  rm -f "$logfile"
}

client_phase() {
  local run started elapsed status
  log "client: --count 10000 --concurrency 64 --timeout 200ms against default weights, $CLIENT_RUNS runs"
  start_unreliable client-server --log-file "$work/client-server.log"
  for ((run = 1; run <= CLIENT_RUNS; run++)); do
    started=$EPOCHREALTIME
    status=0
    taskset -c "$CLIENT_CORE" "$bin" client --host "$HOST" --port "$server_port" --count 10000 \
      --concurrency 64 --timeout 200ms --tolerance 1 --json --quiet --show-logs none \
      >"$work/client-$run.json" 2>"$work/client-$run.err" || status=$?
    elapsed=$(python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.3f}")' \
      "$started" "$EPOCHREALTIME")
    fact "client_wall_$run" "$elapsed"
    fact "client_status_$run" "$status"
    log "  client run $run: ${elapsed} s wall, exit status $status"
  done
  stop_pid "$server_pid" || true
  rm -f "$work/client-server.log"
}

startup_phase() {
  log "start-up: exec to 'listening on', median of $STARTUP_RUNS"
  local name binary
  for name in gnu musl; do
    binary=$bin
    [[ $name == musl ]] && binary=$musl_bin
    [[ -n $binary ]] || continue
    taskset -c "$SERVER_CORE" python3 "$bench_dir/startup.py" "$STARTUP_RUNS" "$binary" \
      --weights 200=1 --log-file "$work/startup.log" >"$work/startup-$name.txt"
    fact "startup_$name" "$(tail -1 "$work/startup-$name.txt")"
  done
  rm -f "$work/startup.log"
}

# ---------------------------------------------------------------- main

main() {
  check_machine
  clock_ticks=$(getconf CLK_TCK)
  build
  record_machine
  # From here on this script, wrk and the helpers stay off the servers' core.
  taskset -pc "$CLIENT_CORE" $$ >/dev/null
  log "load average $(cut -d' ' -f1-3 /proc/loadavg) (other work on this machine shows as noise %)"
  printf '%s\t' phase server round attempt rps p50_ms p99_ms errors requests cpu_ticks \
    ctx_voluntary ctx_involuntary rss_peak_kib threads_peak log_lag wall_us core_busy_ticks \
    core_steal_ticks children_cpu_ms client_core_busy_ticks client_core_steal_ticks >"$work/runs.tsv"
  echo noise_percent >>"$work/runs.tsv"
  phase 0
  local hung
  for hung in $HUNG_LEVELS; do
    phase "$hung"
  done
  log_capacity_phase
  client_phase
  startup_phase
  ((PROFILE)) && profile_phase
  python3 "$bench_dir/table.py" "$work" | tee "$work/report.md"
}

main "$@"
