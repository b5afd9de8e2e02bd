#!/usr/bin/env bash
# Wake-up latency: how long after a `cairn node sync` the target host's cairnd starts the copy,
# with `daemon.interval = "60s"` so that its own loop never finds the request first.
#   1. PostgreSQL catalog, the CLI on another machine (no cairnd there to nudge): the catalog's
#      NOTIFY is the only thing that wakes the target.
#   2. baseline, same run: SQLite catalog, the CLI on the target host, which wakes its cairnd
#      through the local socket.
# Without either, a request waits for the next loop: up to the interval, 30 s on average.
# Latency is from just before the command starts to the timestamp of cairnd's "Beginning task"
# line (the request claimed), and to its "Pull of ... complete" line (the copy in place; it is
# recorded in the catalog right after). Each trial syncs one 4 KiB file into a node of its own,
# and waits for it to be recorded before the next. Prints a Markdown table.
# Usage: tests/bench/wake.sh [WORKDIR]   (default: a new dir under /var/tmp)
# Uses a throwaway PostgreSQL server started with tests/pg.sh (Debian's postgresql package).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../.."
cargo build --release --bins -q
BIN=$PWD/target/release
W=${1:-$(mktemp -d /var/tmp/cairn-wake.XXXXXX)}
TRIALS=${CAIRN_BENCH_TRIALS:-10}
PG=$(mktemp -d /tmp/cairn-wake-pg.XXXXXX)
mkdir -p "$W"
# The trials run in subshells: the cairnd they start are recorded here, for the cleanup.
: >"$W/pids"
cleanup() {
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$W/pids"
    sleep 1
    bash tests/pg.sh stop "$PG" >/dev/null 2>&1 || true
}
trap cleanup EXIT
SERVER=$(bash tests/pg.sh start "$PG")
psql -qX "$SERVER" -c "CREATE DATABASE cairn_wake TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"
PG_URL=${SERVER%/*}/cairn_wake
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Runs the trials against catalog URL $2 in $W/$1; the CLI runs with host $3's config.
# Prints "median_pickup max_pickup median_copied" in seconds.
trials() {
    local name=$1 url=$2 cli_host=$3 d=$W/$1
    mkdir -p "$d"/{target,elsewhere}/run "$d/target/n0"
    for h in target elsewhere; do
        cat >"$d/$h/cairn.toml" <<TOML
[catalog]
url = "$url"
[host]
name = "$h"
[daemon]
interval = "60s"
socket = "$d/$h/run/cairnd.sock"
lock_file = "$d/$h/run/cairnd.lock"
[transfer]
listen = "127.0.0.1:$(port)"
[import]
acq_depth = 3
TOML
    done
    local cli=$d/$cli_host/cairn.toml
    c() { CAIRN_CONFIG=$cli "$BIN/cairn" "$@"; }
    c db init >/dev/null
    head -c 4096 /dev/urandom >"$d/target/n0/one.dat"
    c node create n0 --create-group --root="$d/target/n0" --host=target --init --activate >/dev/null
    for i in $(seq 1 "$TRIALS"); do
        mkdir -p "$d/target/t$i"
        c node create "t$i" --create-group --root="$d/target/t$i" --host=target --init \
            --activate >/dev/null
    done
    c node scan n0 --register-new >/dev/null
    "$BIN/cairnd" --config "$d/target/cairn.toml" 2>"$d/cairnd.log" &
    echo $! >>"$W/pids"
    # The start-up pass does the inits and the scan; wait until it and the passes that follow
    # finished tasks are over, so that only a wake-up can start the next request.
    until c request list --pending --active --json | python3 -c \
        'import json,sys; sys.exit(1 if any(json.load(sys.stdin).values()) else 0)' \
        && [ "$(c node stats n0 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["files"])')" = 1 ]; do
        sleep 0.2
    done
    sleep 3
    : >"$d/times"
    for i in $(seq 1 "$TRIALS"); do
        t0=$(date +%s.%N)
        c node sync n0 "t$i" --force >/dev/null
        until [ "$(c node stats "t$i" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["files"])')" = 1 ]; do
            sleep 0.01
        done
        echo "$t0" >>"$d/times"
        sleep 1
    done
    python3 - "$d/cairnd.log" "$d/times" <<'PY'
import re, sys, statistics
from datetime import datetime, timezone
def stamps(pattern):
    out = []
    for line in open(sys.argv[1]):
        m = re.match(r"(\S+Z)\s+INFO " + pattern, line)
        if m:
            out.append(datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ")
                       .replace(tzinfo=timezone.utc).timestamp())
    return out
begins = stamps(r"Beginning task AFCR#\d+: n0 -> t\d+")
copied = stamps(r"Pull of one\.dat complete")
starts = [float(l) for l in open(sys.argv[2])]
assert len(begins) == len(copied) == len(starts), (len(begins), len(copied), len(starts))
pick = [b - t0 for b, t0 in zip(begins, starts)]
done = [c - t0 for c, t0 in zip(copied, starts)]
print(f"{statistics.median(pick):.3f} {max(pick):.3f} {statistics.median(done):.3f}")
PY
}

echo "Running $TRIALS trials per catalog in $W ..." >&2
read -r pg_med pg_max pg_done < <(trials postgres "$PG_URL" elsewhere)
read -r sq_med sq_max sq_done < <(trials sqlite "sqlite://$W/sqlite/catalog.db" target)
ms() { python3 -c "print(f'{$1 * 1000:,.0f} ms')"; }

echo
echo "Run $(date -u +%Y-%m-%d), $(nproc) cores, $TRIALS trials each, daemon.interval = 60s, $(psql -qXtA "$SERVER" -c 'SHOW server_version' | cut -d' ' -f1) on loopback"
echo
echo "| wake-up | picked up (median) | picked up (max) | copied (median) | target |"
echo "|---|---|---|---|---|"
echo "| PostgreSQL NOTIFY, CLI on another machine | $(ms "$pg_med") | $(ms "$pg_max") | $(ms "$pg_done") | < 1 s |"
echo "| baseline: SQLite, local socket nudge, CLI on the target host | $(ms "$sq_med") | $(ms "$sq_max") | $(ms "$sq_done") | (reported) |"
echo "| neither: the next loop | up to 60 s | | | |"
