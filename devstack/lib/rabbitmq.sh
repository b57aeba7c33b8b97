# shellcheck shell=bash
# RabbitMQ: the machine's own broker at 127.0.0.1:5672 (guest/guest). If none answers, start the
# installed one with `rabbitmq-server -detached` (installing the package first if needed) and
# remember that the stack started it: `down` stops only a broker the stack started.

RABBIT_HOST=127.0.0.1
RABBIT_PORT=5672
TRANSPORT_URL=rabbit://guest:guest@$RABBIT_HOST:$RABBIT_PORT/
R_PIDFILE=$STACK_PID_DIR/rabbitmq.pid        # only when the stack started the broker
R_EPMD_PIDFILE=$STACK_PID_DIR/rabbitmq-epmd.pid
R_LOG=$STACK_LOG_DIR/rabbitmq.log
R_PROC_MARKER=rabbit

# A real AMQP broker answers the protocol header with a frame (type 1: method frame).
rabbitmq_amqp_ok() {
    local b
    b=$(timeout 5 bash -c "exec 3<>/dev/tcp/$RABBIT_HOST/$RABBIT_PORT && printf 'AMQP\\x00\\x00\\x09\\x01' >&3 && head -c 1 <&3" 2>/dev/null | od -An -tx1 | tr -d ' \n') || return 1
    [[ $b == 01 ]]
}

rabbitmq_ours() { pidfile_alive "$R_PIDFILE" "$R_PROC_MARKER"; }

rabbitmq_install() {
    step "rabbitmq/install"
    if port_listening "$RABBIT_PORT" || command -v rabbitmq-server >/dev/null 2>&1; then
        return 0
    fi
    ensure_packages rabbitmq-server
}

rabbitmq_start() {
    step "rabbitmq/start" "$R_LOG"
    mkdir -p "$STACK_PID_DIR"
    if rabbitmq_amqp_ok; then
        if rabbitmq_ours; then
            log "rabbitmq: already up (started by the stack, pid $(pid_of "$R_PIDFILE"))"
        else
            rm -f "$R_PIDFILE" "$R_EPMD_PIDFILE"
            log "rabbitmq: using the machine's broker at $RABBIT_HOST:$RABBIT_PORT"
        fi
        return 0
    fi
    rm -f "$R_PIDFILE" "$R_EPMD_PIDFILE"
    if port_listening "$RABBIT_PORT"; then
        die "something listens on $RABBIT_PORT but does not speak AMQP: $(port_owner "$RABBIT_PORT")"
    fi
    command -v rabbitmq-server >/dev/null 2>&1 || die "rabbitmq-server is not installed"
    local epmd_before
    epmd_before=$(listener_pid 4369 || true)
    log "rabbitmq: no broker on $RABBIT_HOST:$RABBIT_PORT: starting rabbitmq-server -detached"
    run "$R_LOG" timeout 60 rabbitmq-server -detached 9>&-
    wait_until 90 "RabbitMQ to answer on $RABBIT_HOST:$RABBIT_PORT" rabbitmq_amqp_ok
    local pid
    pid=$(listener_pid "$RABBIT_PORT")
    [[ -n $pid ]] || die "cannot find the pid of the broker listening on $RABBIT_PORT"
    echo "$pid" >"$R_PIDFILE"
    if [[ -z $epmd_before ]]; then
        pid=$(listener_pid 4369 || true)
        [[ -n $pid ]] && echo "$pid" >"$R_EPMD_PIDFILE"
    fi
    # guest may only log in from localhost, which is what we use.
    log "rabbitmq: started (pid $(pid_of "$R_PIDFILE"))"
}

rabbitmq_stop() {
    if [[ -f $R_PIDFILE ]]; then
        # SIGTERM is a graceful stop for RabbitMQ (5-9 s): allow 30 s before KILL.
        stop_pidfile "rabbitmq (started by the stack)" "$R_PIDFILE" "$R_PROC_MARKER" 30
        stop_pidfile "epmd (started with rabbitmq)" "$R_EPMD_PIDFILE" epmd 5
    else
        log "rabbitmq: not started by the stack: left running"
    fi
}

rabbitmq_status() {
    local who=external
    rabbitmq_ours && who="started by the stack"
    if rabbitmq_amqp_ok; then
        printf '%-22s %s\n' "rabbitmq" "up ($RABBIT_HOST:$RABBIT_PORT, $who)"
    else
        printf '%-22s %s\n' "rabbitmq" "down ($RABBIT_HOST:$RABBIT_PORT)"
        return 1
    fi
}

rabbitmq_env() {
    echo "TRANSPORT_URL=$TRANSPORT_URL"
    echo "RABBITMQ_HOST=$RABBIT_HOST"
    echo "RABBITMQ_PORT=$RABBIT_PORT"
    if rabbitmq_ours; then echo "RABBITMQ_STARTED_BY_STACK=1"; else echo "RABBITMQ_STARTED_BY_STACK=0"; fi
}
