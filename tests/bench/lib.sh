# Helpers shared by the benchmark scripts; source it after setting W (the work dir, which holds
# catalog.db).

now() { date +%s.%N; }
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
