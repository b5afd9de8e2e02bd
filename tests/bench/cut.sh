#!/usr/bin/env bash
# A site whose link to the catalog's primary is cut while it keeps writing: how long the
# replay takes once the link is back (docs/OPERATIONS.md, "What a cut link does").
#
# The test harness's two sites (`cairn-sites`: a PostgreSQL primary, a link of ONE_WAY ms each
# way, a streaming standby at the far end), one host at the far site with cairnd and the mount
# (catalog.url through the link, catalog.replica the standby), two nodes: n1, the mount's write
# node, and n2 with auto-import. Then:
#
#   1. the link is cut;
#   2. `cp -r` of FILES (10,000) files of 4 KiB into the mount, and the same number copied
#      into n2 (auto-import), each timed; the cut is held until CUT seconds (600) have passed
#      since it began and every file waits in a journal (the mount's, or cairnd's waiting
#      list on n2);
#   3. the link is restored, and the time until the primary has all 2 × FILES files, each
#      once, is the replay time; md5s are checked against the bytes for every 100th file.
#
# Prints a Markdown table for BENCHMARKS.md.
# Usage: tests/bench/cut.sh [WORKDIR]   (FILES=10000 CUT=600 ONE_WAY=5)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../.."
FILES=${FILES:-10000}
CUT=${CUT:-600}
ONE_WAY=${ONE_WAY:-5}
cargo build --release --bins -q
BIN=$PWD/target/release
W=${1:-$(mktemp -d /var/tmp/cairn-cut.XXXXXX)}
mkdir -p "$W"
PSQL=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)/psql
[ -x "$PSQL" ] || PSQL=psql
SITES_PID=
cleanup() {
    [ -f "$W/cairnd.pid" ] && kill "$(cat "$W/cairnd.pid")" 2>/dev/null || true
    mountpoint -q "$W/mnt" 2>/dev/null && fusermount3 -u -z "$W/mnt" || true
    [ -n "$SITES_PID" ] && kill "$SITES_PID" 2>/dev/null && wait "$SITES_PID" 2>/dev/null || true
}
trap cleanup EXIT
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
sql() { "$PSQL" -X -q -A -t -d "$1" -c "$2"; }
with_db() { echo "${1%/*}/$2"; }
# Rows waiting in a node's SQLite list (the mount's journal or cairnd's waiting list).
rows() {
    python3 - "$1" "$2" <<'PY'
import sqlite3, sys, os
path, table = sys.argv[1], sys.argv[2]
if not os.path.exists(path):
    print(0)
else:
    try:
        c = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        print(c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.Error:
        print(-1)
PY
}
# The mount holds its journal locked: what it publishes says how many wait.
mount_waiting() {
    local s=$W/n1/.cairn/journal.summary
    if [ -f "$s" ]; then awk "{print \$1}" "$s"; else echo 0; fi
}

# The files, written once.
if [ ! -d "$W/src" ]; then
    python3 - "$W/src" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "cut", f"{i // 1000:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.dat"), "wb") as f:
        f.write(i.to_bytes(8, "little") * 512)
PY
fi

coproc SITES { "$BIN/cairn-sites" "$ONE_WAY"; }
SITES_PID=$SITES_PID
while read -r line <&"${SITES[0]}"; do
    case $line in
        PRIMARY=*) PRIMARY=${line#PRIMARY=} ;;
        LINK=*) LINK=${line#LINK=} ;;
        STANDBY=*) STANDBY=${line#STANDBY=} ;;
        READY=1) break ;;
    esac
done
link() {
    echo "$1" >&"${SITES[1]}"
    read -r ack <&"${SITES[0]}"
    [ "$ack" = "OK $1" ] || { echo "cairn-sites: $ack" >&2; exit 1; }
}

db=bench_cut_$RANDOM
sql "$PRIMARY" "CREATE DATABASE $db TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
"$BIN/cairn" --catalog "$(with_db "$PRIMARY" "$db")" db init >/dev/null
until [ "$(sql "$(with_db "$STANDBY" "$db")" "SELECT count(*) FROM schema_version" 2>/dev/null)" = 1 ]; do
    sleep 0.05
done
mkdir -p "$W/run" "$W/mnt"
rm -rf "$W/n1" "$W/n2" && mkdir -p "$W/n1" "$W/n2"
cat >"$W/cairn.toml" <<TOML
[catalog]
url = "$(with_db "$LINK" "$db")"
replica = "$(with_db "$STANDBY" "$db")"
[host]
name = "site"
[daemon]
interval = "10s"
socket = "$W/run/cairnd.sock"
lock_file = "$W/run/cairnd.lock"
[transfer]
listen = "127.0.0.1:0"
[import]
acq_depth = 2
[fs]
write_node = "n1"
ttl = "1s"
[cache]
dir = "$W/cache"
TOML
export CAIRN_CONFIG=$W/cairn.toml
"$BIN/cairn" node create n1 --create-group --root="$W/n1" --host=site --init --activate >/dev/null
"$BIN/cairn" node create n2 --create-group --root="$W/n2" --host=site --init --activate \
    --auto-import >/dev/null
"$BIN/cairnd" --config "$W/cairn.toml" 2>"$W/cairnd.log" &
echo $! >"$W/cairnd.pid"
until [ -S "$W/run/cairnd.sock" ]; do sleep 0.05; done
until grep -q "for auto import" "$W/cairnd.log"; do sleep 0.05; done
"$BIN/cairnfs" "$W/mnt" --config "$W/cairn.toml" 2>"$W/cairnfs.log"

link cut
cut_at=$(now)
t0=$(now); cp -r "$W/src/cut" "$W/mnt/"; t1=$(now); cp_mount=$(secs "$t0" "$t1")
t0=$(now); cp -r "$W/src/cut" "$W/n2/"; t1=$(now); cp_node=$(secs "$t0" "$t1")
until [ "$(mount_waiting)" = "$FILES" ] && [ "$(rows "$W/n2/.cairn/waiting.db" waiting)" = "$FILES" ]; do
    sleep 0.5
done
journalled=$(secs "$cut_at" "$(now)")
while [ "$(python3 -c "import time; print(int(time.time() - $cut_at < $CUT))")" = 1 ]; do sleep 1; done
held=$(secs "$cut_at" "$(now)")
# Nothing reached the primary meanwhile.
before=$(sql "$(with_db "$PRIMARY" "$db")" "SELECT count(*) FROM file")

link restore
t0=$(now)
url=$(with_db "$PRIMARY" "$db")
until [ "$(sql "$url" "SELECT count(*) FROM copy WHERE has = 'yes'")" = $((2 * FILES)) ]; do
    sleep 0.05
    if [ "$(secs "$t0" "$(now)" | cut -d. -f1)" -gt 600 ]; then
        echo "not all registered after 600 s" >&2
        exit 1
    fi
done
t1=$(now)
replay=$(secs "$t0" "$t1")
files=$(sql "$url" "SELECT count(*) FROM file")
# md5 of every 100th file, at both places, against the bytes.
bad=$(python3 - "$W/src" "$FILES" "$url" "$PSQL" <<'PY'
import hashlib, subprocess, sys
src, n, url, psql = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = subprocess.run([psql, "-X", "-q", "-A", "-t", "-F", " ", "-d", url, "-c",
                       "SELECT d.path || '/' || f.name, f.md5 FROM file f JOIN dir d ON d.id = f.dir_id"],
                      capture_output=True, text=True, check=True).stdout.split("\n")
md5 = dict(r.split(" ") for r in rows if r)
bad = 0
for i in range(0, n, 100):
    rel = f"cut/{i // 1000:02d}/f{i:05d}.dat"
    want = hashlib.md5(open(f"{src}/{rel}", "rb").read()).hexdigest()
    bad += md5.get(rel) != want
print(bad)
PY
)
fusermount3 -u "$W/mnt"
kill "$(cat "$W/cairnd.pid")"; wait "$(cat "$W/cairnd.pid")" 2>/dev/null || true; rm -f "$W/cairnd.pid"
# Both copies of each path are the same bytes: one file each, two copies.
[ "$files" = "$FILES" ] || { echo "$files files registered, want $FILES (each path once)" >&2; exit 1; }
[ "$bad" = 0 ] || { echo "$bad md5s differ from the bytes" >&2; exit 1; }
[ "$before" = 0 ] || { echo "$before files reached the primary during the cut" >&2; exit 1; }

echo
echo "| $FILES × 4 KiB written during a cut of ${held} s, link ${ONE_WAY} ms each way | time |"
echo "|---|---|"
echo "| \`cp -r\` into the mount (link cut) | ${cp_mount} s |"
echo "| \`cp -r\` into the auto-import node (link cut) | ${cp_node} s |"
echo "| until all $((2 * FILES)) wait in the journals | ${journalled} s after the cut |"
echo "| **replay: link back → all $((2 * FILES)) copies registered, each path once** | **${replay} s** |"
