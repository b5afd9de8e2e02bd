#!/usr/bin/env bash
# Millions of files: walks of the mount against a native tree of the same shape, the memory
# cairnfs and cairnd hold, and cairnd's scan with a full catalog, all in one run:
#   1. DIRS directories of FILES 1-byte files, plus one directory of BIG (default 1,000 x 4,500
#      + 500,000 = 5 million), registered straight into the catalog in batches (cairn-fill),
#      and the same tree on the disk for the baselines
#   2. find, du -s, ls -l of the big directory, and Python's os.walk + stat: cold (a fresh mount,
#      the kernel's caches dropped) and warm (right after), against the native tree
#   3. cairnfs's resident memory after walking it all twice, and after the kernel drops its
#      inodes (echo 2 > /proc/sys/vm/drop_caches)
#   4. cairnd's scan import of 100,000 new files: into an empty catalog, then into the full one
#   5. cairn status and cairn node stats with the full catalog
#   6. with SOAK=MINUTES: a loop of writes, walks and reads through the mount, with cairnfs's and
#      cairnd's memory sampled every second (a table of it is printed)
# One host, SQLite catalog, release build. Needs root (drop_caches) and about 5 million free
# inodes and 25 GiB in the work dir; the native tree is removed at the end. Prints Markdown for
# BENCHMARKS.md; the memory samples stay in WORKDIR/rss.csv, the soak's cairnfs log (with what it
# keeps, counted once a minute) in WORKDIR/log.
# CACHE_MEMORY sets the mount's [fs] cache_memory (default 256MiB; SQLite's share is a 32nd).
# Usage: tests/bench/scale.sh [WORKDIR]   (default: a new dir under /var/tmp)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../.."
cargo build --release --bins -q
cargo build --release -q -p cairn-tests --bin cairn-fill
BIN=$PWD/target/release
W=${1:-$(mktemp -d /var/tmp/cairn-scale.XXXXXX)}
DIRS=${DIRS:-1000}
FILES=${FILES:-4500}
BIG=${BIG:-500000}
SCAN=${SCAN:-100000}
SOAK=${SOAK:-0}
mkdir -p "$W"/{h1/n1,h1/run,m1,native}
pids=()
cleanup() {
    fusermount3 -u -z "$W/m1" 2>/dev/null || true
    kill "${pids[@]}" 2>/dev/null || true
    [ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null || true
}
trap cleanup EXIT
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$W/token"
chmod 600 "$W/token"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P1=$(port)
. "$HERE/lib.sh"
host_config 1 "$P1" "[fs]
ttl = \"1s\"
${CACHE_MEMORY:+cache_memory = \"$CACHE_MEMORY\"}"
cairn() { CAIRN_CONFIG=$W/h1/cairn.toml "$BIN/cairn" "$@"; }
timed() { local t0 t1; t0=$(now); "$@" >/dev/null; t1=$(now); secs "$t0" "$t1"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}x')"; }
rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$1/status"; }
phase() { echo "$1" >"$W/phase"; }
rows=()
row() { rows+=("$(printf '| %s | %s | %s | %s |' "$@")"); }

echo "Machine: $(nproc) cores, $(free -h | awk '/Mem/ {print $2}') RAM, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%F), commit $(git rev-parse --short HEAD)" >&2

cairn db init >/dev/null
cairn host create h1 --address "127.0.0.1:$P1" >/dev/null
cairn node create n1 --create-group --root="$W/h1/n1" --host=h1 --init --activate >/dev/null

# The native tree first: making 5 million files churns the page cache, and it should do so
# before both scans (4a, 4b), not between them, so that the scans differ only in the size
# of the catalog.
echo "Making the native tree ..." >&2
python3 - "$W/native/scale" "$DIRS" "$FILES" "$BIG" <<'PY'
import os, sys
root, dirs, files, big = sys.argv[1], *map(int, sys.argv[2:])
def fill(d, n, width):
    os.makedirs(d)
    for f in range(n):
        fd = os.open(os.path.join(d, "f%0*d.dat" % (width, f)), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"x")
        os.close(fd)
for d in range(dirs):
    fill(os.path.join(root, "d%04d" % d), files, 5)
fill(os.path.join(root, "big"), big, 6)
PY
# 4a. The scan into an empty catalog, first: the files it imports stay for 4b.
python3 - "$W/h1/n1/scan" "$SCAN" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "first", "%03d" % (i // 1000))
    if i % 1000 == 0:
        os.makedirs(d)
    with open(os.path.join(d, "%05d.dat" % i), "wb") as f:
        f.write(b"y")
PY
"$BIN/cairnd" --config "$W/h1/cairn.toml" 2>"$W/h1/cairnd.log" &
pids+=($!)
cairnd_pid=$!
until [ -S "$W/h1/run/cairnd.sock" ]; do sleep 0.05; done
wait_done
scan_rate() { # the subtree of the node to scan: only the new files, not those of the first
    local t0 t1
    t0=$(now)
    cairn node scan n1 "$1" --register-new >/dev/null
    wait_done
    t1=$(now)
    python3 -c "print(f'{$SCAN / ($t1 - $t0):.0f}')"
}
first_rate=$(scan_rate scan/first)

echo "Registering $DIRS x $FILES + $BIG files ..." >&2
fill=$("$BIN/cairn-fill" "sqlite://$W/catalog.db" "$DIRS" "$FILES" "$BIG")
echo "  $fill" >&2
total=$((DIRS * FILES + BIG))

# 4b. The same scan, now that the catalog holds the millions.
python3 - "$W/h1/n1/scan" "$SCAN" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "last", "%03d" % (i // 1000))
    if i % 1000 == 0:
        os.makedirs(d)
    with open(os.path.join(d, "%05d.dat" % i), "wb") as f:
        f.write(b"y")
PY
last_rate=$(scan_rate scan/last)

# Memory of both processes, every second, with the phase it was in.
echo "seconds,phase,cairnfs_mib,cairnd_mib" >"$W/rss.csv"
phase start
(
    t0=$(date +%s)
    while sleep 1; do
        fs=$(pgrep -f "cairnfs $W/m1" | head -1 || true)
        echo "$(($(date +%s) - t0)),$(cat "$W/phase"),${fs:+$(rss "$fs")},$(rss "$cairnd_pid")" >>"$W/rss.csv"
    done
) &
sampler=$!

mount_fresh() {
    fusermount3 -u -z "$W/m1" 2>/dev/null || true
    sync
    echo 3 >/proc/sys/vm/drop_caches
    "$BIN/cairnfs" "$W/m1" --config "$W/h1/cairn.toml"
}
walk() { # WHAT DIR
    case $1 in
    find) find "$2" | wc -l ;;
    du) du -s "$2" ;;
    ls) ls -l "$2/big" | wc -l ;;
    walk) python3 -c "
import os, sys
n = 0
for d, _, fs in os.walk(sys.argv[1]):
    for f in fs:
        os.stat(os.path.join(d, f)); n += 1
print(n)" "$2" ;;
    esac
}
for what in find du ls walk; do
    phase "$what-native"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    n_cold=$(timed walk "$what" "$W/native/scale")
    n_warm=$(timed walk "$what" "$W/native/scale")
    phase "$what-mount"
    mount_fresh
    m_cold=$(timed walk "$what" "$W/m1/scale")
    m_warm=$(timed walk "$what" "$W/m1/scale")
    row "\`$what\` cold" "$(printf %.2f "$m_cold") s" "$(printf %.2f "$n_cold") s" "$(ratio "$m_cold" "$n_cold")"
    row "\`$what\` warm" "$(printf %.2f "$m_warm") s" "$(printf %.2f "$n_warm") s" "$(ratio "$m_warm" "$n_warm")"
done
# 3. Memory after walking everything twice (the last mount walked with os.walk; find and du
#    again, twice), then after the kernel lets go of its inodes.
phase "twice"
for i in 1 2; do walk find "$W/m1/scale" >/dev/null; walk du "$W/m1/scale" >/dev/null; done
fs_pid=$(pgrep -f "cairnfs $W/m1" | head -1)
rss_walked=$(rss "$fs_pid")
phase "dropped"
echo 2 >/proc/sys/vm/drop_caches
sleep 5
rss_dropped=$(rss "$fs_pid")

# 5. The operators' overviews with the full catalog.
t_status=$(timed cairn status)
t_stats=$(timed cairn node stats)

if [ "$SOAK" -gt 0 ]; then
    phase soak
    echo "Soak: $SOAK minutes of writes, walks and reads ..." >&2
    end=$(($(date +%s) + SOAK * 60))
    i=0
    sed -i 's/^\[fs\]$/[fs]\nwrite_node = "n1"/' "$W/h1/cairn.toml"
    # cairnfs counts what it keeps once a minute in its log (debug), to tell what grows.
    sed -i "s|^\\[daemon\\]\$|[daemon]\\nlog_dir = \"$W/log\"|" "$W/h1/cairn.toml"
    fusermount3 -u -z "$W/m1"
    CAIRN_LOG=${CAIRN_LOG:-info,cairn_fs::core::list=debug} "$BIN/cairnfs" "$W/m1" --config "$W/h1/cairn.toml"
    # Each round writes a directory of 200 files into the night's directory (a new night
    # every 100 rounds, about a minute), walks one directory of the registered tree, reads a
    # file back and lists the night: the archive grows, each walk's size does not.
    while [ "$(date +%s)" -lt "$end" ]; do
        night="$W/m1/soak/$((i / 100))"
        mkdir -p "$night/$i"
        for f in $(seq 1 200); do head -c 4096 /dev/urandom >"$night/$i/$f.dat"; done
        find "$W/m1/scale/d$(printf %04d $((i % DIRS)))" | wc -l >/dev/null
        cat "$night/$i/1.dat" >/dev/null
        ls -l "$night" >/dev/null
        i=$((i + 1))
    done
    # What cairnfs keeps per inode lasts as long as the kernel holds the inode: the files the
    # soak wrote stay in the kernel's caches (nothing presses on its memory here), so the
    # memory they take is measured again once the kernel has dropped them.
    fs_pid=$(pgrep -f "cairnfs $W/m1" | head -1)
    rss_soak=$(rss "$fs_pid")
    sync
    echo 2 >/proc/sys/vm/drop_caches
    sleep 15
    rss_soak_dropped=$(rss "$fs_pid")
fi
kill "$sampler" 2>/dev/null || true
sampler=

echo
echo "| operation ($total files) | mount | native tree | ratio |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "| measure | value |"
echo "|---|---|"
echo "| cairnfs resident memory after walking all of it twice | $rss_walked MiB |"
echo "| the same after \`echo 2 > /proc/sys/vm/drop_caches\` | $rss_dropped MiB |"
echo "| cairnd scan import of $SCAN files, empty catalog | $first_rate files/s |"
echo "| the same with the $total files registered | $last_rate files/s ($(ratio "$last_rate" "$first_rate")) |"
echo "| \`cairn status\` | $(printf %.2f "$t_status") s |"
echo "| \`cairn node stats\` | $(printf %.2f "$t_stats") s |"
echo "| registration (cairn-fill) | $fill |"
if [ "$SOAK" -gt 0 ]; then
    echo
    echo "Soak: $((i * 200)) files written in $i rounds; cairnfs $rss_soak MiB at the end, $rss_soak_dropped MiB once the kernel dropped its inodes."
    echo
    echo "Memory during the soak, one row a minute: the lowest and the median of the samples (MiB),"
    echo "and what cairnfs counted in its log that minute (directories whose attributes it keeps,"
    echo "SQLite's memory):"
    echo
    python3 - "$W" <<'PY'
import glob, re, statistics, sys
w = sys.argv[1]
rows = [l.strip().split(",") for l in open(w + "/rss.csv") if ",soak," in l]
t0 = int(rows[0][0])
fs, d = {}, {}
for r in rows:
    m = (int(r[0]) - t0) // 60
    if r[2]:
        fs.setdefault(m, []).append(int(r[2]))
    d.setdefault(m, []).append(int(r[3]))
counts = []
for f in sorted(glob.glob(w + "/log/*")):
    for l in open(f, errors="replace"):
        c = re.search(r"attributes \d+, directories (\d+),.*SQLite (\d+) B", l)
        if c:
            counts.append(c.groups())
print("| minute | cairnfs lowest / median | cairnd median | directories kept | SQLite |")
print("|---|---|---|---|---|")
for i, m in enumerate(sorted(fs)):
    dirs, sql = counts[min(i, len(counts) - 1)] if counts else ("-", 0)
    print(f"| {m} | {min(fs[m])} / {statistics.median(fs[m]):.0f} | {statistics.median(d[m]):.0f} "
          f"| {dirs} | {int(sql) / 1048576:.1f} MiB |")
PY
fi
rm -rf "$W/native" "$W/h1/n1/scan"
