#!/usr/bin/env bash
# Builds the Debian package cairn_VERSION-1_amd64.deb: cairn, cairnd and cairnfs, their man
# pages and shell completions (generated from their clap definitions), the systemd units, the
# example /etc/cairn/cairn.toml, the cairn user and directories, the monitoring examples.
# Package metadata: [package.metadata.deb] in tools/Cargo.toml. Needs cargo-deb
# (`cargo install cargo-deb`; packaging/install-deps.sh installs it).
#
#   packaging/build-deb.sh                  # optimised (release profile): what a site installs
#   packaging/build-deb.sh --profile dev --no-build
#                                           # the binaries the tests just built (target/debug):
#                                           # what CI installs to check the package, at no
#                                           # extra compile time
#
# Prints the path of the .deb on its last line.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
profile=release
build=yes
while (($#)); do
    case $1 in
    --profile)
        profile=${2:?--profile needs a name}
        shift 2
        ;;
    --no-build)
        build=no
        shift
        ;;
    *)
        echo "usage: $0 [--profile release|dev|NAME] [--no-build]" >&2
        exit 2
        ;;
    esac
done
# Cargo puts the dev profile in target/debug, every other in target/NAME.
case $profile in
dev | test) dir=debug ;;
*) dir=$profile ;;
esac
target=${CARGO_TARGET_DIR:-$repo/target}
[[ $target == /* ]] || target=$repo/$target
cd "$repo"
command -v cargo-deb >/dev/null || {
    echo "build-deb.sh: cargo-deb is missing: cargo install --locked cargo-deb" >&2
    exit 1
}

if [[ $build == yes ]]; then
    cargo build --profile "$profile" -p cairn-tools -p cairn-syncd -p cairn-fs --bins >&2
fi
for b in cairn cairnd cairnfs; do
    [[ -x $target/$dir/$b ]] || {
        echo "build-deb.sh: $target/$dir/$b is not built" >&2
        exit 1
    }
done
# Man pages and completions, where the package's assets expect them (target/release/ in
# tools/Cargo.toml means the profile's directory).
docs=$target/$dir/cairn-docs
rm -rf "$docs"
"$target/$dir/cairn" generate-docs "$docs"
gzip -9n "$docs"/man/*.1
out=$target/debian
mkdir -p "$out"
# A package of the test build is only installed to be checked: compress it quickly.
fast=()
[[ $profile == release ]] || fast=(--fast)
cargo deb -p cairn-tools --no-build --profile "$profile" "${fast[@]}" --output "$out" >&2
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
deb=$out/cairn_${version}-1_$(dpkg --print-architecture).deb
[[ -f $deb ]] || {
    echo "build-deb.sh: cargo deb did not write $deb" >&2
    exit 1
}
echo "$deb"
