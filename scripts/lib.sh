# shellcheck shell=bash
# Helpers shared by scripts/run and scripts/test. Source it; do not execute it.
#   ensure_apt_packages PKG...   install Debian packages that are missing
#   free_port                    print a free loopback TCP port chosen by the kernel
#   wait_for_port HOST PORT S    wait up to S seconds until HOST:PORT accepts connections
#   redis_ping PORT              true if a Redis on 127.0.0.1:PORT answers PONG
#   start_redis DIR PORT         start deploy/redis/redis.conf on PORT with data in DIR
#   stop_redis PORT              ask the Redis on 127.0.0.1:PORT to shut down (saves first)
#   cargo_target_dir             print cargo's target directory (CARGO_TARGET_DIR or config aware)

# Repository root (this file lives in ROOT/scripts/).
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}

# cargo_target_dir : where cargo puts its builds. `cargo metadata` answers what cargo
# itself uses: CARGO_TARGET_DIR, build.target-dir in a .cargo/config.toml, or ROOT/target.
# A script that assumed ROOT/target ran a stale binary or none ("No such file or directory").
cargo_target_dir() {
    local dir
    dir=$(cd "$ROOT" && cargo metadata --no-deps --format-version 1 2>/dev/null |
        grep -o '"target_directory":"[^"]*"' | head -n 1 | cut -d'"' -f4) || true
    [[ -n $dir ]] || dir=${CARGO_TARGET_DIR:-$ROOT/target}
    printf '%s\n' "$dir"
}

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Commands that prove a package is present even when it was not installed by dpkg.
_pkg_command() {
    case $1 in
        redis-server) echo redis-server ;;
        redis-tools) echo redis-cli ;;
        python3) echo python3 ;;
        prometheus) echo promtool ;;
        nodejs) echo node ;;
        *) echo "" ;;
    esac
}

_pkg_present() {
    local pkg=$1 cmd
    cmd=$(_pkg_command "$pkg")
    if [[ -n $cmd ]] && command -v "$cmd" >/dev/null 2>&1; then
        return 0
    fi
    if command -v "$pkg" >/dev/null 2>&1; then
        return 0
    fi
    [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true) == "install ok installed" ]]
}

_SCANGW_APT_UPDATED=${_SCANGW_APT_UPDATED:-0}

# ensure_apt_packages PKG... : installs only the missing ones; `apt-get update` runs at
# most once per script run, and only when something has to be installed.
ensure_apt_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        _pkg_present "$pkg" || missing+=("$pkg")
    done
    ((${#missing[@]} > 0)) || return 0

    command -v apt-get >/dev/null 2>&1 ||
        die "missing packages (${missing[*]}) and no apt-get: install them by hand"
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "need root or sudo to install: ${missing[*]}"
        sudo=(sudo)
    fi
    # Wait for a concurrent apt/dpkg (e.g. unattended-upgrades) instead of failing at once.
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300)
    if [[ $_SCANGW_APT_UPDATED != 1 ]]; then
        log "apt-get update"
        "${apt[@]}" update -qq
        _SCANGW_APT_UPDATED=1
    fi
    log "apt-get install ${missing[*]}"
    "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}"
}

# free_port : the kernel picks an unused loopback port (it is free now; bind it soon).
free_port() {
    python3 -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# wait_for_port HOST PORT TIMEOUT_S : polls every 0.1 s until a TCP connect succeeds.
wait_for_port() {
    local host=$1 port=$2 timeout_s=$3
    local deadline=$((SECONDS + timeout_s))
    while true; do
        # Subshell so the probe's file descriptor closes at once; `timeout` bounds a
        # connect that hangs (unreachable host) to one second.
        if timeout 1 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            warn "$host:$port did not accept connections within ${timeout_s}s"
            return 1
        fi
        sleep 0.1
    done
}

# redis_ping PORT : true when a Redis on 127.0.0.1:PORT answers PONG (not while LOADING).
# Bounded: something else listening on PORT must not hang the caller.
redis_ping() {
    [[ $(timeout 2 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null || true) == PONG ]]
}

# _redis_server_pid PORT : process id reported by the Redis answering on PORT.
_redis_server_pid() {
    timeout 2 redis-cli -h 127.0.0.1 -p "$1" info server 2>/dev/null |
        sed -n 's/^process_id:\([0-9]*\).*/\1/p' || true
}

# start_redis DIR PORT : starts redis-server with the project's config, data, pid file and
# log in DIR, then waits (up to SCANGW_REDIS_START_TIMEOUT_S, default 30 s; loading a big
# AOF takes a while) until that very process answers PONG. Fails at once if a server
# already answers on PORT or the new one logs a fatal error (e.g. port in use, bad AOF).
start_redis() {
    local dir=$1 port=$2
    local timeout_s=${SCANGW_REDIS_START_TIMEOUT_S:-30}
    if redis_ping "$port"; then
        warn "a Redis already answers on 127.0.0.1:$port; not starting another"
        return 1
    fi
    mkdir -p "$dir"
    # Absolute path: redis-server chdirs into --dir before it opens the pid and log files.
    dir=$(cd "$dir" && pwd)
    local log=$dir/redis.log pidfile=$dir/redis.pid
    # Only log lines written by this start count when looking for a fatal error.
    local log_offset=0
    [[ -f $log ]] && log_offset=$(stat -c %s "$log")
    rm -f "$pidfile"

    log "starting redis-server on 127.0.0.1:$port (data in $dir)"
    redis-server "$ROOT/deploy/redis/redis.conf" \
        --port "$port" \
        --dir "$dir" \
        --daemonize yes \
        --pidfile "$pidfile" \
        --logfile "$log" || {
        warn "redis-server failed to start; see $log"
        return 1
    }

    local deadline=$((SECONDS + timeout_s)) pid=""
    while true; do
        [[ -f $pidfile ]] && pid=$(<"$pidfile")
        if [[ -n $pid ]] && redis_ping "$port" && [[ $(_redis_server_pid "$port") == "$pid" ]]; then
            break
        fi
        # Process substitution, not a pipe: with pipefail, grep -q closing early could
        # turn a match into a SIGPIPE failure of tail.
        if [[ -f $log ]] && grep -qE 'aborting|Fatal|FATAL|Bad file format|Unrecoverable' \
            < <(tail -c +"$((log_offset + 1))" "$log"); then
            warn "redis-server on port $port failed; last lines of $log:"
            tail -n 5 "$log" >&2
            return 1
        fi
        if ((SECONDS >= deadline)); then
            warn "redis-server on port $port did not answer PING within ${timeout_s}s"
            [[ -f $log ]] && tail -n 20 "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    log "redis-server ready on 127.0.0.1:$port (pid $pid)"
}

# stop_redis PORT : clean shutdown (fsyncs the AOF, writes a final snapshot).
stop_redis() {
    redis-cli -h 127.0.0.1 -p "$1" shutdown >/dev/null 2>&1 || true
}
