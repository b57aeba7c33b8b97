#!/usr/bin/env bash
# Ferry devstack: the local two-region stack of real services.
#
#   devstack/stack.sh up       install what is missing, start everything, write $FERRY_STACK_DIR/stack.env
#   devstack/stack.sh down     stop exactly what the stack started
#   devstack/stack.sh status   one line per component; exit 1 if any is down
#
# See devstack/README.md. Each component is a file in devstack/lib/ with functions X_install,
# X_start, X_stop, X_status and optionally X_wait (readiness checked once every component started)
# and X_env (its lines of stack.env); COMPONENTS is the start order, `down` goes in reverse.
set -Eeuo pipefail

DEVSTACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# System tools first (a pyenv python3 or a local ceph build must not shadow Debian's).
PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export PATH

# shellcheck source=lib/common.sh
source "$DEVSTACK_DIR/lib/common.sh"
# shellcheck source=lib/rabbitmq.sh
source "$DEVSTACK_DIR/lib/rabbitmq.sh"
# shellcheck source=lib/ceph.sh
source "$DEVSTACK_DIR/lib/ceph.sh"
# shellcheck source=lib/keystone.sh
source "$DEVSTACK_DIR/lib/keystone.sh"
# shellcheck source=lib/cinder.sh
source "$DEVSTACK_DIR/lib/cinder.sh"
# shellcheck source=lib/ferry.sh
source "$DEVSTACK_DIR/lib/ferry.sh"

ALL_COMPONENTS=(rabbitmq ceph keystone cinder ferry)
# FERRY_STACK_COMPONENTS="ceph keystone" restricts a run to some components (in this order);
# FERRY_STACK_FERRY=0 leaves Ferry's own services (ferry-api, the agents) out, FERRY_STACK_CINDER=0
# leaves Cinder out. `down` without FERRY_STACK_COMPONENTS stops every component.
DEFAULT_COMPONENTS=()
for c in "${ALL_COMPONENTS[@]}"; do
    [[ $c == ferry && ${FERRY_STACK_FERRY:-1} == 0 ]] && continue
    [[ $c == cinder && ${FERRY_STACK_CINDER:-1} == 0 ]] && continue
    DEFAULT_COMPONENTS+=("$c")
done
[[ ${1:-} == down && -z ${FERRY_STACK_COMPONENTS:-} ]] && DEFAULT_COMPONENTS=("${ALL_COMPONENTS[@]}")
read -r -a COMPONENTS <<<"${FERRY_STACK_COMPONENTS:-${DEFAULT_COMPONENTS[*]}}"
for c in "${COMPONENTS[@]}"; do
    [[ " ${ALL_COMPONENTS[*]} " == *" $c "* ]] || { echo "unknown component '$c' in FERRY_STACK_COMPONENTS" >&2; exit 2; }
done

trap on_err ERR
trap remove_policy_rc EXIT

usage() {
    sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
}

lock_stack() {
    mkdir -p "$STACK_DIR" "$STACK_LOG_DIR" "$STACK_PID_DIR"
    exec 9>"$STACK_DIR/.lock"
    flock -w 600 9 || die "another stack.sh holds $STACK_DIR/.lock for more than 600 s"
}

write_stack_env() {
    local c
    {
        echo "FERRY_STACK_DIR=$STACK_DIR"
        echo "STACK_LOG_DIR=$STACK_LOG_DIR"
        echo "STACK_PID_DIR=$STACK_PID_DIR"
        echo "REGIONS=$(IFS=,; echo "${REGIONS[*]}")"
        echo "FERRY_API_URL=$FERRY_API_URL"
        echo "FERRY_API_PORT=9790"
        echo "AGENT_REGIONONE_DATA_PORT=9791"
        echo "AGENT_REGIONTWO_DATA_PORT=9792"
        echo "CINDER_REGIONONE_PORT=8776"
        echo "CINDER_REGIONTWO_PORT=8786"
        echo "OPENRC_ADMIN=$STACK_DIR/openrc.admin"
        echo "OPENRC_DEMO=$STACK_DIR/openrc.demo"
        echo "OPENRC_ALT=$STACK_DIR/openrc.alt"
        echo "OPENRC_READER=$STACK_DIR/openrc.reader"
        for c in "${ALL_COMPONENTS[@]}"; do
            if declare -F "${c}_env" >/dev/null; then
                "${c}_env"
            fi
        done
    } | write_file_atomic "$STACK_ENV_FILE" 0600
}

cmd_up() {
    step "config"
    check_config
    lock_stack
    local t0 t c summary=()
    t0=$(now_ms)
    log "up: stack in $STACK_DIR (logs in $STACK_LOG_DIR)"
    t=$(now_ms)
    for c in "${COMPONENTS[@]}"; do
        "${c}_install"
    done
    summary+=(" packages $(fmt_ms $(($(now_ms) - t)))")
    for c in "${COMPONENTS[@]}"; do
        t=$(now_ms)
        step "$c/start"
        "${c}_start"
        summary+=(" $c $(fmt_ms $(($(now_ms) - t)))")
    done
    # Optional X_wait: readiness that may complete in the background while later components start.
    for c in "${COMPONENTS[@]}"; do
        if declare -F "${c}_wait" >/dev/null; then
            t=$(now_ms)
            "${c}_wait"
            summary+=(" $c-wait $(fmt_ms $(($(now_ms) - t)))")
        fi
    done
    step "stack.env"
    write_stack_env
    CURRENT_STEP=""
    log "up: done in $(fmt_ms $(($(now_ms) - t0))) ($(IFS=,; echo "${summary[*]}" | sed 's/^ //'))"
    log "up: environment in $STACK_ENV_FILE"
}

cmd_down() {
    lock_stack
    local t0 i c
    t0=$(now_ms)
    for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
        c=${COMPONENTS[i]}
        step "$c/stop"
        "${c}_stop"
    done
    CURRENT_STEP=""
    log "down: done in $(fmt_ms $(($(now_ms) - t0)))"
}

cmd_status() {
    local c rc=0
    for c in "${COMPONENTS[@]}"; do
        "${c}_status" || rc=1
    done
    return $rc
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status || exit 1 ;;
-h | --help | help | "") usage ;;
*)
    echo "unknown command: $1" >&2
    usage
    ;;
esac
