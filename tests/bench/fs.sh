#!/usr/bin/env bash
# The cairnfs mount against baselines measured in the same run, on the same disk:
#   1. sequential read of a local 1 GiB file   vs  dd of the node's file directly (cold, warm)
#   2. write of 1 GiB through the mount,        vs  cp to the disk, then md5sum (with and
#      imported at close (md5 done)                  without a sync before md5sum)
#   3. cp -r of 10,000 files of 4 KiB,          vs  cp -r to the disk, and into nullfs.c (a FUSE
#      all imported                                  filesystem that does nothing: the floor)
#   4. find and ls -lR over 100,000 files       vs  the same tree on the node's disk
#   5. a 1 GiB file only on another host:       vs  curl of the same bytes from that host's
#      first byte after open, full read              cairnd, and cairnd's own pull of it
#   6. 1,000 files of 4 KiB only on another     vs  cairnd's batched pull of the same kind of
#      host, read one after another (cat)            tree to a node (cairn node sync)
# Two hosts on loopback, one catalog, release build. Needs root (drop_caches, FUSE
# passthrough). Each figure is the median of three runs, the baseline's too (RUNS=N for
# another count; PARTS="2 4" for only some of the six; FS_SETTLE="0s" for another
# [fs] settle than the default). Prints a Markdown table for BENCHMARKS.md.
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
    fusermount3 -u -z "$W/nullm" 2>/dev/null || true
    kill "${pids[@]}" 2>/dev/null || true
    rm -rf "$SRC"
}
trap cleanup EXIT
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$W/token"
chmod 600 "$W/token"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P1=$(port); P2=$(port)
. "$HERE/lib.sh"
for h in 1 2; do
    p=P$h
    host_config "$h" "${!p}" "[cache]
dir = \"$W/h$h/cache\"
max_bytes = \"8GiB\"
[fs]
write_node = \"n$h\"${FS_SETTLE:+
settle = \"$FS_SETTLE\"}"
done
cairn() { CAIRN_CONFIG=$W/h1/cairn.toml "$BIN/cairn" "$@"; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# The files registered under a prefix (bound twice): the directories first, then their files
# by index. 0.3 ms at 10,000 files under the prefix in a catalog of 33,000, against 2.7 ms as
# a join that scans every file (a third of a CPU for the poller below, polling every 5 ms,
# taken from what is measured).
FILES_UNDER="SELECT COUNT(*) FROM file WHERE dir_id IN
    (SELECT id FROM dir WHERE path = ? OR path LIKE ? || '/%')"
files_under() {
    python3 - "$W/catalog.db" "$1" "$FILES_UNDER" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30)
print(db.execute(sys.argv[3], (sys.argv[2], sys.argv[2])).fetchone()[0])
PY
}
# Starts a poller that writes to FILE the time at which N files are registered under PREFIX
# (polling every 5 ms), and returns once it polls: its start-up is not part of what is timed.
# `wait "$watcher"`, then read FILE.
watch_files() {
    rm -f "$3" "$3.ready"
    python3 - "$W/catalog.db" "$1" "$2" "$3" "$FILES_UNDER" <<'PY' &
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30)
q = sys.argv[5]
open(sys.argv[4] + ".ready", "w").close()
while db.execute(q, (sys.argv[2], sys.argv[2])).fetchone()[0] < int(sys.argv[3]):
    time.sleep(0.005)
with open(sys.argv[4], "w") as f:
    f.write(f"{time.time():.6f}")
PY
    watcher=$!
    until [ -e "$3.ready" ]; do sleep 0.005; done
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
RUNS=${RUNS:-3}
PARTS=${PARTS:-1 2 3 4 5 6}
export RUNS PARTS
part() { [[ " $PARTS " == *" $1 "* ]]; }
python3 - "$W/h1/n1" "$SRC" <<'PY'
import os, sys
root, src = sys.argv[1], sys.argv[2]
parts = os.environ["PARTS"].split()
def big(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(1024):
            f.write(block[i % 7:] + block[: i % 7])
runs = int(os.environ.get("RUNS", "3"))
names = (["local"] if "1" in parts else []) + [
    f"{k}{i}" for k in ("first", "full", "pulled", "curl") for i in range(runs) if "5" in parts]
for name in names:
    big(os.path.join(root, "big", name + ".dat"))
if "2" in parts:
    big(os.path.join(src, "write.dat"))
for h in range(100 if "3" in parts else 0):
    d = os.path.join(src, "small", "%02d" % h)
    os.makedirs(d)
    for m in range(100):
        with open(os.path.join(d, "%04d.dat" % m), "wb") as f:
            f.write(os.urandom(4096))
for kind in ("read", "pulled") if "6" in parts else ():
    for r in range(runs):
        d = os.path.join(root, "remote-small", f"{kind}{r}")
        os.makedirs(d)
        for i in range(1000):
            with open(os.path.join(d, "%04d.dat" % i), "wb") as f:
                f.write(os.urandom(4096))
for h in range(1000 if "4" in parts else 0):
    d = os.path.join(root, "tree", "%03d" % (h // 100), "%02d" % (h % 100))
    os.makedirs(d)
    for m in range(100):
        open(os.path.join(d, "%03d.dat" % m), "wb").write(b"x" * (m % 10))
PY
cairn node scan n1 --register-new >/dev/null
wait_done
"$BIN/cairnfs" "$W/m1" --config "$W/h1/cairn.toml"
CAIRN_CONFIG=$W/h2/cairn.toml "$BIN/cairnfs" "$W/m2" --config "$W/h2/cairn.toml"
# FUSE over io_uring ([fs] io_uring) is taken where the kernel offers it: its threads say so.
uring=no
if cat /proc/"$(pgrep -f "cairnfs $W/m1" | head -1)"/task/*/comm 2>/dev/null |
    grep -q '^fuser-uring-'; then
    uring=yes
fi
rows=()
row() { rows+=("$(printf '| %s | %s | %s | %s |' "$@")"); }
ratio() { python3 -c "print(f'{$1 / $2:.2f}x')"; }

# Runs a timing function RUNS times (argument: the run's number); prints the median seconds.
median() {
    local f=$1 i t=()
    for ((i = 0; i < RUNS; i++)); do t+=("$($f "$i")"); done
    python3 -c "import statistics, sys; print(statistics.median(map(float, sys.argv[1:])))" "${t[@]}"
}
timed() { local t0 t1; t0=$(now); "$@" >/dev/null; t1=$(now); secs "$t0" "$t1"; }

if part 1; then
# 1. Local sequential read.
native_cold() { drop; timed dd if="$W/h1/n1/big/local.dat" of=/dev/null bs=1M status=none; }
mount_cold() { drop; timed dd if="$W/m1/big/local.dat" of=/dev/null bs=1M status=none; }
native_warm() { timed dd if="$W/h1/n1/big/local.dat" of=/dev/null bs=1M status=none; }
mount_warm() { timed dd if="$W/m1/big/local.dat" of=/dev/null bs=1M status=none; }
a=$(median native_cold); b=$(median mount_cold)
row "Read a local 1 GiB file, cold cache (≥ 0.9× direct)" "$(mibs "$b")" \
    "$(mibs "$a") (dd of the node's file)" "$(ratio "$a" "$b")"
a=$(median native_warm); b=$(median mount_warm)
row "Read a local 1 GiB file, warm cache" "$(mibs "$b")" \
    "$(mibs "$a") (dd of the node's file)" "$(ratio "$a" "$b")"

fi

if part 2; then
# 2. Write 1 GiB, imported at close, vs a native write then md5sum. The source is in RAM.
base_write() {
    drop; cat "$SRC/write.dat" >/dev/null
    local t0 t1; t0=$(now)
    cp "$SRC/write.dat" "$W/base/write.dat"; md5sum "$W/base/write.dat" >/dev/null
    t1=$(now); secs "$t0" "$t1"; rm -f "$W/base/write.dat"
}
base_write_sync() {
    drop; cat "$SRC/write.dat" >/dev/null
    local t0 t1; t0=$(now)
    cp "$SRC/write.dat" "$W/base/write.dat"; sync "$W/base/write.dat"
    md5sum "$W/base/write.dat" >/dev/null
    t1=$(now); secs "$t0" "$t1"; rm -f "$W/base/write.dat"
}
mkdir "$W/m1/written"
# cp, then the md5 as the mount gives it: reading user.cairn.md5 of a file still settling
# ([fs] settle) imports it at once, and answers once it is registered, synced and in the
# catalog — what a user does to see a file archived, as the baseline's md5sum.
mount_write() {
    drop; cat "$SRC/write.dat" >/dev/null
    local t0 t1; t0=$(now)
    cp "$SRC/write.dat" "$W/m1/written/$1.dat"
    getfattr --only-values -n user.cairn.md5 "$W/m1/written/$1.dat" >/dev/null
    t1=$(now)
    [ "$(files_under written)" -eq $(($1 + 1)) ] || { echo "written/$1.dat not registered" >&2; exit 1; }
    secs "$t0" "$t1"
}
# The same, waiting for the import to happen by itself: [fs] settle (1 s) after close.
mount_write_settled() {
    drop; cat "$SRC/write.dat" >/dev/null
    watch_files settled $(($1 + 1)) "$W/registered"
    local t0; t0=$(now)
    cp "$SRC/write.dat" "$W/m1/settled/$1.dat"; wait "$watcher"
    secs "$t0" "$(cat "$W/registered")"
}
mkdir "$W/m1/settled"
a=$(median base_write); s2=$(median base_write_sync); b=$(median mount_write)
c=$(median mount_write_settled)
row "Write 1 GiB, imported at close, md5 done, fsynced (≥ 1.2× faster)" "$(mibs "$b")" \
    "$(mibs "$a") (cp, then md5sum)" "$(ratio "$a" "$b")"
row "Same, left to import by itself after [fs] settle (1 s)" "$(mibs "$c")" \
    "$(mibs "$a") (cp, then md5sum)" "$(ratio "$a" "$c")"
row "Same, against a durable baseline" "$(mibs "$b")" \
    "$(mibs "$s2") (cp, sync, then md5sum)" "$(ratio "$s2" "$b")"

fi

if part 3; then
# 3. cp -r of 10,000 files of 4 KiB.
# Also noted: when cp -r returns (each file is in the journal from its close, so no kill of
# the mount loses it; the import follows [fs] settle, 1 s unless FS_SETTLE says otherwise,
# after the last close).
mount_cp() {
    watch_files "small$1" 10000 "$W/registered"
    local t0 t1; t0=$(now)
    cp -r "$SRC/small" "$W/m1/small$1"; t1=$(now); wait "$watcher"
    secs "$t0" "$t1" >>"$W/cp_returned"
    secs "$t0" "$(cat "$W/registered")"
}
native_cp() { timed cp -r "$SRC/small" "$W/base/small$1"; }
# Files/s of the 10,000 files in SECONDS.
fps() { python3 -c "print(f'{10000 / $1:,.0f} files/s')"; }
rm -f "$W/cp_returned"
b=$(median mount_cp); a=$(median native_cp)
c=$(python3 -c "import statistics, sys; print(statistics.median(map(float, open(sys.argv[1]))))" "$W/cp_returned")
row "cp -r 10,000 files of 4 KiB, all imported, [fs] settle ${FS_SETTLE:-1s} (≥ 5,000 files/s and ≥ 0.25×)" \
    "$(fps "$b")" \
    "$(fps "$a") (cp -r to the disk)" \
    "$(ratio "$a" "$b")"
row "Same, until cp -r returns (each file journalled at its close)" \
    "$(fps "$c")" \
    "$(fps "$a") (cp -r to the disk)" \
    "$(ratio "$a" "$c")"
# The floor: the same cp -r into a FUSE filesystem that does nothing but pass each call to
# a directory on the same disk (libfuse, through /dev/fuse): what the kernel's round trips
# to any FUSE filesystem cost on this machine. Needs cc and libfuse3-dev; skipped without.
if command -v cc >/dev/null && pkg-config --exists fuse3 2>/dev/null; then
    cc -O2 -o "$W/nullfs" "$HERE/nullfs.c" $(pkg-config --cflags --libs fuse3)
    mkdir -p "$W/nullb" "$W/nullm"
    "$W/nullfs" "$W/nullb" "$W/nullm" -o allow_other
    null_cp() { timed cp -r "$SRC/small" "$W/nullm/small$1"; }
    n=$(median null_cp)
    fusermount3 -u "$W/nullm"
    row "Floor: the same \`cp -r\` into a FUSE filesystem that does nothing ([nullfs.c](tests/bench/nullfs.c), libfuse, \`/dev/fuse\`)" \
        "$(fps "$n")" \
        "$(fps "$a") (cp -r to the disk)" \
        "$(ratio "$a" "$n")"
    row "cairnfs, all imported, against that floor" \
        "$(fps "$b")" \
        "$(fps "$n") (nullfs)" \
        "$(ratio "$n" "$b")"
else
    echo "No cc or libfuse3-dev: the floor (nullfs.c) is not measured." >&2
fi

fi

if part 4; then
# 4. find and ls -lR over 100,000 files. Cold: caches dropped and a fresh mount, so nothing
#    is cached by the kernel or by cairnfs. Warm: right after.
fresh_mount() {
    fusermount3 -u "$W/m1"
    while grep -q " $W/m1 " /proc/mounts; do sleep 0.05; done
    "$BIN/cairnfs" "$W/m1" --config "$W/h1/cairn.toml"
}
for cmd in "find" "ls -lR"; do
    n_cold() { drop; timed $cmd "$W/h1/n1/tree"; }
    n_warm() { timed $cmd "$W/h1/n1/tree"; }
    m_cold() { fresh_mount; drop; timed $cmd "$W/m1/tree"; }
    m_warm() { timed $cmd "$W/m1/tree"; }
    a=$(median n_cold); b=$(median m_cold)
    row "\`$cmd\` of 100,000 files, cold (≤ 2× native)" "$(printf '%.2f s' "$b")" \
        "$(printf '%.2f s' "$a") (the node's tree)" "$(ratio "$b" "$a") the time"
    $cmd "$W/h1/n1/tree" >/dev/null  # warm again: the cold runs just emptied the page cache
    a=$(median n_warm); b=$(median m_warm)
    row "\`$cmd\` of 100,000 files, warm" "$(printf '%.2f s' "$b")" \
        "$(printf '%.2f s' "$a") (the node's tree)" "$(ratio "$b" "$a") the time"
done

fi

if part 5; then
# 5. 1 GiB files only on h1, read on h2 (a new file each run). Baselines: curl from h1's
#    cairnd, and cairnd's own pull to a node of h2.
curl_pull() {
    drop
    timed curl -sf -o /dev/null -H "Authorization: Bearer $(cat "$W/token")" \
        "http://127.0.0.1:$P1/v1/copy/n1/big/curl$1.dat"
}
cairnd_pull() {
    drop
    local t0 t1; t0=$(now)
    CAIRN_CONFIG=$W/h2/cairn.toml "$BIN/cairn" file sync --from n1 --to n2 "big/pulled$1.dat" >/dev/null
    wait_done; t1=$(now); secs "$t0" "$t1"
}
first_byte() {
    drop
    python3 - "$W/m2/big/first$1.dat" <<'PY'
import sys, time
t0 = time.monotonic()
with open(sys.argv[1], "rb") as f:
    f.read(1)
    print(time.monotonic() - t0)
    while f.read(1 << 20):  # the rest, untimed: the next run starts with no fetch going
        pass
PY
}
remote_read() { drop; timed cat "$W/m2/big/full$1.dat"; }
c=$(median curl_pull); p=$(median cairnd_pull); f=$(median first_byte); r=$(median remote_read)
row "First byte of a 1 GiB remote-only file after open (≤ 100 ms)" \
    "$(python3 -c "print(f'{$f * 1000:.0f} ms')")" "-" "-"
row "Full read of a 1 GiB remote-only file (≥ 0.8× the HTTP pull)" "$(mibs "$r")" \
    "$(mibs "$p") (cairnd's HTTP pull to a node, md5 checked)" "$(ratio "$p" "$r")"
row "Same, against the raw HTTP stream" "$(mibs "$r")" \
    "$(mibs "$c") (curl to /dev/null, no md5)" "$(ratio "$c" "$r")"
fi

if part 6; then
# 6. 1,000 small files only on h1, read on h2 through the mount, one after another: each open
#    is a fetch of its own. Baseline: cairnd's pull of such a tree to a node of h2, in batches.
small_read() { drop; timed sh -c "cat '$W/m2/remote-small/read$1'/* >/dev/null"; }
small_pull() {
    drop
    local t0 t1; t0=$(now)
    CAIRN_CONFIG=$W/h2/cairn.toml "$BIN/cairn" node sync n1 n2 --path "remote-small/pulled$1" \
        --force >/dev/null
    wait_done; t1=$(now); secs "$t0" "$t1"
}
r=$(median small_read); p=$(median small_pull)
row "1,000 remote-only files of 4 KiB read one after another (\`cat\`)" \
    "$(python3 -c "print(f'{1000 / $r:,.0f} files/s')")" \
    "$(python3 -c "print(f'{1000 / $p:,.0f} files/s')") (cairnd's batched pull to a node)" \
    "$(ratio "$p" "$r")"
fi

echo
if [ "$uring" = yes ]; then
    echo "The mounts took their requests over io_uring (the fuse module's enable_uring is Y)."
else
    echo "The mounts took their requests through /dev/fuse (no FUSE over io_uring offered)."
fi
echo
echo "| Measurement | cairnfs | Baseline (same run) | Ratio |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
