#!/usr/bin/env bash
# Builds cairn and replays the command-line half of the alpenhorn demo on an embedded SQLite
# catalog, in a fresh directory on this machine.
#
#   packaging/demo.sh                          # demo in /tmp/cairn-demo
#   CAIRN_DEMO_DIR=$HOME/cairn-demo packaging/demo.sh
#
# The directory is wiped first (only if it is empty or was made by an earlier run of this
# script). Everything the demo writes stays inside it; nothing needs root.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
demo=${CAIRN_DEMO_DIR:-/tmp/cairn-demo}
marker=.cairn-demo

say() { printf '\n== %s\n' "$*"; }
die() {
    printf 'demo.sh: %s\n' "$*" >&2
    exit 1
}

# ---- the directory -------------------------------------------------------------------------

case $demo in
/*) ;;
*) demo=$PWD/$demo ;;
esac
demo=${demo%/}
[[ -n $demo && $demo != / ]] || die "refusing to use \"/\" as the demo directory"
case $demo in
*[\"\\]*) die "the demo directory must not contain '\"' or '\\': $demo" ;;
esac
if [[ -e $demo ]]; then
    [[ -d $demo ]] || die "$demo exists and is not a directory"
    if [[ -n $(ls -A "$demo") && ! -e $demo/$marker ]]; then
        die "$demo is not empty and was not made by this script; set CAIRN_DEMO_DIR elsewhere"
    fi
fi

# ---- build ---------------------------------------------------------------------------------

command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"
say "Building cairn (cargo build --bins)"
(cd "$repo" && cargo build --bins)
target=${CARGO_TARGET_DIR:-target}
[[ $target == /* ]] || target=$repo/$target
bin=$target/debug
[[ -x $bin/cairn ]] || die "cargo build did not produce $bin/cairn"

# ---- set up --------------------------------------------------------------------------------

say "Setting up a fresh demo archive in $demo"
rm -rf "$demo"
mkdir -p "$demo"/{host1/data,host2/data,host3/data,host3/mnt/transport,run,cache}
touch "$demo/$marker"

# One machine plays every host of the demo: each node gets its own root under $demo, and the
# catalog is one SQLite file that every cairn process on this machine shares.
cat >"$demo/cairn.toml" <<EOF
# cairn.toml for the demo archive (written by packaging/demo.sh).
# Every key and its default: packaging/cairn.toml and docs/CONFIGURATION.md.

[catalog]
url = "sqlite://$demo/catalog.db"

[host]
# This machine plays alpenhost1, the host of demo_storage1.
name = "alpenhost1"

[daemon]
socket = "$demo/run/cairnd.sock"
lock_file = "$demo/run/cairnd.lock"

[transfer]
listen = "127.0.0.1:7070"
token_file = "$demo/token"

[fs]
write_node = "demo_storage1"

[cache]
dir = "$demo/cache"
max_bytes = "1GiB"

[transport]
watch = ["$demo/host3/mnt"]

[import]
# 2025/02/21/23/1324.dat belongs to acquisition 2025/02/21.
acq_depth = 3
EOF
echo "Wrote $demo/cairn.toml"

export CAIRN_CONFIG=$demo/cairn.toml
unset CAIRN_CATALOG
echo "export CAIRN_CONFIG=$CAIRN_CONFIG"

# `cairn` below is the binary just built; each command is printed as the seed's console shows it.
cairn() { "$bin/cairn" "$@"; }
run() {
    printf '\n$'
    printf ' %q' "$@"
    printf '\n'
    "$@"
}

# ---- the catalog and the first node ---------------------------------------------------------

say "The catalog"
run cairn db init

say "The first storage node, on alpenhost1"
run cairn group create demo_storage1
run cairn node create demo_storage1 --group=demo_storage1 --auto-import \
    --root="$demo/host1/data" --host=alpenhost1
run cairn node activate demo_storage1
run cairn node init demo_storage1
run cairn node modify demo_storage1 --no-auto-import
run cairn node show demo_storage1

# ---- more nodes ----------------------------------------------------------------------------

say "The second node, on alpenhost2 (not active yet: its init request waits)"
run cairn node create demo_storage2 --create-group --root="$demo/host2/data" --host=alpenhost2
run cairn node init demo_storage2
run cairn node show demo_storage2 --all

say "The third node, an archive node on alpenhost3"
run cairn node create demo_storage3 --create-group --archive --root="$demo/host3/data" \
    --host=alpenhost3 --init --activate

say "A transport disk, plugged into alpenhost3"
run cairn group create --class=transport transport_group
run cairn node create transport1 --transport --group transport_group --host=alpenhost3 \
    --root="$demo/host3/mnt/transport" --init --activate

# ---- auto-actions --------------------------------------------------------------------------

say "Auto-actions: new files on demo_storage1 go to demo_storage2, and leave once archived"
run cairn group autosync demo_storage2 demo_storage1
run cairn group show demo_storage2 --actions
run cairn node autoclean demo_storage1 demo_storage3
run cairn node show demo_storage1 --actions

# ---- where things stand ---------------------------------------------------------------------

say "Where things stand"
run cairn node stats
run cairn request list
run cairn status

cat <<EOF

== What happens next

The catalog now holds the demo's storage graph: four nodes on three hosts, a transport group
and two auto-actions. The requests above stay pending: they are carried out by cairnd, the
per-host daemon (initialise nodes, import, copy, verify, clean), which comes in the next step,
followed by cairnfs, the mount that shows the whole archive as one tree. Until then, cairnd and
cairnfs start, check the catalog and say that they are not built yet.

To keep exploring with the CLI:

    export CAIRN_CONFIG=$CAIRN_CONFIG
    export PATH=$bin:\$PATH
    cairn --help
EOF
