#!/usr/bin/env bash
# Ferry quickstart: bring the local two-region stack up (devstack/stack.sh up), then move an RBD
# image with data from RegionOne to RegionTwo through ferry-api, with the region admin's Keystone
# token, show its progress, and check that both sides hold the same bytes; then (with Cinder) move a
# Cinder volume of project demo with the ferry CLI and show it in RegionTwo with the openstack CLI.
set -euo pipefail

DEVSTACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
unset PYTHONHOME PYTHONPATH VIRTUAL_ENV

"$DEVSTACK_DIR/stack.sh" up
STACK_DIR=${FERRY_STACK_DIR:-/tmp/ferry-stack}
set -a
# shellcheck disable=SC1091
. "$STACK_DIR/stack.env"
set +a

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
# same_bytes R1_SPEC R2_SPEC: rbd export | sha256sum of an image (or snapshot) in each region.
same_bytes() {
    local a b
    a=$(rbd -c "$CEPH_REGIONONE_CONF" export --no-progress "$1" - | sha256sum | cut -d' ' -f1)
    b=$(rbd -c "$CEPH_REGIONTWO_CONF" export --no-progress "$2" - | sha256sum | cut -d' ' -f1)
    echo "RegionOne $1  $a"
    echo "RegionTwo $2  $b"
    [[ $a == "$b" ]] || { echo "MISMATCH" >&2; exit 1; }
    echo "identical"
}

IMAGE=quickstart-$(date +%s)
SIZE_MB=${QUICKSTART_SIZE_MB:-256}
say "An image in RegionOne: volumes/$IMAGE, ${SIZE_MB} MiB, half of it written"
rbd -c "$CEPH_REGIONONE_CONF" create "volumes/$IMAGE" --size "${SIZE_MB}M"
rbd -c "$CEPH_REGIONONE_CONF" bench --io-type write --io-size 1M --io-pattern rand \
    --io-total "$((SIZE_MB / 2))M" "volumes/$IMAGE" >/dev/null

say "A Keystone token for the region admin"
TOKEN=$(curl -sS -D - -o /dev/null -H 'Content-Type: application/json' "$OS_AUTH_URL/auth/tokens" -d '{
  "auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin",
    "domain": {"name": "Default"}, "password": "'"$ADMIN_PASSWORD"'"}}},
    "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}' |
    awk -F': ' 'tolower($1) == "x-subject-token" {print $2}' | tr -d '\r')
[[ -n $TOKEN ]] || { echo "no token from Keystone" >&2; exit 1; }
echo "token: ${TOKEN:0:12}…"

say "POST $FERRY_API_URL/v1/transfers"
BODY='{"transfer": {"name": "quickstart", "source": {"region": "RegionOne", "pool": "volumes", "image": "'$IMAGE'"},
  "destination": {"region": "RegionTwo"}}}'
echo "$BODY"
RESP=$(curl -sS -X POST -H "X-Auth-Token: $TOKEN" -H 'Content-Type: application/json' "$FERRY_API_URL/v1/transfers" -d "$BODY")
ID=$(echo "$RESP" | json 'd["transfer"]["id"]') || { echo "$RESP" >&2; exit 1; }
echo "transfer $ID accepted (202)"

say "Progress"
status=""
for _ in $(seq 600); do
    T=$(curl -sS -H "X-Auth-Token: $TOKEN" "$FERRY_API_URL/v1/transfers/$ID")
    line=$(echo "$T" | json 'd["transfer"]["status"] + " " + str(int(d["transfer"]["progress"])) + "% " + str(d["transfer"]["bytes_transferred"]) + " bytes, " + str(d["transfer"]["rate_bytes_per_second"]) + " B/s"')
    status=${line%% *}
    printf '  %s\n' "$line"
    case $status in completed | error | cancelled) break ;; esac
    sleep 0.5
done
[[ $status == completed ]] || { echo "transfer ended $status:"; echo "$T"; exit 1; }
DIGEST=$(echo "$T" | json 'd["transfer"]["digest"]')

say "Checksums of the snapshot on both sides (rbd export | sha256sum)"
same_bytes "volumes/$IMAGE@ferry-$ID" "volumes/$IMAGE@ferry-$ID"
echo "Ferry's transfer digest: $DIGEST"

if [[ ${FERRY_STACK_CINDER:-1} != 0 ]]; then
    FERRY=$FERRY_BIN_DIR/ferry
    say "A Cinder volume of project demo in RegionOne (openstack CLI), 1 GiB, 64 MiB written"
    VOL=$(openstack --os-cloud demo volume create --size 1 --description "moved by the quickstart" \
        "quickstart-vol-$(date +%s)" -f value -c id)
    for _ in $(seq 120); do
        [[ $(openstack --os-cloud demo volume show "$VOL" -f value -c status) == available ]] && break
        sleep 1
    done
    echo "volume $VOL available"
    # No Nova here to attach it: write into its RBD image with the stack's admin key.
    rbd -c "$CEPH_REGIONONE_CONF" bench --io-type write --io-size 1M --io-pattern rand --io-total 64M \
        "volumes/volume-$VOL" >/dev/null

    say "ferry --os-cloud demo transfer create --volume $VOL --destination-region RegionTwo --wait"
    OUT=$("$FERRY" --os-cloud demo transfer create --volume "$VOL" --destination-region RegionTwo \
        --name quickstart-volume --wait -f json)
    echo "$OUT" | json '"\n".join("%-13s %s" % (k, d[k]) for k in ("id", "status", "mode", "digest"))'
    NEW=$(echo "$OUT" | json 'd["destination"]["volume_id"]')
    "$FERRY" --os-cloud demo transfer events "$(echo "$OUT" | json 'd["id"]')" -c to_status -c message

    say "openstack --os-cloud demo --os-region-name RegionTwo volume show $NEW"
    openstack --os-cloud demo --os-region-name RegionTwo volume show "$NEW" -c id -c name -c status -c size -c description
    same_bytes "volumes/volume-$VOL" "volumes/volume-$NEW"
fi

cat <<EOF

== What just happened
ferry-api validated the admin's token with Keystone, stored the transfer and an outbox message in
one transaction, and published transfer.start to RabbitMQ (queue agent.RegionOne). The RegionOne
agent snapshotted the image (ferry-$ID), asked a RegionTwo agent over RabbitMQ to prepare (it
created the image, took its exclusive lock and issued a one-time ticket), then streamed only the
allocated extents over 4 mutual-TLS connections, each chunk hashed and checked before it was
written. Both sides computed the same transfer digest; RegionTwo took the same snapshot, the base
of the next incremental. Progress and completion came back over RabbitMQ (queue ferry.status).

== Try it yourself
  source $STACK_DIR/openrc.admin
  curl -s -H "X-Auth-Token: \$(openstack token issue -f value -c id)" $FERRY_API_URL/v1/transfers | python3 -m json.tool
  # write more data, then the same request again: only the changes cross (mode incremental)
  rbd -c $CEPH_REGIONONE_CONF bench --io-type write --io-total 16M volumes/$IMAGE
  curl -s -X POST -H "X-Auth-Token: \$TOKEN" $FERRY_API_URL/v1/transfers -d '$(echo "$BODY" | tr -d '\n')'
  # the CLI (OS_CLIENT_CONFIG_FILE=$OS_CLIENT_CONFIG_FILE):
  $FERRY_BIN_DIR/ferry --os-cloud demo transfer list --long
  $FERRY_BIN_DIR/ferry --os-cloud demo transfer create --backup BACKUP_ID --destination-region RegionTwo --wait
Dashboard: $FERRY_API_URL/dashboard (user demo, password in $STACK_DIR/openrc.demo)
Logs: $FERRY_LOG_DIR   Configs: $(dirname "$FERRY_API_CONF")   Stop: devstack/stack.sh down
EOF
