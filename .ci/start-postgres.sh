#!/usr/bin/env bash
# Start a throw-away PostgreSQL cluster for the registry tests and print, on stdout, the one line
#   export BASTION_TEST_PG_URL=postgresql+psycopg://...
# for the caller to eval:   eval "$(bash .ci/start-postgres.sh)"
# Stop it (and delete its files):   bash .ci/start-postgres.sh --stop
#
# - Uses PostgreSQL from Debian's packages (/usr/lib/postgresql/*/bin); installs them with apt-get
#   only if no initdb/pg_ctl is there.
# - The cluster lives in $BASTION_PG_DIR (default: ${TMPDIR:-/tmp}/bastion-ci-pg), owned by the
#   `postgres` user when run as root (initdb refuses root), listens on 127.0.0.1 on a free port with
#   a random password (scram-sha-256), and trades durability for speed (fsync off): test data only.
# - Idempotent: a running cluster is reused; a stopped one is restarted; a broken one is recreated.
# - Never hangs (every step has a timeout) and never fails the build: if PostgreSQL cannot be
#   installed or started it prints a warning on stderr, no URL, and exits 0, so the PostgreSQL
#   tests are skipped with their reason.
# Everything but the export line goes to stderr.
set -uo pipefail

DIR="${BASTION_PG_DIR:-${TMPDIR:-/tmp}/bastion-ci-pg}"
DATA="$DIR/data"
DBNAME="${BASTION_PG_DB:-bastion_test}"
PGUSER_NAME="bastion"

MARK="$DIR/.bastion-ci-pg"  # only a directory carrying this mark is ever deleted

log() { echo "start-postgres: $*" >&2; }
give_up() { log "WARNING: $* - PostgreSQL tests will be skipped"; exit 0; }

find_bin() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -V -r); do
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then echo "$d"; return 0; fi
    done
    return 1
}

# as_owner CMD...: run CMD as the cluster owner (postgres when we are root, else ourselves)
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

BIN="$(find_bin || true)"

if [[ "${1:-}" == "--stop" ]]; then
    if [[ -n "$BIN" && -f "$DATA/PG_VERSION" ]]; then
        as_owner timeout 30 "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1 \
            && { as_owner timeout 30 "$BIN/pg_ctl" stop -D "$DATA" -m immediate -w -t 20 >/dev/null 2>&1 \
                 || log "could not stop the cluster in $DATA"; }
    fi
    if [[ -f "$MARK" ]]; then rm -rf "$DIR"; log "stopped; removed $DIR"
    elif [[ -e "$DIR" ]]; then log "stopped; $DIR was not made by this script, left in place"; fi
    exit 0
fi

# ------------------------------------------------------------------ binaries
if [[ -z "$BIN" ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        give_up "no PostgreSQL under /usr/lib/postgresql/*/bin and not root to apt-get install it"
    fi
    command -v apt-get >/dev/null 2>&1 || give_up "no PostgreSQL and no apt-get"
    log "installing postgresql with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get -o Dpkg::Lock::Timeout=60 update -qq >&2 \
        || give_up "apt-get update failed or timed out"
    timeout 600 apt-get -o Dpkg::Lock::Timeout=60 install -y -qq --no-install-recommends postgresql >&2 \
        || give_up "apt-get install postgresql failed or timed out"
    BIN="$(find_bin)" || give_up "postgresql installed but no initdb/pg_ctl under /usr/lib/postgresql/*/bin"
fi

if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres >/dev/null 2>&1 \
        || give_up "no 'postgres' user and cannot create one (initdb refuses to run as root)"
fi
command -v python3 >/dev/null 2>&1 || give_up "python3 is needed to pick a free port"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

url() {
    echo "export BASTION_TEST_PG_URL=postgresql+psycopg://$PGUSER_NAME:$(cat "$DIR/password")@127.0.0.1:$(cat "$DIR/port")/$DBNAME"
}

ready() {
    [[ -f "$DIR/port" ]] && timeout 10 "$BIN/pg_isready" -q -h 127.0.0.1 -p "$(cat "$DIR/port")" -t 5 >/dev/null 2>&1
}

psql_run() {  # psql_run DB SQL
    PGPASSWORD="$(cat "$DIR/password")" PGCONNECT_TIMEOUT=10 timeout 30 "$BIN/psql" -X -q -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$(cat "$DIR/port")" -U "$PGUSER_NAME" -d "$1" -tAc "$2"
}

ensure_db() {
    local have
    have="$(psql_run postgres "SELECT 1 FROM pg_database WHERE datname = '$DBNAME'" 2>&1)" \
        || { log "psql: $have"; return 1; }
    [[ "$have" == "1" ]] || psql_run postgres "CREATE DATABASE $DBNAME" >&2
}

# ------------------------------------------------------------------ reuse a running cluster
if [[ -f "$DATA/PG_VERSION" ]] && ready && ensure_db; then
    log "reusing the cluster in $DATA (port $(cat "$DIR/port"))"
    url
    exit 0
fi

# ------------------------------------------------------------------ (re)create the cluster
if [[ -f "$DATA/PG_VERSION" ]] && as_owner timeout 30 "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1; then
    log "a server runs in $DATA but does not answer: stopping it"
    as_owner timeout 30 "$BIN/pg_ctl" stop -D "$DATA" -m immediate -w -t 20 >&2 || true
fi
if [[ ! -f "$DATA/PG_VERSION" || ! -f "$DIR/password" ]]; then
    if [[ -e "$DIR" && ! -f "$MARK" && -n "$(ls -A "$DIR" 2>/dev/null)" ]]; then
        give_up "$DIR exists and was not made by this script: not touching it (set BASTION_PG_DIR)"
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR" 2>/dev/null || give_up "cannot create $DIR"
    chmod 700 "$DIR" && touch "$MARK"
    (umask 077; python3 -c 'import secrets; print(secrets.token_hex(16))' > "$DIR/password")
    [[ $(id -u) -eq 0 ]] && chown -R postgres: "$DIR"
    log "initdb in $DATA ($BIN)"
    as_owner timeout 120 "$BIN/initdb" -D "$DATA" -U "$PGUSER_NAME" --pwfile="$DIR/password" \
        --auth=scram-sha-256 --encoding=UTF8 --no-locale -N >"$DIR/initdb.log" 2>&1 \
        || { tail -5 "$DIR/initdb.log" >&2; give_up "initdb failed"; }
fi

for attempt in 1 2 3; do
    free_port > "$DIR/port" || give_up "cannot pick a free port"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$DIR/port"
    log "starting PostgreSQL on 127.0.0.1:$(cat "$DIR/port") (attempt $attempt)"
    if as_owner timeout 60 "$BIN/pg_ctl" start -D "$DATA" -l "$DIR/server.log" -w -t 30 -o \
        "-c listen_addresses=127.0.0.1 -p $(cat "$DIR/port") -k $DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        >&2; then
        break
    fi
    tail -5 "$DIR/server.log" >&2 2>/dev/null
    as_owner timeout 30 "$BIN/pg_ctl" stop -D "$DATA" -m immediate -w -t 20 >/dev/null 2>&1
    [[ $attempt -eq 3 ]] && give_up "the server did not start (log: $DIR/server.log)"
done

for _ in $(seq 1 20); do ready && break; sleep 0.5; done
ready || give_up "the server does not answer on port $(cat "$DIR/port")"
ensure_db || give_up "cannot create the database $DBNAME"
log "ready: database $DBNAME on 127.0.0.1:$(cat "$DIR/port") (stop: bash .ci/start-postgres.sh --stop)"
url
