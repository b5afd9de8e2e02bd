#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the catalog tests.
#
#   tests/pg.sh start DIR     initdb into DIR, start on a free port, print the URL to export as
#                             CAIRN_TEST_PG_URL (also written to DIR/url)
#   tests/pg.sh stop DIR      stop it and remove DIR
#   tests/pg.sh restart DIR   stop and start it again (same port and data)
#   tests/pg.sh halt DIR      stop it, keeping DIR: `start DIR` brings it back on the same port
#   tests/pg.sh run CMD...    start one in a temporary directory, run CMD with CAIRN_TEST_PG_URL
#                             set, stop and remove it however CMD ends; exits with CMD's status
#
# Uses the Debian PostgreSQL binaries (apt-get install postgresql). As root, the server runs as
# the `postgres` user, since initdb refuses to run as root. Trust authentication on loopback
# (except for the role cairn_pw_test, which must give a password): never point this at
# anything but a throwaway directory.
set -euo pipefail

bindir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && echo "$d"
    done | sort -V | tail -n 1
}

BIN=$(bindir)
if [ -z "$BIN" ]; then
    echo "tests/pg.sh: no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)" >&2
    exit 1
fi

# Runs a command as the cluster's owner.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
        || echo $((20000 + RANDOM % 20000))
}

start() {
    local dir=$1
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_owner "$BIN/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 \
            --locale=C >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
        free_port >"$dir/port"
        # One role must give a password, for the tests of how cairn finds it.
        sed -i '1i host all cairn_pw_test 127.0.0.1/32 scram-sha-256' "$dir/data/pg_hba.conf"
    fi
    local port
    port=$(cat "$dir/port")
    # fsync off: a test server loses nothing it needs in a crash of the machine.
    as_owner "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=300" start >/dev/null \
        || { cat "$dir/server.log" >&2; exit 1; }
    echo "postgres://postgres@127.0.0.1:$port/postgres" | tee "$dir/url"
}

stop() {
    local dir=$1
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    fi
}

case "${1:-}" in
start) start "$2" ;;
stop) stop "$2"; rm -rf "$2" ;;
restart) stop "$2"; start "$2" >/dev/null ;;
halt) stop "$2" ;;
run)
    shift
    dir=$(mktemp -d /tmp/cairn-pg.XXXXXX)
    trap 'stop "$dir"; rm -rf "$dir"' EXIT
    CAIRN_TEST_PG_URL=$(start "$dir")
    CAIRN_TEST_PG_DIR=$dir
    export CAIRN_TEST_PG_URL CAIRN_TEST_PG_DIR
    echo "PostgreSQL for the tests at $CAIRN_TEST_PG_URL" >&2
    status=0
    "$@" || status=$?
    exit $status
    ;;
*)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
