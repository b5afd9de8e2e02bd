#!/usr/bin/env bash
# A site far from the catalog, against the same site with the primary next to it, in the same
# run (docs/OPERATIONS.md, "A site far from the catalog"). For each round trip in RTTS, the
# test harness's two sites (`cairn-sites`: a PostgreSQL primary, a link with half the round
# trip each way, a streaming standby at the far end) and, on a fresh catalog for each case:
#
#   local   catalog.url = the primary, directly (the baseline)
#   far     catalog.url = the primary through the link, catalog.replica = the standby
#
#   1. cairnd scan import of FILES (10,000) files of 4 KiB: `cairn node scan --register-new`
#      to the import request done (polled every 10 ms), files/s
#   2. the mount (MOUNT=1, needs FUSE): `find` and `ls -lR` of TREE (20,000) archived files on
#      a fresh mount; on another fresh mount, the median `stat` and `getfattr -n
#      user.cairn.state` of files it has not seen (20 each, in a directory not listed); `cp -r`
#      of 1,000 × 4 KiB into the mount until all are imported; and how soon a file registered
#      at the primary's site is listed at this site's mount
#
# Prints Markdown tables for BENCHMARKS.md.
# Usage: tests/bench/remote-site.sh [WORKDIR]   (RTTS="10 50" FILES=10000 TREE=20000 MOUNT=0)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../.."
RTTS=${RTTS:-"10 50"}
FILES=${FILES:-10000}
TREE=${TREE:-20000}
MOUNT=${MOUNT:-0}
cargo build --release --bins -q
BIN=$PWD/target/release
W=${1:-$(mktemp -d /var/tmp/cairn-remote.XXXXXX)}
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
rate() { python3 -c "print(f'{$1 / ($3 - $2):,.0f}')"; }
sql() { "$PSQL" -X -q -A -t -d "$1" -c "$2"; }
# `URL` with database `db` instead of its own.
with_db() { echo "${1%/*}/$2"; }

# The files a scan imports, written once and hard-linked into each node.
if [ ! -d "$W/files" ]; then
    python3 - "$W/files" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "2025/06/01", f"{i // 1000:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.dat"), "wb") as f:
        f.write(i.to_bytes(8, "little") * 512)
PY
fi

# A fresh catalog database on the primary, replayed at the standby; prints its name.
new_catalog() {
    local db=bench_$1_$RANDOM
    sql "$PRIMARY" "CREATE DATABASE $db TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
    "$BIN/cairn" --catalog "$(with_db "$PRIMARY" "$db")" db init >/dev/null
    until [ "$(sql "$(with_db "$STANDBY" "$db")" "SELECT count(*) FROM schema_version" 2>/dev/null)" = 1 ]; do
        sleep 0.05
    done
    echo "$db"
}

# Writes the host's config for CASE (local or far) on catalog DB.
host_config() {
    local case=$1 db=$2 catalog
    if [ "$case" = local ]; then
        catalog="url = \"$(with_db "$PRIMARY" "$db")\""
    else
        catalog="url = \"$(with_db "$LINK" "$db")\"
replica = \"$(with_db "$STANDBY" "$db")\""
    fi
    mkdir -p "$W/$case/run"
    cat >"$W/$case/cairn.toml" <<TOML
[catalog]
$catalog
[host]
name = "site"
[daemon]
interval = "10s"
socket = "$W/$case/run/cairnd.sock"
lock_file = "$W/$case/run/cairnd.lock"
log_dir = "$W/$case/log"
[transfer]
listen = "127.0.0.1:0"
[import]
acq_depth = 3
[fs]
write_node = "n1"
ttl = "1s"
[cache]
dir = "$W/$case/cache"
TOML
}

start_cairnd() {
    CAIRN_LOG=${CAIRN_LOG:-info} "$BIN/cairnd" --config "$W/$1/cairn.toml" 2>"$W/$1/cairnd.log" &
    echo $! >"$W/cairnd.pid"
    until [ -S "$W/$1/run/cairnd.sock" ]; do sleep 0.05; done
}

stop_cairnd() {
    kill "$(cat "$W/cairnd.pid")" 2>/dev/null || true
    wait "$(cat "$W/cairnd.pid")" 2>/dev/null || true
    rm -f "$W/cairnd.pid"
}

# Waits until no import request of catalog DB is pending or active.
wait_imports() {
    local url
    url=$(with_db "$PRIMARY" "$1")
    while [ "$(sql "$url" "SELECT count(*) FROM import_request WHERE state IN ('pending','active')")" != 0 ]; do
        sleep 0.01
    done
}

# 1. The scan: files/s for CASE at the current round trip.
scan() {
    local case=$1 db t0 t1 n
    db=$(new_catalog "$case")
    host_config "$case" "$db"
    rm -rf "$W/$case/n1"
    cp -al "$W/files" "$W/$case/n1"
    export CAIRN_CONFIG=$W/$case/cairn.toml
    "$BIN/cairn" node create n1 --create-group --root="$W/$case/n1" --host=site --init --activate >/dev/null
    start_cairnd "$case"
    wait_imports "$db"
    t0=$(now)
    "$BIN/cairn" node scan n1 --register-new >/dev/null
    wait_imports "$db"
    t1=$(now)
    n=$(sql "$(with_db "$PRIMARY" "$db")" "SELECT count(*) FROM copy WHERE has = 'yes'")
    stop_cairnd
    [ "$n" = "$FILES" ] || { echo "scan of $case registered $n of $FILES files" >&2; exit 1; }
    echo "$(secs "$t0" "$t1") $(rate "$FILES" "$t0" "$t1")"
}

# 2. The mount, for CASE: prints "find ls stat getfattr cp_rate visible cp_returned".
mount_bench() {
    local case=$1 db t0 t1 f_find f_ls
    db=$(new_catalog "mnt_$case")
    host_config "$case" "$db"
    export CAIRN_CONFIG=$W/$case/cairn.toml
    rm -rf "$W/$case/n1" && mkdir -p "$W/$case/n1"
    "$BIN/cairn" node create n1 --create-group --root="$W/$case/n1" --host=site --init --activate >/dev/null
    # The tree to list, registered directly (at the primary, replicated to the standby).
    python3 - "$(with_db "$PRIMARY" "$db")" "$TREE" "$PSQL" <<'PY'
import subprocess, sys
url, n, psql = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = []
sql = ["BEGIN;",
       "INSERT INTO acq (name, created_at) VALUES ('tree', 0);"]
for d in range(n // 500):
    sql.append(f"INSERT INTO dir (parent_id, name, path, created_at) VALUES "
               f"((SELECT id FROM dir WHERE path = ''), 'd{d:03d}', 'd{d:03d}', 0);")
for i in range(n):
    d = i // 500
    sql.append(f"INSERT INTO file (dir_id, name, acq_id, size, md5, mtime, registered_at) VALUES "
               f"((SELECT id FROM dir WHERE path = 'd{d:03d}'), 'f{i:05d}.dat', "
               f"(SELECT id FROM acq WHERE name = 'tree'), 4096, '{i:032x}', 0, 0);")
sql.append("COMMIT;")
subprocess.run([psql, "-X", "-q", "-d", url], input="\n".join(sql), text=True, check=True)
PY
    sleep 1
    start_cairnd "$case"
    mkdir -p "$W/mnt"
    "$BIN/cairnfs" "$W/mnt" --config "$W/$case/cairn.toml" 2>"$W/$case/cairnfs.log"
    t0=$(now); find "$W/mnt/" >/dev/null; t1=$(now); f_find=$(secs "$t0" "$t1")
    t0=$(now); ls -lR "$W/mnt/" >/dev/null; t1=$(now); f_ls=$(secs "$t0" "$t1")
    # A fresh mount again: stat and getfattr of files it has not seen, 20 of each.
    fusermount3 -u "$W/mnt"
    "$BIN/cairnfs" "$W/mnt" --config "$W/$case/cairn.toml" 2>>"$W/$case/cairnfs.log"
    local st gf
    read -r st gf <<<"$(python3 - "$W/mnt" "$TREE" <<'PY'
import os, sys, time, statistics
mnt, n = sys.argv[1], int(sys.argv[2])
last = n // 500 - 1
# Never listed, so each stat is a lookup in the catalog (the first one the directory's too).
st, gf = [], []
for k in range(20):
    a = os.path.join(mnt, f"d{last:03d}", f"f{last * 500 + k:05d}.dat")
    b = os.path.join(mnt, f"d{last:03d}", f"f{last * 500 + 100 + k:05d}.dat")
    s = time.perf_counter(); os.stat(a); st.append(time.perf_counter() - s)
    s = time.perf_counter(); os.getxattr(b, "user.cairn.state"); gf.append(time.perf_counter() - s)
print(f"{statistics.median(st) * 1000:.2f} {statistics.median(gf) * 1000:.2f}")
PY
)"
    # cp -r of 1,000 × 4 KiB until every file is registered.
    rm -rf "$W/cpsrc" && mkdir -p "$W/cpsrc/2025/07/01"
    for i in $(seq 1 1000); do head -c 4096 /dev/urandom >"$W/cpsrc/2025/07/01/c$i.dat"; done
    t0=$(now)
    timeout 120 cp -r "$W/cpsrc/2025" "$W/mnt/" || true
    local cp_returned
    cp_returned=$(secs "$t0" "$(now)")
    # All imported, or as many as were within 2 minutes.
    local got=0
    while [ "$got" != 1000 ] && [ "$(secs "$t0" "$(now)" | cut -d. -f1)" -lt 120 ]; do
        sleep 0.01
        got=$(sql "$(with_db "$PRIMARY" "$db")" "SELECT count(*) FROM file f JOIN dir d ON d.id = f.dir_id WHERE d.path = '2025/07/01'")
    done
    t1=$(now)
    local cp_rate
    cp_rate=$(rate "$got" "$t0" "$t1")
    # A file registered at the primary's site: how soon this mount lists it.
    sql "$(with_db "$PRIMARY" "$db")" "INSERT INTO file (dir_id, name, acq_id, size, md5, mtime, registered_at) VALUES ((SELECT id FROM dir WHERE path = 'd000'), 'elsewhere.dat', (SELECT id FROM acq WHERE name = 'tree'), 1, '$(printf '%032x' 1)', 0, 0)"
    t0=$(now)
    until ls "$W/mnt/d000/" | grep -q elsewhere.dat; do sleep 0.01; done
    t1=$(now)
    local visible
    visible=$(secs "$t0" "$t1")
    fusermount3 -u "$W/mnt"
    stop_cairnd
    echo "$f_find $f_ls $st $gf $cp_rate $visible $cp_returned"
}

for rtt in $RTTS; do
    one_way=$((rtt / 2))
    coproc SITES { "$BIN/cairn-sites" "$one_way"; }
    SITES_PID=$SITES_PID
    PRIMARY= LINK= STANDBY=
    while read -r line <&"${SITES[0]}"; do
        case $line in
        PRIMARY=*) PRIMARY=${line#PRIMARY=} ;;
        LINK=*) LINK=${line#LINK=} ;;
        STANDBY=*) STANDBY=${line#STANDBY=} ;;
        READY=1) break ;;
        esac
    done
    read -r l_secs l_rate <<<"$(scan local)"
    read -r f_secs f_rate <<<"$(scan far)"
    echo
    echo "### cairnd scan import, ${rtt} ms round trip ($FILES × 4 KiB)"
    echo
    echo "| catalog | time | files/s |"
    echo "|---|---|---|"
    echo "| primary next to the site | ${l_secs} s | ${l_rate} |"
    echo "| primary ${rtt} ms away, standby at the site | ${f_secs} s | ${f_rate} |"
    if [ "$MOUNT" = 1 ]; then
        read -r lf ll ls lg lc lv lr <<<"$(mount_bench local)"
        read -r ff fl fs fg fc fv fr <<<"$(mount_bench far)"
        echo
        echo "### The mount, ${rtt} ms round trip"
        echo
        echo "| workload | primary next to the site | primary ${rtt} ms away, standby at the site |"
        echo "|---|---|---|"
        echo "| \`find\` of $TREE files, fresh mount | ${lf} s | ${ff} s |"
        echo "| \`ls -lR\` of the same, right after | ${ll} s | ${fl} s |"
        echo "| \`stat\` of a file not seen yet, median of 20 | ${ls} ms | ${fs} ms |"
        echo "| \`getfattr -n user.cairn.state\` of one, median of 20 | ${lg} ms | ${fg} ms |"
        echo "| \`cp -r\` of 1,000 × 4 KiB, all imported | ${lc} files/s | ${fc} files/s |"
        echo "| … of which \`cp -r\` itself, until it returns | ${lr} s | ${fr} s |"
        echo "| a file registered at the primary's site, listed here | ${lv} s | ${fv} s |"
    fi
    # Closing its input stops the sites (servers, link) and removes their directory.
    eval "exec ${SITES[1]}>&-"
    wait "$SITES_PID" 2>/dev/null || true
    SITES_PID=
done
