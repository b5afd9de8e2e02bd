#!/usr/bin/env bash
# cairnd throughput against baselines measured in the same run, on the same disk:
#   1. importing 10,000 files of 4 KiB by `node scan`  vs  md5sum of the same files
#   2. importing one 1 GiB file                         vs  md5sum of it
#   3. a verified copy of 1 GiB between two nodes       vs  cp, then md5sum of the copy
# Times are end to end: from the CLI command to the request recorded done in the catalog
# (polled every 10 ms). Prints a Markdown table for BENCHMARKS.md.
# Usage: tests/bench/cairnd.sh [WORKDIR]   (default: a new dir under /var/tmp; not a tmpfs)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../.."
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
[transfer]
listen = "127.0.0.1:0"
[import]
acq_depth = 3
TOML
export CAIRN_CONFIG=$W/cairn.toml
cairn() { "$BIN/cairn" "$@"; }
. "$HERE/lib.sh"

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

# Empties the page cache (needs root), so a file is read from the disk as an archive's
# files usually are; returns non-zero where that is not allowed.
cold() { sync; echo 3 2>/dev/null >/proc/sys/vm/drop_caches; }
# Waits until no copy is waiting to be verified.
wait_verified() {
    python3 - "$W/catalog.db" <<'PY'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30)
while db.execute("SELECT COUNT(*) FROM copy WHERE verify_requested = 1").fetchone()[0]:
    time.sleep(0.01)
PY
}
rate() { python3 -c "print(f'{$1 / $2:,.0f}')"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

# 1. Small files: md5sum of all 10,000 files (baseline), then cairn's scan import.
t0=$(now); find "$W/n1/2025" -type f -print0 | xargs -0 md5sum >/dev/null; t1=$(now)
base_small=$(secs "$t0" "$t1")
t0=$(now); cairn node scan n1 2025 --register-new >/dev/null; wait_done; t1=$(now)
ours_small=$(secs "$t0" "$t1")
n=$(cairn node stats n1 --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['files'])")
[ "$n" = 10000 ] || { echo "expected 10000 files imported, got $n" >&2; exit 1; }

# 2. One 1 GiB file: md5sum (baseline), then cairn's import (md5 at registration).
#    Warm: the file in the page cache for both. Cold: read from the disk for both.
t0=$(now); md5sum "$W/n1/big/one.dat" >/dev/null; t1=$(now)
base_big=$(secs "$t0" "$t1")
t0=$(now); cairn file import --register-new big/one.dat n1 >/dev/null; wait_done; t1=$(now)
ours_big=$(secs "$t0" "$t1")
[[ "$(cairn file show big/one.dat)" == *"1.000 GiB"* ]] || { echo "1 GiB file not imported" >&2; exit 1; }
have_cold=no
if cold; then
    have_cold=yes
    t0=$(now); md5sum "$W/n1/big/one.dat" >/dev/null; t1=$(now)
    base_big_cold=$(secs "$t0" "$t1")
    cold
    # A verify reads and hashes the whole copy, like an import: the cold-cache md5 pass.
    t0=$(now); cairn file verify big/one.dat n1 >/dev/null; wait_verified; t1=$(now)
    ours_big_cold=$(secs "$t0" "$t1")
fi

# 3. Verified copy of 1 GiB: cp then md5sum of the copy (baseline), then a cairn copy
#    (md5 computed in the same pass, checked, fsynced, renamed). Warm, then cold.
copy_base() {
    t0=$(now); cp "$W/n1/big/one.dat" "$W/base/one.dat"; md5sum "$W/base/one.dat" >/dev/null; t1=$(now)
    rm -f "$W/base/one.dat"; sync
    secs "$t0" "$t1"
}
copy_ours() {
    t0=$(now); cairn file sync --from n1 --to n2 big/one.dat >/dev/null; wait_done; t1=$(now)
    [[ "$(cairn file state big/one.dat n2)" == Healthy* ]] || { echo "copy not recorded healthy" >&2; exit 1; }
    # Take the copy away again (through the catalog, as an operator would) for the next run.
    cairn file clean --now --node=n2 big/one.dat >/dev/null
    python3 - "$W/catalog.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30)
db.execute("UPDATE copy SET has = 'no' WHERE node_id = (SELECT id FROM node WHERE name = 'n2')")
db.commit()
PY
    rm -f "$W/n2/big/one.dat"
    secs "$t0" "$t1"
}
cat "$W/n1/big/one.dat" >/dev/null
base_copy=$(copy_base)
cat "$W/n1/big/one.dat" >/dev/null
ours_copy=$(copy_ours)
if [ $have_cold = yes ]; then
    cold; base_copy_cold=$(copy_base)
    cold; ours_copy_cold=$(copy_ours)
fi

echo
echo "Run $(date -u +%Y-%m-%d), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, work dir on $(df -h "$W" | awk 'NR==2 {print $1}')"
echo
echo "| workload | cairn | baseline (same run) | ratio | target |"
echo "|---|---|---|---|---|"
echo "| import 10,000 × 4 KiB by scan | $(rate 10000 "$ours_small") files/s | md5sum: $(rate 10000 "$base_small") files/s | $(ratio "$base_small" "$ours_small")× | ≥ 1,500 files/s |"
echo "| import one 1 GiB file, page cache warm | $(mibs "$ours_big") | md5sum: $(mibs "$base_big") | $(ratio "$base_big" "$ours_big")× | ≥ 0.9× md5sum |"
[ $have_cold = yes ] && echo "| md5 pass over 1 GiB (verify), page cache cold | $(mibs "$ours_big_cold") | md5sum: $(mibs "$base_big_cold") | $(ratio "$base_big_cold" "$ours_big_cold")× | ≥ 0.9× md5sum |"
echo "| verified copy of 1 GiB, page cache warm | $(mibs "$ours_copy") | cp + md5sum: $(mibs "$base_copy") | $(ratio "$base_copy" "$ours_copy")× faster | ≥ 1.2× faster |"
[ $have_cold = yes ] && echo "| verified copy of 1 GiB, page cache cold | $(mibs "$ours_copy_cold") | cp + md5sum: $(mibs "$base_copy_cold") | $(ratio "$base_copy_cold" "$ours_copy_cold")× faster | ≥ 1.2× faster |"
true
