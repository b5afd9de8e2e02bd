#!/usr/bin/env bash
# Runs a command while the kernel offers FUSE over io_uring to new mounts (the fuse module's
# enable_uring parameter, Linux 6.14 and later), then sets the parameter back as it was. With
# CAIRN_TEST_IO_URING set, the tests that check it assert that the mount took it.
#
#   tests/uring.sh cargo nextest run -p cairn-tests -E 'test(/^mount::/)'
#
# Needs root. Where the parameter is missing (an older kernel, or one built without
# CONFIG_FUSE_IO_URING) it says so and runs nothing, except in CI (CI set), where it fails.
set -euo pipefail
p=/sys/module/fuse/parameters/enable_uring
[ -e "$p" ] || modprobe fuse 2>/dev/null || true
if ! [ -w "$p" ]; then
    echo "tests/uring.sh: $p is missing or not writable (Linux 6.14 or later with" \
        "CONFIG_FUSE_IO_URING, and root)" >&2
    if [ -n "${CI:-}" ]; then
        exit 1
    fi
    echo "*** SKIPPING the io_uring pass: nothing was run. ***" >&2
    exit 0
fi
was=$(cat "$p")
trap 'echo "$was" > "$p"' EXIT
echo Y > "$p"
CAIRN_TEST_IO_URING=1 "$@"
