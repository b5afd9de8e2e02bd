#!/usr/bin/env bash
# cairnd throughput against baselines measured in the same run, on the same disk:
#   1. importing 10,000 files of 4 KiB by `node scan`  vs  md5sum of the same files
#   2. importing one 1 GiB file                         vs  md5sum of it
#   3. a verified copy of 1 GiB between two nodes       vs  cp, then md5sum of the copy
# Times are end to end: from the CLI command to the request recorded done in the catalog
# (polled every 10 ms). Prints a Markdown table for BENCHMARKS.md.
# Usage: tests/bench/cairnd.sh [WORKDIR]   (default: a new dir under /var/tmp; not a tmpfs)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bins -q
BIN=$PWD/target/release
W=${1:-$(mktemp -d /var/tmp/cairn-bench.XXXXXX)}
mkdir -p "$W"/{n1,n2,run,base}
trap 'kill $(cat "$W/run/pid" 2>/dev/null) 2>/dev/null || true' EXIT

cat >"$W/cairn.toml" <<TOML
[catalog]
url = "sqlite://$W/catalog.db"
[host]
name = "bench"
[daemon]
interval = "10s"
socket = "$W/run/cairnd.sock"
lock_file = "$W/run/cairnd.lock"
[import]
acq_depth = 3
TOML
export CAIRN_CONFIG=$W/cairn.toml
cairn() { "$BIN/cairn" "$@"; }
now() { date +%s.%N; }
# Waits until every request is done, polling the catalog every 10 ms.
wait_done() {
    python3 - "$W/catalog.db" <<'PY'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30)
q = ("SELECT (SELECT COUNT(*) FROM copy_request WHERE state IN ('pending','active'))"
     " + (SELECT COUNT(*) FROM import_request WHERE state IN ('pending','active'))")
while db.execute(q).fetchone()[0]:
    time.sleep(0.01)
PY
}

cairn db init >/dev/null
cairn node create n1 --create-group --root="$W/n1" --host=bench --init --activate >/dev/null
cairn node create n2 --create-group --root="$W/n2" --host=bench --init --activate >/dev/null
"$BIN/cairnd" --config "$W/cairn.toml" 2>"$W/cairnd.log" &
echo $! >"$W/run/pid"
until [ -S "$W/run/cairnd.sock" ]; do sleep 0.05; done
wait_done

echo "Creating 10,000 files of 4 KiB and one 1 GiB file in $W ..." >&2
python3 - "$W/n1" <<'PY'
import os, sys
root = sys.argv[1]
for h in range(100):
    d = os.path.join(root, "2025/01/01", "%02d" % h)
    os.makedirs(d, exist_ok=True)
    for m in range(100):
        with open(os.path.join(d, "%04d.dat" % m), "wb") as f:
            f.write(os.urandom(4096))
os.makedirs(os.path.join(root, "big"), exist_ok=True)
with open(os.path.join(root, "big/one.dat"), "wb") as f:
    block = os.urandom(1 << 20)
    for i in range(1024):
        f.write(block[i % 7:] + block[: i % 7])
PY
sync

rate() { python3 -c "print(f'{$1 / $2:,.0f}')"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
mibs() { python3 -c "print(f'{1024 / $1:,.0f} MiB/s')"; }

# 1. Small files: md5sum of all 10,000 files (baseline), then cairn's scan import.
t0=$(now); find "$W/n1/2025" -type f -print0 | xargs -0 md5sum >/dev/null; t1=$(now)
base_small=$(python3 -c "print($t1 - $t0)")
t0=$(now); cairn node scan n1 2025 --register-new >/dev/null; wait_done; t1=$(now)
ours_small=$(python3 -c "print($t1 - $t0)")
n=$(cairn node stats n1 --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['files'])")
[ "$n" = 10000 ] || { echo "expected 10000 files imported, got $n" >&2; exit 1; }

# 2. One 1 GiB file: md5sum (baseline), then cairn's import (md5 at registration).
t0=$(now); md5sum "$W/n1/big/one.dat" >/dev/null; t1=$(now)
base_big=$(python3 -c "print($t1 - $t0)")
t0=$(now); cairn file import --register-new big/one.dat n1 >/dev/null; wait_done; t1=$(now)
ours_big=$(python3 -c "print($t1 - $t0)")
cairn file show big/one.dat | grep -q "1.000 GiB" || { echo "1 GiB file not imported" >&2; exit 1; }

# 3. Verified copy of 1 GiB: cp then md5sum of the copy (baseline), then a cairn copy
#    (md5 computed in the same pass, checked, fsynced, renamed).
t0=$(now); cp "$W/n1/big/one.dat" "$W/base/one.dat"; md5sum "$W/base/one.dat" >/dev/null; t1=$(now)
base_copy=$(python3 -c "print($t1 - $t0)")
rm -f "$W/base/one.dat"; sync
t0=$(now); cairn file sync --from n1 --to n2 big/one.dat >/dev/null; wait_done; t1=$(now)
ours_copy=$(python3 -c "print($t1 - $t0)")
cairn file state big/one.dat n2 | grep -q Healthy || { echo "copy not recorded healthy" >&2; exit 1; }

echo
echo "Run $(date -u +%Y-%m-%d), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, work dir on $(df -h "$W" | awk 'NR==2 {print $1}')"
echo
echo "| workload | cairn | baseline (same run) | ratio | target |"
echo "|---|---|---|---|---|"
echo "| import 10,000 × 4 KiB by scan | $(rate 10000 "$ours_small") files/s | md5sum: $(rate 10000 "$base_small") files/s | $(ratio "$base_small" "$ours_small")× | ≥ 1,500 files/s |"
echo "| import one 1 GiB file | $(mibs "$ours_big") | md5sum: $(mibs "$base_big") | $(ratio "$base_big" "$ours_big")× | ≥ 0.9× md5sum |"
echo "| verified copy of 1 GiB | $(mibs "$ours_copy") | cp + md5sum: $(mibs "$base_copy") | $(ratio "$base_copy" "$ours_copy")× faster | ≥ 1.2× faster |"
