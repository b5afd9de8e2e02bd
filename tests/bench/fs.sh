#!/usr/bin/env bash
# The cairnfs mount against baselines measured in the same run, on the same disk:
#   1. sequential read of a local 1 GiB file   vs  dd of the node's file directly (cold, warm)
#   2. write of 1 GiB through the mount,        vs  cp to the disk, then md5sum (with and
#      imported at close (md5 done)                  without a sync before md5sum)
#   3. cp -r of 10,000 files of 4 KiB           vs  the target of 1,000 files/s, all imported
#   4. find and ls -lR over 100,000 files       vs  the same tree on the node's disk
#   5. a 1 GiB file only on another host:       vs  curl of the same bytes from that host's
#      first byte after open, full read              cairnd, and cairnd's own pull of it
# Two hosts on loopback, one catalog, release build. Needs root (drop_caches, FUSE
# passthrough). Prints a Markdown table for BENCHMARKS.md.
# Usage: tests/bench/fs.sh [WORKDIR]   (default: a new dir under /var/tmp; not a tmpfs)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../.."
cargo build --release --bins -q
BIN=$PWD/target/release
W=${1:-$(mktemp -d /var/tmp/cairn-fs.XXXXXX)}
SRC=$(mktemp -d /dev/shm/cairn-fs-src.XXXXXX)
mkdir -p "$W"/{h1/n1,h2/n2,h1/run,h2/run,m1,m2,base}
pids=()
cleanup() {
    fusermount3 -u -z "$W/m1" 2>/dev/null || true
    fusermount3 -u -z "$W/m2" 2>/dev/null || true
    kill "${pids[@]}" 2>/dev/null || true
    rm -rf "$SRC"
}
trap cleanup EXIT
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$W/token"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P1=$(port); P2=$(port)
for h in 1 2; do
    p=P$h
    cat >"$W/h$h/cairn.toml" <<TOML
[catalog]
url = "sqlite://$W/catalog.db"
[host]
name = "h$h"
[daemon]
interval = "10s"
socket = "$W/h$h/run/cairnd.sock"
lock_file = "$W/h$h/run/cairnd.lock"
[transfer]
listen = "127.0.0.1:${!p}"
token_file = "$W/token"
[import]
acq_depth = 3
[cache]
dir = "$W/h$h/cache"
max_bytes = "8GiB"
[fs]
write_node = "n$h"
TOML
done
cairn() { CAIRN_CONFIG=$W/h1/cairn.toml "$BIN/cairn" "$@"; }
. "$HERE/lib.sh"
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
files_under() {
    python3 - "$W/catalog.db" "$1" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30)
print(db.execute("SELECT COUNT(*) FROM file f JOIN dir d ON d.id = f.dir_id "
                 "WHERE d.path = ? OR d.path LIKE ? || '/%'", (sys.argv[2], sys.argv[2])).fetchone()[0])
PY
}
# Waits until N files are registered under PREFIX, polling every 10 ms.
wait_files() {
    python3 - "$W/catalog.db" "$1" "$2" <<'PY'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30)
q = ("SELECT COUNT(*) FROM file f JOIN dir d ON d.id = f.dir_id "
     "WHERE d.path = ? OR d.path LIKE ? || '/%'")
while db.execute(q, (sys.argv[2], sys.argv[2])).fetchone()[0] < int(sys.argv[3]):
    time.sleep(0.01)
PY
}

cairn db init >/dev/null
cairn host create h1 --address "127.0.0.1:$P1" >/dev/null
cairn host create h2 --address "127.0.0.1:$P2" >/dev/null
cairn node create n1 --create-group --root="$W/h1/n1" --host=h1 --init --activate >/dev/null
cairn node create n2 --create-group --root="$W/h2/n2" --host=h2 --init --activate >/dev/null
for h in 1 2; do
    "$BIN/cairnd" --config "$W/h$h/cairn.toml" 2>"$W/h$h/cairnd.log" &
    pids+=($!)
    until [ -S "$W/h$h/run/cairnd.sock" ]; do sleep 0.05; done
done
wait_done

echo "Creating test data in $W and $SRC ..." >&2
python3 - "$W/h1/n1" "$SRC" <<'PY'
import os, sys
root, src = sys.argv[1], sys.argv[2]
def big(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(1024):
            f.write(block[i % 7:] + block[: i % 7])
for name in ("local", "first", "full", "pulled"):
    big(os.path.join(root, "big", name + ".dat"))
big(os.path.join(src, "write.dat"))
for h in range(100):
    d = os.path.join(src, "small", "%02d" % h)
    os.makedirs(d)
    for m in range(100):
        with open(os.path.join(d, "%04d.dat" % m), "wb") as f:
            f.write(os.urandom(4096))
for h in range(1000):
    d = os.path.join(root, "tree", "%03d" % (h // 100), "%02d" % (h % 100))
    os.makedirs(d)
    for m in range(100):
        open(os.path.join(d, "%03d.dat" % m), "wb").write(b"x" * (m % 10))
PY
cairn node scan n1 --register-new >/dev/null
wait_done
"$BIN/cairnfs" "$W/m1" --config "$W/h1/cairn.toml"
CAIRN_CONFIG=$W/h2/cairn.toml "$BIN/cairnfs" "$W/m2" --config "$W/h2/cairn.toml"
rows=()
row() { rows+=("$(printf '| %s | %s | %s | %s |' "$@")"); }
ratio() { python3 -c "print(f'{$1 / $2:.2f}x')"; }

# 1. Local sequential read.
drop; t0=$(now); dd if="$W/h1/n1/big/local.dat" of=/dev/null bs=1M status=none; t1=$(now)
native_cold=$(secs "$t0" "$t1")
drop; t0=$(now); dd if="$W/m1/big/local.dat" of=/dev/null bs=1M status=none; t1=$(now)
mount_cold=$(secs "$t0" "$t1")
t0=$(now); dd if="$W/h1/n1/big/local.dat" of=/dev/null bs=1M status=none; t1=$(now)
native_warm=$(secs "$t0" "$t1")
t0=$(now); dd if="$W/m1/big/local.dat" of=/dev/null bs=1M status=none; t1=$(now)
mount_warm=$(secs "$t0" "$t1")
row "Read a local 1 GiB file, cold cache (≥ 0.9× direct)" "$(mibs "$mount_cold")" \
    "$(mibs "$native_cold") (dd of the node's file)" "$(ratio "$native_cold" "$mount_cold")"
row "Read a local 1 GiB file, warm cache" "$(mibs "$mount_warm")" \
    "$(mibs "$native_warm") (dd of the node's file)" "$(ratio "$native_warm" "$mount_warm")"

# 2. Write 1 GiB, imported at close, vs a native write then md5sum.
drop; cat "$SRC/write.dat" >/dev/null
t0=$(now); cp "$SRC/write.dat" "$W/base/write.dat"; md5sum "$W/base/write.dat" >/dev/null; t1=$(now)
base_write=$(secs "$t0" "$t1"); rm -f "$W/base/write.dat"; drop
t0=$(now); cp "$SRC/write.dat" "$W/base/write.dat"; sync "$W/base/write.dat"; md5sum "$W/base/write.dat" >/dev/null; t1=$(now)
base_write_sync=$(secs "$t0" "$t1"); rm -f "$W/base/write.dat"; drop
mkdir "$W/m1/written"
t0=$(now); cp "$SRC/write.dat" "$W/m1/written/one.dat"; wait_files written 1; t1=$(now)
mount_write=$(secs "$t0" "$t1")
row "Write 1 GiB, imported at close, md5 done, fsynced (≥ 1.2× faster)" "$(mibs "$mount_write")" \
    "$(mibs "$base_write") (cp, then md5sum)" "$(ratio "$base_write" "$mount_write")"
row "Same, against a durable baseline" "$(mibs "$mount_write")" \
    "$(mibs "$base_write_sync") (cp, sync, then md5sum)" "$(ratio "$base_write_sync" "$mount_write")"

# 3. cp -r of 10,000 files of 4 KiB.
t0=$(now); cp -r "$SRC/small" "$W/m1/small"; wait_files small 10000; t1=$(now)
cp_secs=$(secs "$t0" "$t1")
t0=$(now); cp -r "$SRC/small" "$W/base/small"; t1=$(now)
native_cp=$(secs "$t0" "$t1")
row "cp -r 10,000 files of 4 KiB, all imported (≥ 1,000 files/s)" \
    "$(python3 -c "print(f'{10000 / $cp_secs:,.0f} files/s')")" \
    "$(python3 -c "print(f'{10000 / $native_cp:,.0f} files/s')") (cp -r to the disk)" \
    "$(ratio "$native_cp" "$cp_secs")"

# 4. find and ls -lR over 100,000 files (fresh mount: nothing cached by the kernel).
fusermount3 -u "$W/m1"; "$BIN/cairnfs" "$W/m1" --config "$W/h1/cairn.toml"
for cmd in "find" "ls -lR"; do
    drop; t0=$(now); $cmd "$W/h1/n1/tree" >/dev/null; t1=$(now); n_cold=$(secs "$t0" "$t1")
    t0=$(now); $cmd "$W/h1/n1/tree" >/dev/null; t1=$(now); n_warm=$(secs "$t0" "$t1")
    drop; t0=$(now); $cmd "$W/m1/tree" >/dev/null; t1=$(now); m_cold=$(secs "$t0" "$t1")
    t0=$(now); $cmd "$W/m1/tree" >/dev/null; t1=$(now); m_warm=$(secs "$t0" "$t1")
    row "\`$cmd\` of 100,000 files, cold (≤ 2× native)" "$(printf '%.2f s' "$m_cold")" \
        "$(printf '%.2f s' "$n_cold") (the node's tree)" "$(ratio "$m_cold" "$n_cold") the time"
    row "\`$cmd\` of 100,000 files, warm" "$(printf '%.2f s' "$m_warm")" \
        "$(printf '%.2f s' "$n_warm") (the node's tree)" "$(ratio "$m_warm" "$n_warm") the time"
done

# 5. A 1 GiB file only on h1, read on h2. Baselines: curl from h1's cairnd, cairnd's pull.
drop
t0=$(now); curl -sf -o /dev/null -H "Authorization: Bearer $(cat "$W/token")" \
    "http://127.0.0.1:$P1/v1/copy/n1/big/full.dat"; t1=$(now)
curl_secs=$(secs "$t0" "$t1"); drop
t0=$(now); CAIRN_CONFIG=$W/h2/cairn.toml "$BIN/cairn" file sync --from n1 --to n2 big/pulled.dat >/dev/null
wait_done; t1=$(now); pull_secs=$(secs "$t0" "$t1"); drop
first=$(python3 - "$W/m2/big/first.dat" <<'PY'
import sys, time
t0 = time.monotonic()
with open(sys.argv[1], "rb") as f:
    f.read(1)
    print(f"{(time.monotonic() - t0) * 1000:.0f}")
PY
)
row "First byte of a 1 GiB remote-only file after open (≤ 100 ms)" "${first} ms" "-" "-"
drop
t0=$(now); cat "$W/m2/big/full.dat" >/dev/null; t1=$(now)
remote_secs=$(secs "$t0" "$t1")
row "Full read of a 1 GiB remote-only file (≥ 0.8× the HTTP pull)" "$(mibs "$remote_secs")" \
    "$(mibs "$pull_secs") (cairnd's HTTP pull to a node, md5 checked)" "$(ratio "$pull_secs" "$remote_secs")"
row "Same, against the raw HTTP stream" "$(mibs "$remote_secs")" \
    "$(mibs "$curl_secs") (curl to /dev/null, no md5)" "$(ratio "$curl_secs" "$remote_secs")"

echo
echo "| Measurement | cairnfs | Baseline (same run) | Ratio |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
