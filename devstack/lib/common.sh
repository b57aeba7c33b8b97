# shellcheck shell=bash
# Shared helpers for devstack/stack.sh: logging, timing, packages, pid files, ports, waits.
# Sourced by stack.sh; expects `set -euo pipefail` from the caller.

# ---------------------------------------------------------------------------
# Layout and fixed settings
# ---------------------------------------------------------------------------
STACK_DIR=${FERRY_STACK_DIR:-/tmp/ferry-stack}
STACK_LOG_DIR=$STACK_DIR/logs
STACK_PID_DIR=$STACK_DIR/run
STACK_ENV_FILE=$STACK_DIR/stack.env

STACK_PASSWORD=${FERRY_STACK_PASSWORD:-ferry-dev-secret}
ADMIN_PASSWORD=${FERRY_STACK_ADMIN_PASSWORD:-$STACK_PASSWORD}
DEMO_PASSWORD=${FERRY_STACK_DEMO_PASSWORD:-$STACK_PASSWORD}
ALT_PASSWORD=${FERRY_STACK_ALT_PASSWORD:-$STACK_PASSWORD}
READER_PASSWORD=${FERRY_STACK_READER_PASSWORD:-$STACK_PASSWORD}
FERRY_SERVICE_PASSWORD=${FERRY_STACK_SERVICE_PASSWORD:-$STACK_PASSWORD}

FERRY_API_URL=http://127.0.0.1:9790
REGIONS=(RegionOne RegionTwo)

# Debian's own python for Debian's python scripts (keystone-manage, uwsgi app, openstack, ceph):
# a pyenv python3 may come first on the caller's PATH.
DEBIAN_ENV=(env -u PYTHONHOME -u PYTHONPATH -u VIRTUAL_ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin)

# check_config: settings that would break the stack, refused before anything starts.
check_config() {
    local p
    for p in "$ADMIN_PASSWORD" "$FERRY_SERVICE_PASSWORD" "$DEMO_PASSWORD" "$ALT_PASSWORD" "$READER_PASSWORD"; do
        [[ $p =~ ^[A-Za-z0-9._+@%,=-]+$ ]] ||
            die "passwords may only use letters, digits and ._+@%,=- (they go unquoted into stack.env and JSON)"
    done
    [[ $STACK_DIR == /* && $STACK_DIR != *[[:space:]]* ]] ||
        die "FERRY_STACK_DIR must be an absolute path without spaces: '$STACK_DIR'"
}

# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------
log() { printf '%s [stack] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { printf '%s [stack] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The component/step currently running, for failure messages.
CURRENT_STEP=""
CURRENT_LOG=""

# step COMPONENT/STEP [LOGFILE]: announce a step; a failure names it and shows LOGFILE's tail.
step() {
    CURRENT_STEP=$1
    CURRENT_LOG=${2:-}
}

die() {
    printf '\n%s [stack] FAILED%s: %s\n' "$(date +%H:%M:%S)" "${CURRENT_STEP:+ in $CURRENT_STEP}" "$*" >&2
    show_log_tail "$CURRENT_LOG"
    exit 1
}

show_log_tail() {
    local f
    for f in "$@"; do
        [[ -n $f && -f $f ]] || continue
        printf -- '----- last lines of %s -----\n' "$f" >&2
        tail -n 30 "$f" >&2 || true
        printf -- '-----\n' >&2
    done
}

# ERR trap: any failing command not handled explicitly ends up here.
on_err() {
    local rc=$? line=${BASH_LINENO[0]} src=${BASH_SOURCE[1]:-?}
    trap - ERR
    printf '\n%s [stack] FAILED%s: command exited %s at %s:%s: %s\n' "$(date +%H:%M:%S)" \
        "${CURRENT_STEP:+ in $CURRENT_STEP}" "$rc" "${src##*/}" "$line" "$BASH_COMMAND" >&2
    show_log_tail "$CURRENT_LOG"
    exit "$rc"
}

# run LOGFILE CMD...: run a command with its output appended to LOGFILE; on failure, die.
run() {
    local logf=$1; shift
    printf '+ %s\n' "$*" >>"$logf"
    if ! "$@" >>"$logf" 2>&1; then
        CURRENT_LOG=$logf
        die "command failed: $*"
    fi
}

# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------
now_ms() { local t; t=$(date +%s%N); echo $((t / 1000000)); }
fmt_ms() { printf '%d.%03ds' $(($1 / 1000)) $(($1 % 1000)); }

# ---------------------------------------------------------------------------
# Waits (every wait has a timeout)
# ---------------------------------------------------------------------------
# wait_until TIMEOUT_S DESCRIPTION CMD...: poll CMD every 0.1-0.5 s until it succeeds.
wait_until() {
    local timeout=$1 what=$2; shift 2
    local deadline=$(($(now_ms) + timeout * 1000)) delay=0.1
    while ! "$@" >/dev/null 2>&1; do
        if (($(now_ms) >= deadline)); then
            die "timed out after ${timeout}s waiting for $what"
        fi
        sleep "$delay"
        delay=$([[ $delay == 0.1 ]] && echo 0.2 || echo 0.5)
    done
}

# ---------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------
# port_listening PORT: something listens on 127.0.0.1:PORT (or on any address).
port_listening() {
    ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}
port_free() { ! port_listening "$1"; }
port_owner() { ss -Hltnp "sport = :$1" 2>/dev/null | head -n 3; }
# listener_pid PORT: pid of the (first) process listening on PORT.
listener_pid() {
    { ss -Hltnp "sport = :$1" 2>/dev/null || true; } | { grep -o 'pid=[0-9]*' || true; } | head -n1 | cut -d= -f2
}

# ---------------------------------------------------------------------------
# Processes started by the stack: one pid file each. A pid counts as ours only when it is
# alive, not a zombie, and its command line contains a marker unique to this stack (a path
# under $STACK_DIR), so stale pid files (reboot, CI) never point at someone else's process.
# ---------------------------------------------------------------------------
pid_of() { # PIDFILE -> pid on stdout, or nothing
    local pid
    [[ -f $1 ]] || return 1
    read -r pid <"$1" 2>/dev/null || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    echo "$pid"
}

# proc_matches PID MARKER: PID is alive (not a zombie) and its cmdline contains MARKER.
proc_matches() {
    local pid=$1 marker=$2 state cmd
    [[ -r /proc/$pid/stat ]] || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z && $state != X ]] || return 1
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmd == *"$marker"* ]]
}

# pidfile_alive PIDFILE MARKER
pidfile_alive() {
    local pid
    pid=$(pid_of "$1") || return 1
    proc_matches "$pid" "$2"
}

# stop_pidfile NAME PIDFILE MARKER [TERM_TIMEOUT_S] [GROUP]: TERM, then KILL after the timeout.
# GROUP=group signals the whole process group (the pid must lead it, e.g. started by setsid).
stop_pidfile() {
    local name=$1 pidfile=$2 marker=$3 timeout=${4:-5} group=${5:-}
    local pid target deadline
    if ! pid=$(pid_of "$pidfile"); then
        rm -f "$pidfile"
        return 0
    fi
    if ! proc_matches "$pid" "$marker"; then
        rm -f "$pidfile"
        return 0
    fi
    target=$pid
    if [[ $group == group ]]; then
        target=-$pid
    fi
    log "stopping $name (pid $pid)"
    kill -TERM -- "$target" 2>/dev/null || true
    deadline=$(($(now_ms) + timeout * 1000))
    while proc_matches "$pid" "$marker"; do
        if (($(now_ms) >= deadline)); then
            warn "$name (pid $pid) still alive after ${timeout}s: KILL"
            kill -KILL -- "$target" 2>/dev/null || true
            sleep 0.2
            break
        fi
        sleep 0.1
    done
    if [[ $group == group ]]; then
        # Leftover members of the group (uwsgi workers) must go too.
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

# ---------------------------------------------------------------------------
# Debian packages
# ---------------------------------------------------------------------------
APT_UPDATED=0
POLICY_RC_CREATED=0

pkg_installed() {
    local st
    st=$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) || return 1
    [[ $st == installed ]]
}

missing_packages() {
    local p
    for p in "$@"; do
        pkg_installed "$p" || echo "$p"
    done
}

# ensure_packages PKG...: install the missing ones (non-interactive, no recommends); apt-get
# update at most once per run. No service may start during the install: if the machine has no
# /usr/sbin/policy-rc.d, one that refuses starts is put there for the duration.
ensure_packages() {
    local missing logf=$STACK_LOG_DIR/apt.log
    mapfile -t missing < <(missing_packages "$@")
    ((${#missing[@]} > 0)) || return 0
    [[ $(id -u) == 0 ]] || die "packages missing (${missing[*]}) and not root: install them first"
    log "installing Debian packages: ${missing[*]} (log: $logf)"
    local old_step=$CURRENT_STEP old_log=$CURRENT_LOG
    step "${CURRENT_STEP:-install}/apt" "$logf"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# temporary, from ferry devstack/stack.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=600
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    if ((APT_UPDATED == 0)); then
        run "$logf" "${apt[@]}" update
        APT_UPDATED=1
    fi
    run "$logf" "${apt[@]}" install --no-install-recommends "${missing[@]}"
    remove_policy_rc
    step "$old_step" "$old_log"
}

remove_policy_rc() {
    if ((POLICY_RC_CREATED == 1)); then
        rm -f /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=0
    fi
}

# ---------------------------------------------------------------------------
# Misc
# ---------------------------------------------------------------------------
# write_file_atomic PATH MODE: stdin -> PATH via a temporary file in the same directory; an
# unchanged file is left alone (same content, same mtime).
write_file_atomic() {
    local path=$1 mode=${2:-0644} tmp
    tmp=$(mktemp "$path.XXXXXX")
    cat >"$tmp"
    if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
        chmod "$mode" "$path"
        return 0
    fi
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
}

# json_get KEY.PATH: read JSON on stdin, print the value at a dotted path (Debian's python).
json_get() {
    "${DEBIAN_ENV[@]}" python3 -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[int(k)] if isinstance(v, list) else v[k]
print(v if not isinstance(v, (dict, list)) else json.dumps(v))
' "$1"
}
