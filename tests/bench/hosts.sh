#!/usr/bin/env bash
# Pulls between hosts (cairnd on loopback, one catalog), against baselines measured in the
# same run between the same roots:
#   1. one 1 GiB file pulled          vs  rsync of the file between the roots, and curl of the
#                                          same bytes from the source cairnd
#   2. SMALL files of 4 KiB synced     vs  `rsync -a` of the same tree from an rsync daemon on
#      (default 10,000)                    loopback serving the source root (the rsync protocol)
#   3. MID files of 1 MiB synced       vs  the same (default 1,000)
#   4. with LINK_MS (one way, default 5: a 10 ms round trip; 0 skips it): 2 and 3 again, to a
#      third host whose pulls go through the test harness's latency proxy (`cairn-link`), and
#      rsync through the same proxy
# Nothing is deleted while it runs (the baselines' copies stay in WORKDIR/base): on an ext4
# without a journal (this machine's disk) a new file's inode is sought past every inode freed
# in the last 5-10 s, and creates after a mass delete ran several times slower.
# Times are end to end: from the `cairn` command to every request recorded done (polled every
# 10 ms); rsync's include a final `sync` (cairn's files are durable before they are recorded).
# Each measurement runs RUNS times (default 3), cairn and its baseline taking turns, each run
# on a tree (or file) of its own; a figure is the median of its runs, a ratio the median of
# the runs' ratios, with every run's ratio beside it (rsync's speed on this kind of machine
# moves severalfold from one run to the next: a one-run ratio says little).
# Prints a Markdown table for BENCHMARKS.md; each run's times go to standard error.
# Usage: tests/bench/hosts.sh [WORKDIR]   (default: a new dir under /var/tmp; not a tmpfs)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../.."
cargo build --release --bins -q
cargo build --release -q -p cairn-tests --bin cairn-link
BIN=$PWD/target/release
W=${1:-$(mktemp -d /var/tmp/cairn-hosts.XXXXXX)}
mkdir -p "$W"/{h1/n1,h2/n2,h3/n3,h1/run,h2/run,h3/run,base}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$W/token"
chmod 600 "$W/token"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# cairnd of h1, h2, h3; then the rsync daemon's.
P1=$(port); P2=$(port); P4=$(port); P3=$(port)
. "$HERE/lib.sh"
host_config 1 "$P1"
host_config 2 "$P2"
host_config 3 "$P4"
# The CLI runs on the receiving host, so it wakes that host's cairnd at once (each host's
# cairnd hears only its own machine's CLI; the others find requests at their next loop).
cairn() { CAIRN_CONFIG=$W/h2/cairn.toml "$BIN/cairn" "$@"; }
SMALL=${SMALL:-10000}
MID=${MID:-1000}
LINK_MS=${LINK_MS:-5}
RUNS=${RUNS:-3}

cairn db init >/dev/null
cairn host create h1 --address "127.0.0.1:$P1" >/dev/null
cairn host create h2 --address "127.0.0.1:$P2" >/dev/null
cairn node create n1 --create-group --root="$W/h1/n1" --host=h1 --init --activate >/dev/null
cairn node create n2 --create-group --root="$W/h2/n2" --host=h2 --init --activate >/dev/null
cairn host create h3 --address "127.0.0.1:$P4" >/dev/null
cairn node create n3 --create-group --root="$W/h3/n3" --host=h3 --init --activate >/dev/null
for h in 1 2 3; do
    "$BIN/cairnd" --config "$W/h$h/cairn.toml" 2>"$W/h$h/cairnd.log" &
    pids+=($!)
    until [ -S "$W/h$h/run/cairnd.sock" ]; do sleep 0.05; done
done
wait_done

echo "Creating $RUNS times $SMALL files of 4 KiB, $MID of 1 MiB and one of 1 GiB in $W ..." >&2
python3 - "$W/h1/n1" "$SMALL" "$MID" "$RUNS" <<'PY'
import os, sys
root, small, mid, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def tree(top, n, size):
    for h in range((n + 99) // 100):
        d = os.path.join(root, top, "%02d" % h)
        os.makedirs(d, exist_ok=True)
        for m in range(min(100, n - h * 100)):
            with open(os.path.join(d, "%04d.dat" % m), "wb") as f:
                f.write(os.urandom(size))
os.makedirs(os.path.join(root, "big"), exist_ok=True)
for run in range(runs):
    tree(f"small{run}", small, 4096)
    tree(f"mid{run}", mid, 1 << 20)
    with open(os.path.join(root, f"big/{run}.dat"), "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(1024):
            f.write(block[i % 7:] + block[: i % 7])
PY
CAIRN_CONFIG=$W/h1/cairn.toml "$BIN/cairn" node scan n1 --register-new >/dev/null; wait_done
sync

# Median of the numbers given.
median() { python3 -c "import statistics, sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }
# "median× (runs: a, b, c)" of the ratios BASE[i] / OURS[i], for two space-separated lists.
ratios() {
    python3 - "$1" "$2" <<'PY'
import statistics, sys
r = [float(b) / float(o) for b, o in zip(sys.argv[1].split(), sys.argv[2].split())]
runs = f" (runs: {', '.join(f'{x:.2f}' for x in r)})" if len(r) > 1 else ""
print(f"{statistics.median(r):.2f}×{runs}")
PY
}

# 1. One 1 GiB file: rsync between the roots, curl from cairnd, cairn's pull, in turn.
base_rsync=() base_curl=() ours_big=()
for ((i = 0; i < RUNS; i++)); do
    sync; t0=$(now); rsync "$W/h1/n1/big/$i.dat" "$W/base/rsync$i.dat"; t1=$(now)
    base_rsync+=("$(secs "$t0" "$t1")"); sync
    t0=$(now)
    curl -sf -H "Authorization: Bearer $(cat "$W/token")" -o "$W/base/curl$i.dat" \
        "http://127.0.0.1:$P1/v1/copy/n1/big/$i.dat"
    t1=$(now)
    base_curl+=("$(secs "$t0" "$t1")"); sync
    t0=$(now); cairn file sync --from n1 --to n2 "big/$i.dat" >/dev/null; wait_done; t1=$(now)
    ours_big+=("$(secs "$t0" "$t1")")
    printf '1 GiB run %d: rsync %.3f s, curl %.3f s, cairn %.3f s\n' "$i" "${base_rsync[-1]}" \
        "${base_curl[-1]}" "${ours_big[-1]}" >&2
    [[ "$(cairn file state "big/$i.dat" n2)" == Healthy* ]] ||
        { echo "1 GiB pull not recorded" >&2; exit 1; }
done

# 2-4. Trees synced. Baselines: rsync -a of the same tree from an rsync daemon serving h1's
# root (the rsync protocol, as between two machines) into a directory beside the receiver's.
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

# rsync -a of TREE from the daemon at PORT; prints "with-sync without-sync" seconds.
rsync_tree() {
    local tree=$1 port=$2 n t0 t1 t2
    sync
    t0=$(now)
    rsync -a "rsync://127.0.0.1:$port/n1/$tree/" "$W/base/$tree/"
    t1=$(now); sync; t2=$(now)
    n=$(find "$W/base/$tree" -type f | wc -l)
    [ "$n" = "$(find "$W/h1/n1/$tree" -type f | wc -l)" ] || { echo "rsync copied $n files of $tree" >&2; exit 1; }
    mv "$W/base/$tree" "$W/base/$tree.$port"
    echo "$(secs "$t0" "$t2") $(secs "$t0" "$t1")"
}
# cairn node sync of TREE into node N (on host N, whose CLI wakes its cairnd); prints seconds.
cairn_tree() {
    local tree=$1 h=$2 t0 t1 n
    sync
    t0=$(now)
    CAIRN_CONFIG=$W/h$h/cairn.toml "$BIN/cairn" node sync n1 "n$h" --path "$tree" --force >/dev/null
    wait_done; t1=$(now)
    n=$(CAIRN_CONFIG=$W/h$h/cairn.toml "$BIN/cairn" node stats "n$h" --json |
        python3 -c "import json,sys; print(json.load(sys.stdin)[0]['files'])")
    echo "$(secs "$t0" "$t1") $n"
}
rows=()
# Files on each node so far (n2 holds the 1 GiB files).
declare -A held=([2]=$RUNS [3]=0)
# TREE COUNT SIZE-WORD HOST RSYNC-PORT LINK-WORD: RUNS runs of rsync, then cairn, of
# TREE0, TREE1, ...
measure() {
    local tree=$1 count=$2 what=$3 h=$4 port=$5 link=$6 i b nb o n
    local base=() nosync=() ours=()
    for ((i = 0; i < RUNS; i++)); do
        read -r b nb < <(rsync_tree "$tree$i" "$port")
        read -r o n < <(cairn_tree "$tree$i" "$h")
        held[$h]=$((held[$h] + count))
        [ "$n" = "${held[$h]}" ] || { echo "expected ${held[$h]} files on n$h, got $n" >&2; exit 1; }
        base+=("$b") nosync+=("$nb") ours+=("$o")
        printf '%s run %d: rsync -a + sync %.3f s (without the sync %.3f s), cairn %.3f s\n' \
            "$count × $what$link" "$i" "$b" "$nb" "$o" >&2
    done
    local mb mn mo
    mb=$(median "${base[@]}") mn=$(median "${nosync[@]}") mo=$(median "${ours[@]}")
    rows+=("| sync $count × $what$link (all recorded, md5-checked) | $(python3 -c "print(f'{$count / $mo:,.0f}')") files/s | rsync -a (daemon) + sync: $(python3 -c "print(f'{$count / $mb:,.0f}')") files/s | $(ratios "${base[*]}" "${ours[*]}") rsync | ≥ 1.0× rsync |")
    rows+=("| | | rsync -a without the final sync: $(python3 -c "print(f'{$count / $mn:,.0f}')") files/s | $(ratios "${nosync[*]}" "${ours[*]}") | (reported) |")
}
measure small "$SMALL" "4 KiB" 2 "$P3" ""
measure mid "$MID" "1 MiB" 2 "$P3" ""
if [ "$LINK_MS" -gt 0 ]; then
    # h1's cairnd and the rsync daemon behind the proxy; h3 pulls from h1 through it.
    coproc LINK1 { "$BIN/cairn-link" "127.0.0.1:$P1" "$LINK_MS"; }
    read -r line <&"${LINK1[0]}"; PL1=${line#PORT=}
    coproc LINK2 { "$BIN/cairn-link" "127.0.0.1:$P3" "$LINK_MS"; }
    read -r line <&"${LINK2[0]}"; PL2=${line#PORT=}
    cairn host modify h1 --address "127.0.0.1:$PL1" >/dev/null
    rtt=" through the proxy ($((2 * LINK_MS)) ms round trip)"
    measure small "$SMALL" "4 KiB" 3 "$PL2" "$rtt"
    measure mid "$MID" "1 MiB" 3 "$PL2" "$rtt"
    cairn host modify h1 --address "127.0.0.1:$P1" >/dev/null
fi

echo
echo "Run $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), loopback, all roots on $(df -h "$W" | awk 'NR==2 {print $1}'), median of $RUNS runs each"
echo
echo "| workload | cairn | baseline (same run) | ratio | target |"
echo "|---|---|---|---|---|"
echo "| pull one 1 GiB file (md5-checked, fsynced) | $(mibs "$(median "${ours_big[@]}")") | rsync: $(mibs "$(median "${base_rsync[@]}")") | $(ratios "${base_rsync[*]}" "${ours_big[*]}") rsync | ≥ 1.5× rsync |"
echo "| | | curl from cairnd: $(mibs "$(median "${base_curl[@]}")") | $(ratios "${base_curl[*]}" "${ours_big[*]}") curl | (reported) |"
printf '%s\n' "${rows[@]}"
