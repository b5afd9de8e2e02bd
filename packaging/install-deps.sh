#!/usr/bin/env bash
# Installs what building and testing cairn needs on a Debian machine (run as root).
# The Rust toolchain and cargo-nextest are expected to be there already.
set -euo pipefail

# util-linux's script(1) gives the CLI tests a terminal to answer `Continue? [y/N]` on.
# rsync, curl: baselines of the transfer benchmarks (tests/bench/); openssl: the TLS test makes
# its certificate authority with it. fuse3 (fusermount3) and attr (getfattr, setfattr): the cairnfs
# mount and its tests; python3: the mount test that reads a remote file with seek.
# zip, unzip: the mount tests of real programs (tests/tests/programs.rs).
packages=(bsdutils rsync curl openssl fuse3 attr python3 zip unzip)

# postgresql: the PostgreSQL catalog tests run a throwaway server of their own (tests/pg.sh).
packages+=(postgresql)
# The package: dpkg-dev (dpkg-shlibdeps, which cargo-deb asks for the library dependencies).
# Its check (packaging/deb-check.sh): man-db (man -w), systemd (systemd-analyze verify,
# systemd-sysusers and systemd-tmpfiles for the package's user and directories), prometheus
# (promtool check rules on the example alert rules).
packages+=(dpkg-dev man-db systemd prometheus)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# numpy, h5py and astropy (from PyPI) in a virtual environment: the mount tests of real programs
# run them (CAIRN_TEST_PYTHON overrides where the tests look).
venv=/opt/cairn-venv
if ! "$venv/bin/python3" -c 'import numpy, h5py, astropy.io.fits' >/dev/null 2>&1; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check numpy h5py astropy
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
# cargo-deb builds the Debian package (packaging/build-deb.sh); pinned, so that CI's package of
# the test build (a dev profile, which cargo-deb warns about) keeps working.
if ! cargo deb --version 2>/dev/null | grep -qx 'cargo-deb 3.8.0'; then
    cargo install --locked cargo-deb --version 3.8.0
fi
