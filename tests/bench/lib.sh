# Helpers shared by the benchmark scripts; source it after setting W (the work dir, which holds
# catalog.db).

now() { date +%s.%N; }

# Two hosts on loopback, h1 and h2, sharing $W/catalog.db and the token in $W/token: writes
# the config of host H (1 or 2), listening on PORT, to $W/hH/cairn.toml, with EXTRA (more
# TOML sections) at the end.
host_config() {
    local h=$1 port=$2 extra=${3:-}
    cat >"$W/h$h/cairn.toml" <<TOML
[catalog]
url = "sqlite://$W/catalog.db"
[host]
name = "h$h"
[daemon]
interval = "10s"
socket = "$W/h$h/run/cairnd.sock"
lock_file = "$W/h$h/run/cairnd.lock"
[transfer]
listen = "127.0.0.1:$port"
token_file = "$W/token"
[import]
acq_depth = 3
$extra
TOML
}
# Seconds between two `now` readings.
secs() { python3 -c "print($2 - $1)"; }
mibs() { python3 -c "print(f'{1024 / $1:,.0f} MiB/s')"; }

# Waits until no copy or import request is pending or active, polling every 10 ms.
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
