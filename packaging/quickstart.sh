#!/usr/bin/env bash
# One command to a working archive on this machine: installs what is missing (as root),
# builds cairn, sets up three hosts with an embedded SQLite catalog, starts their cairnd
# daemons, mounts host 1's view of the archive with cairnfs, puts sample files in, and
# prints what to try and how to stop it.
#
#   packaging/quickstart.sh                          # in /tmp/cairn-quickstart
#   CAIRN_DEMO_DIR=$HOME/cairn-qs packaging/quickstart.sh
#
# Everything lives in the demo directory (wiped first, only if this script made it). The
# daemons and the mount keep running after the script ends; <dir>/stop.sh stops them.
# CAIRN_BIN=DIR uses binaries already built there instead of running cargo build.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
demo=${CAIRN_DEMO_DIR:-/tmp/cairn-quickstart}
timeout=${CAIRN_DEMO_TIMEOUT:-60}
marker=.cairn-quickstart

say() { printf '\n== %s\n' "$*"; }
die() {
    printf '\nquickstart.sh: %s\n' "$*" >&2
    exit 1
}

case $demo in
/*) ;;
*) demo=$PWD/$demo ;;
esac
demo=${demo%/}
[[ -n $demo && $demo != / ]] || die "refusing to use \"/\" as the demo directory"
case $demo in
*[\"\\\ ]*) die "the demo directory must not contain spaces, '\"' or '\\': $demo" ;;
esac

# ---- what the machine needs ----------------------------------------------------------------

missing=()
for tool in fusermount3:fuse3 getfattr:attr setfattr:attr; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
[[ -e /dev/fuse ]] || die "/dev/fuse is missing: this machine (or container) has no FUSE"
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]]; then
        say "Installing what is missing (packaging/install-deps.sh)"
        bash "$repo/packaging/install-deps.sh"
    else
        die "missing: ${missing[*]}. Run: sudo bash $repo/packaging/install-deps.sh"
    fi
fi

# ---- build ---------------------------------------------------------------------------------

if [[ -n ${CAIRN_BIN:-} ]]; then
    bin=$CAIRN_BIN
else
    command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup)"
    say "Building cairn (cargo build --bins)"
    (cd "$repo" && cargo build --bins)
    target=${CARGO_TARGET_DIR:-$repo/target}
    bin=$target/debug
fi
for b in cairn cairnd cairnfs; do
    [[ -x $bin/$b ]] || die "$bin/$b is not built"
done

# ---- a fresh directory ---------------------------------------------------------------------

if [[ -e $demo ]]; then
    [[ -d $demo ]] || die "$demo exists and is not a directory"
    if [[ -n $(ls -A "$demo") && ! -e $demo/$marker ]]; then
        die "$demo is not empty and was not made by this script; set CAIRN_DEMO_DIR elsewhere"
    fi
    [[ -x $demo/stop.sh ]] && "$demo/stop.sh" >/dev/null 2>&1 || true
fi
say "Setting up three hosts in $demo"
rm -rf "$demo"
mkdir -p "$demo"
touch "$demo/$marker"

# Free TCP ports on loopback for the three cairnd HTTP servers, below the range the kernel
# hands out for outgoing connections (32768 and up), so no client takes one meanwhile.
free_port() {
    local p
    for ((p = $1; p < $1 + 200; p++)); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    die "no free port from $1"
}
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$demo/token"
chmod 600 "$demo/token"
port=7100
for h in 1 2 3; do
    port=$(free_port $((port + 1)))
    d=$demo/alpenhost$h
    mkdir -p "$d/run" "$d/demo_storage$h"
    cat >"$d/cairn.toml" <<EOF
# Host alpenhost$h of the quick-start archive (written by packaging/quickstart.sh).
# Every key and its default: packaging/cairn.toml and docs/CONFIGURATION.md.
[catalog]
url = "sqlite://$demo/catalog.db"
[host]
name = "alpenhost$h"
[daemon]
interval = "2s"
socket = "$d/run/cairnd.sock"
lock_file = "$d/run/cairnd.lock"
min_archive_copies = 1
[transfer]
listen = "127.0.0.1:$port"
advertise = "127.0.0.1:$port"
token_file = "$demo/token"
[import]
acq_depth = 3
[cache]
dir = "$d/cache"
max_bytes = "1GiB"
[fs]
write_node = "demo_storage$h"
EOF
done

cairn() { CAIRN_CONFIG=$demo/alpenhost1/cairn.toml "$bin/cairn" "$@"; }
cairn db init >/dev/null
for h in 1 2 3; do
    args=(--create-group --root="$demo/alpenhost$h/demo_storage$h" --host="alpenhost$h" --init --activate)
    [[ $h == 1 ]] || args+=(--archive)
    cairn node create "demo_storage$h" "${args[@]}" >/dev/null
done
# What lands on host 1 is copied to host 2's archive at once.
cairn group autosync demo_storage2 demo_storage1 >/dev/null
echo "Catalog: $demo/catalog.db; nodes demo_storage1 (alpenhost1, field),"
echo "demo_storage2 (alpenhost2, archive, auto-synced from demo_storage1), demo_storage3"
echo "(alpenhost3, archive)."

cat >"$demo/stop.sh" <<EOF
#!/usr/bin/env bash
# Stops the quick-start archive: unmounts the view, then stops the three cairnd daemons.
fusermount3 -u "$demo/archive" 2>/dev/null || umount "$demo/archive" 2>/dev/null || true
for h in 1 2 3; do
    lock=$demo/alpenhost\$h/run/cairnd.lock
    [[ -f \$lock ]] || continue
    read -r _ pid _ <"\$lock" || continue
    # Only a cairnd: the number may have been reused by another process since.
    [[ \$pid =~ ^[0-9]+\$ && \$(cat /proc/\$pid/comm 2>/dev/null) == cairnd ]] || continue
    kill -TERM "\$pid" 2>/dev/null || true
done
echo "Stopped. (Everything stays in $demo.)"
EOF
chmod +x "$demo/stop.sh"

pids=()
wait_for() {
    local what=$1
    shift
    local deadline=$((SECONDS + timeout)) p
    until "$@" >/dev/null 2>&1; do
        for p in "${!pids[@]}"; do
            if ! kill -0 "${pids[$p]}" 2>/dev/null; then
                tail -n 20 "$demo/alpenhost$((p + 1))/cairnd.log" >&2
                die "the cairnd of alpenhost$((p + 1)) stopped while waiting for $what (its log above)"
            fi
        done
        ((SECONDS < deadline)) || die "timed out waiting for $what (logs: $demo/alpenhost*/cairnd.log)"
        sleep 0.2
    done
}

say "Starting the three cairnd daemons"
for h in 1 2 3; do
    d=$demo/alpenhost$h
    nohup "$bin/cairnd" --config "$d/cairn.toml" >>"$d/cairnd.log" 2>&1 </dev/null &
    pids+=($!)
    echo "alpenhost$h: cairnd pid $!, log $d/cairnd.log"
done
for h in 1 2 3; do
    wait_for "cairnd of alpenhost$h" test -S "$demo/alpenhost$h/run/cairnd.sock"
    wait_for "demo_storage$h to be initialised" test -e "$demo/alpenhost$h/demo_storage$h/.cairn/node.toml"
done

say "Mounting alpenhost1's view of the archive at $demo/archive"
mkdir -p "$demo/archive"
"$bin/cairnfs" "$demo/archive" --config "$demo/alpenhost1/cairn.toml" ||
    die "cairnfs could not mount (see above)"
mnt=$demo/archive

say "Putting sample files in"
mkdir -p "$mnt/2025/02/21/23"
echo "This is the first acquisition in the demo" >"$mnt/2025/02/21/meta.txt"
for t in 1324 1330 1342; do
    seq 0 "${t: -2}" >"$mnt/2025/02/21/23/$t.dat"
done
echo "  cp into the mount: 2025/02/21/meta.txt and 2025/02/21/23/{1324,1330,1342}.dat"
# A file that only alpenhost3 has: reading it through the mount fetches it.
mkdir -p "$demo/alpenhost3/demo_storage3/2025/03/01"
head -c 4000000 /dev/urandom >"$demo/alpenhost3/demo_storage3/2025/03/01/far.bin"
CAIRN_CONFIG=$demo/alpenhost3/cairn.toml "$bin/cairn" node scan demo_storage3 --register-new >/dev/null
echo "  on alpenhost3 only: 2025/03/01/far.bin (4 MB)"
synced() { [[ $(cairn node stats demo_storage2 | awk '$1 == "demo_storage2" { print $2 }') == 4 ]]; }
wait_for "the auto-sync to demo_storage2" synced
wait_for "far.bin to be registered" test -e "$mnt/2025/03/01/far.bin"
cairn node stats

cat <<EOF

== Try it

The whole archive, as alpenhost1 sees it:

    cd $mnt
    ls -lR
    getfattr -d -m - 2025/02/21/meta.txt          # md5, size, state, copies, requests
    md5sum 2025/03/01/far.bin                     # only on alpenhost3: fetched, then cached
    getfattr -n user.cairn.state 2025/03/01/far.bin
    setfattr -n user.cairn.sync -v demo_storage3 2025/02/21   # copy a whole directory
    getfattr -n user.cairn.copies 2025/02/21/meta.txt
    cp -r /usr/share/doc/bash $mnt/2025/docs      # anything written here is archived
    rm 2025/02/21/meta.txt                        # refused: archived files do not change

The CLI sees the same archive:

    export CAIRN_CONFIG=$demo/alpenhost1/cairn.toml PATH=$bin:\$PATH
    cairn status
    cairn file list --details

Stop it all (unmount, stop the daemons) with:

    $demo/stop.sh
EOF
