# shellcheck shell=bash
# Ferry itself on the local stack: ferry-api on 127.0.0.1:9790 (SQLite) and one ferry-agent per
# region (data ports 9791, 9792), with certificates from `ferry-manage pki`, configurations and
# logs under $STACK_DIR/ferry. Built from this checkout with the machine's Go.

F_DIR=$STACK_DIR/ferry
F_BIN=$F_DIR/bin
F_PKI=$F_DIR/pki
F_LOG_DIR=$STACK_LOG_DIR/ferry
F_API_CONF=$F_DIR/ferry-api.conf
F_API_PIDFILE=$STACK_PID_DIR/ferry-api.pid
F_API_PORT=9790
F_REPO=$(cd "$DEVSTACK_DIR/.." && pwd)

# The broker: a vhost of Ferry's own; ferry-api's user owns the topology, each region's agents
# have a user that may declare only their region's queues and publish only on Ferry's exchange
# (topic permissions: status reports and calls to other regions' agents, which accept nothing
# but ferry-api's signed grants). guest may do anything there (tests play the outsider with it).
F_VHOST=ferry_stack
F_API_BROKER_USER=ferry-api
ferry_agent_broker_user() { echo "ferry-agent-$1"; }
# ferry_broker_password USER: a random password kept in the stack directory.
ferry_broker_password() {
    local f=$F_DIR/broker-$1.passwd
    [[ -s $f ]] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$f")
    cat "$f"
}
ferry_transport_url() { echo "rabbit://$1:$(ferry_broker_password "$1")@$RABBIT_HOST:$RABBIT_PORT/$F_VHOST"; }

ferry_broker() {
    local r u marker=$F_DIR/broker.done
    step "ferry/broker" "$F_LOG_DIR/broker.log"
    # rabbitmqctl takes about a second a call: provision once per stack directory.
    [[ -f $marker ]] && { log "ferry: broker users already provisioned"; return 0; }
    local L=$F_LOG_DIR/broker.log users vhosts
    # Existing users and vhost (an earlier stack directory's) are updated, not added again.
    vhosts=$(timeout 60 rabbitmqctl -q list_vhosts name 2>>"$L") || die "rabbitmqctl list_vhosts failed (see $L)"
    users=$(timeout 60 rabbitmqctl -q list_users 2>>"$L" | awk '{print $1}') || die "rabbitmqctl list_users failed (see $L)"
    grep -qx "$F_VHOST" <<<"$vhosts" || run "$L" timeout 60 rabbitmqctl -q add_vhost "$F_VHOST"
    run "$L" timeout 60 rabbitmqctl -q set_permissions -p "$F_VHOST" guest '.*' '.*' '.*'
    ferry_broker_user() {
        if grep -qx "$1" <<<"$users"; then
            run "$L" timeout 60 rabbitmqctl -q change_password "$1" "$(ferry_broker_password "$1")"
        else
            run "$L" timeout 60 rabbitmqctl -q add_user "$1" "$(ferry_broker_password "$1")"
        fi
    }
    u=$F_API_BROKER_USER
    ferry_broker_user "$u"
    run "$L" timeout 60 rabbitmqctl -q set_permissions -p "$F_VHOST" "$u" '.*' '.*' '.*'
    for r in "${REGIONS[@]}"; do
        u=$(ferry_agent_broker_user "$r")
        ferry_broker_user "$u"
        # configure: its region's queues and its reply queues; write: Ferry's exchanges (publish,
        # dead letters), the default exchange (replies), its queues (bind); read: the exchange
        # (bind) and its queues (consume).
        run "$L" timeout 60 rabbitmqctl -q set_permissions -p "$F_VHOST" "$u" \
            "^(agent\.$r(\..+)?|ferry\.reply\..+)\$" \
            "^(ferry|ferry\.dlx|amq\.default|agent\.$r(\..+)?|ferry\.reply\..+)\$" \
            "^(ferry|agent\.$r(\..+)?|ferry\.reply\..+)\$"
        run "$L" timeout 60 rabbitmqctl -q set_topic_permissions -p "$F_VHOST" "$u" ferry \
            '^(ferry\.status|agent\..+)$' '^agent\..+$'
    done
    # ferry-api's notifications (driver messagingv2 below): nothing consumes them on this stack,
    # so their queues keep the newest 1,000 (an operator bounds them the same way, or lets a
    # consumer such as Ceilometer read them).
    run "$L" timeout 60 rabbitmqctl -q set_policy -p "$F_VHOST" --apply-to queues ferry-notifications \
        '^notifications\.' '{"max-length":1000}'
    touch "$marker"
}

ferry_agent_port() { [[ $1 == RegionOne ]] && echo 9791 || echo 9792; }
ferry_agent_conf() { echo "$F_DIR/ferry-agent-$1.conf"; }
ferry_agent_pidfile() { echo "$STACK_PID_DIR/ferry-agent-$1.pid"; }
ferry_cluster_fsid() { sed -n 's/^[[:space:]]*fsid[[:space:]]*=[[:space:]]*//p' "$STACK_DIR/$1/ceph.conf" 2>/dev/null | head -n1; }

# A rebuilt binary or a rewritten configuration (newer than the daemon's pid file) restarts that daemon.
ferry_install() {
    step "ferry/build" "$F_LOG_DIR/build.log"
    mkdir -p "$F_BIN" "$F_LOG_DIR"
    export PATH="$PATH:/usr/local/go/bin"
    command -v go >/dev/null || die "Go is not installed (/usr/local/go/bin/go)"
    # go-ceph needs the pacific tag against Debian 12's Ceph 16 (librbd-dev from ceph_install).
    local b tmp=$F_DIR/bin.new
    rm -rf "$tmp" && mkdir -p "$tmp"
    (cd "$F_REPO" && go build -tags pacific -o "$tmp/" ./cmd/ferry-api ./cmd/ferry-agent ./cmd/ferry-manage ./cmd/ferry) \
        >"$F_LOG_DIR/build.log" 2>&1 || die "go build failed"
    # Replace only binaries that changed: a new one restarts its daemon.
    for b in "$tmp"/*; do
        if cmp -s "$b" "$F_BIN/$(basename "$b")"; then rm -f "$b"; else mv -f "$b" "$F_BIN/"; fi
    done
    rmdir "$tmp"
}

# The [cinder] section of ferry-api: each region's Cinder RBD pools and backend host
# (devstack/lib/cinder.sh), unless the stack runs without Cinder.
ferry_cinder_conf() {
    [[ ${FERRY_STACK_CINDER:-1} == 0 ]] && return 0
    local r vp="" bh="" bp=""
    for r in "${REGIONS[@]}"; do
        cinder_region "$r"
        vp+="${vp:+,}$r:$CEPH_POOL"
        bh+="${bh:+,}$r:$CI_BACKEND_HOST"
        bp+="${bp:+,}$r:$CINDER_BACKUP_POOL"
    done
    printf '\n[cinder]\nvolume_pools = %s\nbackend_hosts = %s\nbackup_pools = %s\n' "$vp" "$bh" "$bp"
}

ferry_write_configs() {
    local r R port
    write_file_atomic "$F_API_CONF" 0600 <<EOF
[DEFAULT]
transport_url = $(ferry_transport_url "$F_API_BROKER_USER")
log_file = $F_LOG_DIR/ferry-api.log
host = ferry-api

[database]
connection = sqlite:///$F_DIR/ferry.sqlite

[keystone_authtoken]
www_authenticate_uri = $KEYSTONE_AUTH_URL
auth_url = $KEYSTONE_AUTH_URL
username = ferry
password = $FERRY_SERVICE_PASSWORD
project_name = service
region_name = RegionOne

[api]
bind_host = 127.0.0.1
bind_port = $F_API_PORT
policy_file = $F_DIR/policy.yaml
# A development stack notices a dead agent quickly.
agent_down_time = 15
command_signing_key_file = $F_PKI/signing.key
# Failed and cancelled transfers' leftovers go after 20 s (memstore OSDs hold data in RAM).
cleanup_grace = 20
# The tests run many transfers of the admin project at once.
quota_transfers = 100
# Replications of a few seconds' interval (the e2e test's), scheduled every second.
replication_tick = 1
replication_min_interval = 2
agent_users = $(for r in "${REGIONS[@]}"; do printf '%s%s:%s' "${sep:-}" "$r" "$(ferry_agent_broker_user "$r")"; sep=,; done)
$(ferry_cinder_conf)

[oslo_messaging_notifications]
# transfer.end, replication.rpo_breached and rpo_recovered on notifications.<priority> (bounded
# by the broker policy ferry-notifications).
driver = messagingv2
EOF
    for r in "${REGIONS[@]}"; do
        port=$(ferry_agent_port "$r")
        write_file_atomic "$(ferry_agent_conf "$r")" 0600 <<EOF
[DEFAULT]
transport_url = $(ferry_transport_url "$(ferry_agent_broker_user "$r")")
log_file = $F_LOG_DIR/ferry-agent-$r.log
host = agent-$r

[agent]
region = $r
data_listen = 127.0.0.1:$port
data_advertise = localhost:$port
ceph_conf = $STACK_DIR/$r/ceph.conf
ceph_user = ferry
ceph_keyring = $STACK_DIR/$r/ceph.client.ferry.keyring
pools = volumes$([[ ${FERRY_STACK_CINDER:-1} == 0 ]] || echo ", $CINDER_BACKUP_POOL")
heartbeat_interval = 3
# A stalled cluster (the e2e fault suite stops an OSD) is an error within seconds, and shows in the
# service list soon.
ceph_op_timeout = 15
health_interval = 5
state_key_file = $F_PKI/state-$r.key
command_verify_key_file = $F_PKI/signing.pub

[tls]
ca_file = $F_PKI/ca.crt
cert_file = $F_PKI/agent-$r.crt
key_file = $F_PKI/agent-$r.key
EOF
    done
}

ferry_pki() {
    local r
    step "ferry/pki" "$F_LOG_DIR/pki.log"
    if [[ ! -f $F_PKI/ca.crt ]]; then
        "$F_BIN/ferry-manage" pki init --dir "$F_PKI" >"$F_LOG_DIR/pki.log" 2>&1 || die "pki init failed"
    fi
    # ferry-api signs every command to the agents; they hold the public half.
    [[ -f $F_PKI/signing.key ]] || "$F_BIN/ferry-manage" pki signing-key --dir "$F_PKI" \
        >>"$F_LOG_DIR/pki.log" 2>&1 || die "pki signing-key failed"
    for r in "${REGIONS[@]}"; do
        # One state key per region, shared by the region's agents.
        [[ -f $F_PKI/state-$r.key ]] || "$F_BIN/ferry-manage" pki state-key --out "$F_PKI/state-$r.key" \
            >>"$F_LOG_DIR/pki.log" 2>&1 || die "pki state-key $r failed"
        # The certificate names the agent's region (checked by the other end of each stream).
        [[ -f $F_PKI/agent-$r.crt ]] && openssl x509 -in "$F_PKI/agent-$r.crt" -noout -text 2>/dev/null |
            grep -q "urn:ferry:region:$r" && continue
        "$F_BIN/ferry-manage" pki issue "agent-$r" --dir "$F_PKI" --ca-dir "$F_PKI" --dns localhost --ip 127.0.0.1 \
            --region "$r" --force \
            >>"$F_LOG_DIR/pki.log" 2>&1 || die "pki issue agent-$r failed"
    done
}

# ferry_spawn NAME PIDFILE LOG ARGS...: start a daemon in its own session, record its pid.
ferry_spawn() {
    local name=$1 pidfile=$2 logf=$3; shift 3
    # The daemon inherits no descriptor but its output: not the stack lock
    # (fd 9), nor a lock held by whoever runs stack.sh (flock(1) around it).
    (
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            [[ $fd -gt 2 ]] && eval "exec $fd>&-" 2>/dev/null
        done
        exec setsid "$@" >>"$logf" 2>&1 </dev/null
    ) &
    echo $! >"$pidfile"
    log "ferry: started $name (pid $!)"
}

ferry_api_ok() { curl -fsS -m 2 "http://127.0.0.1:$F_API_PORT/healthcheck" >/dev/null 2>&1; }

ferry_start() {
    local r
    mkdir -p "$F_DIR" "$F_LOG_DIR"
    ferry_broker
    ferry_write_configs
    ferry_pki
    step "ferry/db" "$F_LOG_DIR/db.log"
    "$F_BIN/ferry-manage" --config-file "$F_API_CONF" db sync >"$F_LOG_DIR/db.log" 2>&1 || die "ferry-manage db sync failed"

    step "ferry/api" "$F_LOG_DIR/ferry-api.log"
    if pidfile_alive "$F_API_PIDFILE" "$F_API_CONF" && ferry_api_ok && [[ ! $F_BIN/ferry-api -nt $F_API_PIDFILE && ! $F_API_CONF -nt $F_API_PIDFILE ]]; then
        log "ferry: ferry-api already up"
    else
        stop_pidfile "ferry-api" "$F_API_PIDFILE" "$F_API_CONF"
        port_free "$F_API_PORT" || die "port $F_API_PORT is taken by: $(port_owner "$F_API_PORT")"
        ferry_spawn ferry-api "$F_API_PIDFILE" "$F_LOG_DIR/ferry-api.out" "$F_BIN/ferry-api" --config-file "$F_API_CONF"
        wait_until 30 "ferry-api on port $F_API_PORT" ferry_api_ok
    fi

    for r in "${REGIONS[@]}"; do
        local conf pidfile port fsid
        conf=$(ferry_agent_conf "$r")
        pidfile=$(ferry_agent_pidfile "$r")
        port=$(ferry_agent_port "$r")
        step "ferry/agent $r" "$F_LOG_DIR/ferry-agent-$r.log"
        # An agent holds connections to its cluster: a cluster made anew (another fsid) since the
        # agent started means a new agent.
        fsid=$(ferry_cluster_fsid "$r")
        if [[ $(cat "$F_DIR/agent-$r.fsid" 2>/dev/null) == "$fsid" ]] && pidfile_alive "$pidfile" "$conf" &&
            port_listening "$port" && [[ ! $F_BIN/ferry-agent -nt $pidfile && ! $conf -nt $pidfile ]]; then
            log "ferry: agent $r already up"
            continue
        fi
        stop_pidfile "ferry-agent $r" "$pidfile" "$conf"
        port_free "$port" || die "port $port is taken by: $(port_owner "$port")"
        ferry_spawn "ferry-agent $r" "$pidfile" "$F_LOG_DIR/ferry-agent-$r.out" "$F_BIN/ferry-agent" --config-file "$conf"
        echo "$fsid" >"$F_DIR/agent-$r.fsid"
        wait_until 30 "ferry-agent $r on port $port" port_listening "$port"
    done
}

ferry_stop() {
    local r
    for r in "${REGIONS[@]}"; do
        stop_pidfile "ferry-agent $r" "$(ferry_agent_pidfile "$r")" "$(ferry_agent_conf "$r")" 10
    done
    stop_pidfile "ferry-api" "$F_API_PIDFILE" "$F_API_CONF" 10
}

ferry_status() {
    local r rc=0 state
    if pidfile_alive "$F_API_PIDFILE" "$F_API_CONF" && ferry_api_ok && [[ ! $F_BIN/ferry-api -nt $F_API_PIDFILE ]]; then state="up (http://127.0.0.1:$F_API_PORT)"; else state=down; rc=1; fi
    printf '%-22s %s\n' "ferry-api" "$state"
    for r in "${REGIONS[@]}"; do
        if pidfile_alive "$(ferry_agent_pidfile "$r")" "$(ferry_agent_conf "$r")"; then
            state="up (data port $(ferry_agent_port "$r"))"
        else
            state=down
            rc=1
        fi
        printf '%-22s %s\n' "ferry-agent $r" "$state"
    done
    return $rc
}

ferry_env() {
    cat <<EOF
FERRY_BIN_DIR=$F_BIN
FERRY_TRANSPORT_URL=rabbit://guest:guest@$RABBIT_HOST:$RABBIT_PORT/$F_VHOST
FERRY_API_CONF=$F_API_CONF
FERRY_AGENT_REGIONONE_CONF=$(ferry_agent_conf RegionOne)
FERRY_AGENT_REGIONTWO_CONF=$(ferry_agent_conf RegionTwo)
FERRY_PKI_DIR=$F_PKI
FERRY_LOG_DIR=$F_LOG_DIR
EOF
}
