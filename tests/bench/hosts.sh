#!/usr/bin/env bash
# Pulls between two hosts (two cairnd on loopback, one catalog), against baselines measured in
# the same run between the same two roots:
#   1. one 1 GiB file pulled          vs  rsync of the file between the roots, and curl of the
#                                          same bytes from the source cairnd
#   2. 10,000 files of 4 KiB synced   vs  `rsync -a` of the same tree between the two roots over
#                                          the rsync protocol (an rsync daemon on loopback)
# Times are end to end: from the `cairn` command to every request recorded done (polled every
# 10 ms). Prints a Markdown table for BENCHMARKS.md.
# Usage: tests/bench/hosts.sh [WORKDIR]   (default: a new dir under /var/tmp; not a tmpfs)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../.."
cargo build --release --bins -q
BIN=$PWD/target/release
W=${1:-$(mktemp -d /var/tmp/cairn-hosts.XXXXXX)}
mkdir -p "$W"/{h1/n1,h2/n2,h1/run,h2/run,base}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$W/token"
chmod 600 "$W/token"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P1=$(port); P2=$(port); P3=$(port)
. "$HERE/lib.sh"
for h in 1 2; do
    p=P$h
    host_config "$h" "${!p}"
done
# The CLI runs on the receiving host, h2, so it wakes h2's cairnd at once (each host's cairnd
# hears only its own machine's CLI; the others find requests at their next loop).
cairn() { CAIRN_CONFIG=$W/h2/cairn.toml "$BIN/cairn" "$@"; }
SMALL=${CAIRN_BENCH_SMALL:-10000}

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

echo "Creating 10,000 files of 4 KiB and one 1 GiB file in $W ..." >&2
python3 - "$W/h1/n1" "$SMALL" <<'PY'
import os, sys
root, small = sys.argv[1], int(sys.argv[2])
for h in range((small + 99) // 100):
    d = os.path.join(root, "2025/01/01", "%02d" % h)
    os.makedirs(d, exist_ok=True)
    for m in range(min(100, small - h * 100)):
        with open(os.path.join(d, "%04d.dat" % m), "wb") as f:
            f.write(os.urandom(4096))
os.makedirs(os.path.join(root, "big"), exist_ok=True)
with open(os.path.join(root, "big/one.dat"), "wb") as f:
    block = os.urandom(1 << 20)
    for i in range(1024):
        f.write(block[i % 7:] + block[: i % 7])
PY
CAIRN_CONFIG=$W/h1/cairn.toml "$BIN/cairn" node scan n1 --register-new >/dev/null; wait_done
sync

# 1. One 1 GiB file. Baselines first: rsync between the roots, curl from cairnd.
t0=$(now); rsync "$W/h1/n1/big/one.dat" "$W/base/rsync.dat"; t1=$(now)
base_rsync=$(secs "$t0" "$t1"); rm -f "$W/base/rsync.dat"; sync
t0=$(now)
curl -sf -H "Authorization: Bearer $(cat "$W/token")" -o "$W/base/curl.dat" \
    "http://127.0.0.1:$P1/v1/copy/n1/big/one.dat"
t1=$(now)
base_curl=$(secs "$t0" "$t1"); rm -f "$W/base/curl.dat"; sync
t0=$(now); cairn file sync --from n1 --to n2 big/one.dat >/dev/null; wait_done; t1=$(now)
ours_big=$(secs "$t0" "$t1")
[[ "$(cairn file state big/one.dat n2)" == Healthy* ]] || { echo "1 GiB pull not recorded" >&2; exit 1; }

# 2. 10,000 small files. Baseline first: rsync -a of the tree from an rsync daemon serving
# h1's root on loopback (the rsync protocol, as between two machines) into a third directory.
cat >"$W/rsyncd.conf" <<CONF
pid file = $W/rsyncd.pid
use chroot = false
[n1]
path = $W/h1/n1
read only = true
CONF
rsync --daemon --no-detach --address=127.0.0.1 --port="$P3" --config="$W/rsyncd.conf" \
    --log-file="$W/rsyncd.log" &
pids+=($!)
until rsync --port="$P3" "rsync://127.0.0.1/" >/dev/null 2>&1; do sleep 0.05; done
sync
t0=$(now)
rsync -a --exclude=.cairn/ --exclude=/big/ "rsync://127.0.0.1:$P3/n1/" "$W/base/rsync-small/"
t1=$(now); sync; t2=$(now)
# The baseline is rsync with its files made durable (a sync), as cairn's are before they are
# recorded; rsync's own time, without the sync, is reported beside it.
base_small=$(secs "$t0" "$t2"); base_small_nosync=$(secs "$t0" "$t1")
m=$(find "$W/base/rsync-small" -type f | wc -l)
[ "$m" = "$SMALL" ] || { echo "rsync copied $m files, expected $SMALL" >&2; exit 1; }
rm -rf "$W/base/rsync-small"; sync
t0=$(now); cairn node sync n1 n2 --force >/dev/null; wait_done; t1=$(now)
ours_small=$(secs "$t0" "$t1")
n=$(cairn node stats n2 --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['files'])")
[ "$n" = $((SMALL + 1)) ] || { echo "expected $((SMALL + 1)) files on n2, got $n" >&2; exit 1; }

echo
echo "Run $(date -u +%Y-%m-%d), $(nproc) cores, loopback, both roots on $(df -h "$W" | awk 'NR==2 {print $1}')"
echo
echo "| workload | cairn | baseline (same run) | ratio | target |"
echo "|---|---|---|---|---|"
echo "| pull one 1 GiB file (md5-checked, fsynced) | $(mibs "$ours_big") | rsync: $(mibs "$base_rsync") | $(python3 -c "print(f'{$base_rsync / $ours_big:.2f}')")× rsync | ≥ 1.0× rsync |"
echo "| | | curl from cairnd: $(mibs "$base_curl") | $(python3 -c "print(f'{$base_curl / $ours_big:.2f}')")× curl | (reported) |"
echo "| sync $SMALL × 4 KiB between hosts (all recorded, md5-checked) | $(python3 -c "print(f'{$SMALL / $ours_small:,.0f}')") files/s | rsync -a (daemon): $(python3 -c "print(f'{$SMALL / $base_small:,.0f}')") files/s | $(python3 -c "print(f'{$base_small / $ours_small:.2f}')")× rsync | ≥ 1.0× rsync |"
echo "| | | rsync -a without the final sync: $(python3 -c "print(f'{$SMALL / $base_small_nosync:,.0f}')") files/s | $(python3 -c "print(f'{$base_small_nosync / $ours_small:.2f}')")× | (reported) |"
