#!/usr/bin/env bash
# Checks the Debian package as a site would use it, on this machine, as root: builds it
# (packaging/build-deb.sh, by default from the binaries the tests built), installs it with
# dpkg -i, and checks that
#   - cairn, cairnd and cairnfs run (--version), their man pages are found (man -w) and their
#     shell completions are installed, the same as `cairn completions SHELL` prints;
#   - the cairn user and /var/lib/cairn, /var/cache/cairn, /run/cairn exist with their owners,
#     and /etc/cairn/cairn.toml is a conffile that a reinstall leaves as the site edited it;
#   - systemd-analyze verify passes on the units;
#   - the installed cairnd initialises a node and imports a file into a catalog in
#     /var/lib/cairn, and `mount -t fuse.cairnfs` (and an fstab line) mounts the archive
#     showing it, and unmounts;
#   - dpkg --purge removes what the package made and leaves the node roots and the catalog
#     untouched;
#   - the example alert rules pass `promtool check rules` and the dashboard is valid JSON.
# Everything it made is removed at the end, however it ends.
#
#   packaging/deb-check.sh                       # the dev binaries in target/debug
#   CAIRN_DEB=path/to/cairn_X_amd64.deb packaging/deb-check.sh
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '== deb-check [%3d s] %s\n' "$SECONDS" "$*"; }
die() {
    printf 'deb-check: FAILED: %s\n' "$*" >&2
    exit 1
}
[[ $(id -u) == 0 ]] || die "run as root: it installs and purges the cairn package"
for tool in dpkg man systemd-analyze mount umount; do
    command -v "$tool" >/dev/null || die "$tool is missing (packaging/install-deps.sh)"
done
# Never touch a real installation.
if dpkg -s cairn >/dev/null 2>&1; then
    die "the cairn package is installed here already; this check installs and purges it"
fi
if [[ -e /var/lib/cairn || -e /etc/cairn ]]; then
    die "/var/lib/cairn or /etc/cairn exists: a real cairn site? This check installs and purges cairn"
fi

t0=$SECONDS
deb=${CAIRN_DEB:-}
if [[ -z $deb ]]; then
    say "building the package from the test build (build-deb.sh --profile dev --no-build)"
    deb=$(bash "$repo/packaging/build-deb.sh" --profile dev --no-build | tail -1)
fi
[[ -f $deb ]] || die "no package at $deb"

work=$(mktemp -d /tmp/cairn-deb-check.XXXXXX)
mnt=$work/mnt
cairnd_pid=
cleanup() {
    set +e
    [[ -n $cairnd_pid ]] && kill "$cairnd_pid" 2>/dev/null && wait "$cairnd_pid" 2>/dev/null
    mountpoint -q "$mnt" 2>/dev/null && umount -l "$mnt"
    dpkg -s cairn >/dev/null 2>&1 && dpkg --purge cairn >/dev/null 2>&1
    rm -rf "$work" /var/lib/cairn
}
trap cleanup EXIT

say "dpkg -i $(basename "$deb")"
dpkg -i "$deb" >/dev/null || die "dpkg -i failed"

say "programs, man pages, completions"
version=$(dpkg-query -W -f='${Version}' cairn)
[[ $(cairn --version) == "cairn ${version%-*}" ]] || die "cairn --version: $(cairn --version)"
[[ $(cairnd --version) == "cairnd ${version%-*}" ]] || die "cairnd --version: $(cairnd --version)"
# Outputs are read whole before they are searched: `grep -q` leaving early would break the
# writer's pipe, which pipefail counts as a failure.
help=$(cairnfs --help) && grep -q MOUNTPOINT <<<"$help" || die "cairnfs --help: $help"
man -w cairn cairnd cairnfs cairn-node-sync >/dev/null || die "man -w cannot find the man pages"
page=$(man -P cat cairnfs 2>/dev/null) && grep -q "fuse.cairnfs" <<<"$page" ||
    die "man cairnfs does not render"
for shell in bash zsh fish; do
    case $shell in
    bash) dir=/usr/share/bash-completion/completions prefix= suffix= ;;
    zsh) dir=/usr/share/zsh/vendor-completions prefix=_ suffix= ;;
    fish) dir=/usr/share/fish/vendor_completions.d prefix= suffix=.fish ;;
    esac
    for p in cairn cairnd cairnfs; do
        f=$dir/$prefix$p$suffix
        [[ -s $f ]] || die "no $shell completions for $p at $f"
        cairn completions "$shell" --program "$p" | cmp -s - "$f" ||
            die "$f differs from cairn completions $shell --program $p"
    done
done
bash -c 'source /usr/share/bash-completion/completions/cairn && complete -p cairn' >/dev/null ||
    die "bash does not load the cairn completions"

say "user, directories, conffile"
getent passwd cairn >/dev/null || die "no cairn user"
for d in /var/lib/cairn:750 /var/cache/cairn:750 /run/cairn:755; do
    got=$(stat -c '%U:%G %a' "${d%%:*}") || die "${d%%:*} is missing"
    [[ $got == "cairn:cairn ${d##*:}" ]] || die "${d%%:*} is $got, not cairn:cairn ${d##*:}"
done
conffiles=$(dpkg-query -W -f='${Conffiles}' cairn)
grep -q ' /etc/cairn/cairn.toml ' <<<"$conffiles" ||
    die "/etc/cairn/cairn.toml is not a conffile"
echo '# edited by this site' >>/etc/cairn/cairn.toml
dpkg -i "$deb" >/dev/null || die "reinstalling failed"
grep -q '^# edited by this site$' /etc/cairn/cairn.toml || die "a reinstall overwrote the config"

say "systemd-analyze verify"
systemd-analyze verify /usr/lib/systemd/system/cairnd.service \
    /usr/lib/systemd/system/cairnfs.service || die "the units do not verify"

say "cairnd imports into /var/lib/cairn; mount -t fuse.cairnfs shows it"
node=$work/node
mkdir -p "$node" "$mnt"
cat >"$work/cairn.toml" <<CONF
# A throwaway site: the package's defaults (catalog in /var/lib/cairn, socket in /run/cairn,
# cache in /var/cache/cairn), serving nothing over the network.
[host]
name = "debcheck"
[daemon]
interval = "1s"
[transfer]
listen = ""
CONF
export CAIRN_CONFIG=$work/cairn.toml
cairn db init >/dev/null
cairn node create field --create-group --root="$node" --host=debcheck --init --activate >/dev/null
echo "bytes of the archive" >"$node/run1.bin"
cairnd >"$work/cairnd.log" 2>&1 &
cairnd_pid=$!
wait_for() {
    local what=$1
    shift
    for _ in $(seq 100); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "timed out waiting for $what; cairnd's log: $(cat "$work/cairnd.log")"
}
wait_for "node init" test -e "$node/.cairn/node.toml"
cairn node scan field --register-new >/dev/null
imported() { [[ $(cairn file list --path run1.bin) == run1.bin ]]; }
wait_for "the import" imported
mount -t fuse.cairnfs cairn "$mnt" -o "config=$work/cairn.toml" || die "mount -t fuse.cairnfs failed"
mountpoint -q "$mnt" || die "nothing mounted at $mnt"
[[ $(cat "$mnt/run1.bin") == "bytes of the archive" ]] || die "the mount does not show run1.bin"
umount "$mnt" || die "umount failed"
wait_for "the mount to go" bash -c "! mountpoint -q '$mnt'"
echo "cairn $mnt fuse.cairnfs config=$work/cairn.toml,nofail 0 0" >"$work/fstab"
mount --fstab "$work/fstab" "$mnt" || die "mounting from an fstab line failed"
[[ -e $mnt/run1.bin ]] || die "the fstab mount does not show run1.bin"
umount "$mnt" || die "umount failed"
# cairnfs closes the catalog as it exits, a moment after the unmount.
cairnfs_gone() { ! pgrep -f "[c]airnfs cairn $mnt" >/dev/null; }
wait_for "cairnfs to exit" cairnfs_gone
kill "$cairnd_pid"
wait "$cairnd_pid" || die "cairnd did not stop cleanly: $(cat "$work/cairnd.log")"
cairnd_pid=
unset CAIRN_CONFIG

say "dpkg --purge keeps the node roots and the catalog"
before=$(cd "$node" && find . -type f -exec md5sum {} + | sort)
catalog_md5=$(md5sum </var/lib/cairn/catalog.db)
dpkg --purge cairn >/dev/null 2>"$work/purge.err" || die "dpkg --purge failed: $(cat "$work/purge.err")"
grep -q "kept /var/lib/cairn" "$work/purge.err" || die "purge did not say it kept /var/lib/cairn"
[[ $(cd "$node" && find . -type f -exec md5sum {} + | sort) == "$before" ]] ||
    die "purge changed the node root"
[[ $(md5sum </var/lib/cairn/catalog.db) == "$catalog_md5" ]] || die "purge changed the catalog"
for gone in /etc/cairn /var/cache/cairn /run/cairn /usr/bin/cairn /usr/bin/cairnd \
    /usr/bin/cairnfs /usr/lib/systemd/system/cairnd.service /usr/share/man/man1/cairn.1.gz; do
    [[ ! -e $gone ]] || die "purge left $gone"
done

say "monitoring examples"
python3 -m json.tool "$repo/packaging/monitoring/cairn-dashboard.json" >/dev/null ||
    die "the dashboard is not valid JSON"
if command -v promtool >/dev/null; then
    promtool check rules "$repo/packaging/monitoring/cairn-alerts.yml" >/dev/null ||
        die "promtool check rules failed"
else
    [[ -z ${CI:-} ]] || die "promtool is missing (Debian's prometheus package)"
    say "SKIPPED promtool check rules: promtool is missing (apt-get install prometheus)"
fi

say "all checks passed in $((SECONDS - t0)) s"
