#!/usr/bin/env bash
# Measures `crm-gateway import` of CONTACTS contacts (default 10,000) from treadsoft-sim, at
# TreadSoft's own rate limit (100 requests per 10 s, on both sides), on SQLite and PostgreSQL:
# wall time, records per second, listing calls, any 429, and the importer's peak RSS. Then a
# second run (nothing changed: every record comes back as a duplicate). BENCHMARKS.md has the
# figures.
#
#   bench/scripts/import-10k.sh [CONTACTS]
#
# Needs the release binaries (cargo build --release -p crm-gateway -p treadsoft-sim), GNU time
# (Debian's package time), and PostgreSQL at TEST_POSTGRES_URL for the second half.
set -euo pipefail
CONTACTS="${1:-10000}"
TARGET="${CARGO_TARGET_DIR:-target}/release"
PG_ADMIN="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
work="$(mktemp -d)"
sim_pid=""
cleanup() {
    [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$TARGET/treadsoft-sim" --bind 127.0.0.1:18090 --seed-contacts "$CONTACTS" 2> "$work/sim.log" &
sim_pid=$!
for _ in $(seq 1 600); do
    grep -q "seeded" "$work/sim.log" 2>/dev/null && break
    sleep 0.1
done
grep "seeded" "$work/sim.log"

export CRM_ENABLED=true CRM_API_URL=http://127.0.0.1:18090 CRM_API_KEY=ts_key_local CRM_API_SECRET=ts_secret_local
export CRM_RATE_LIMIT=100/10s RUST_LOG=warn

import() {
    local label="$1" url="$2"
    local start end
    start=$(date +%s.%N)
    DATABASE_URL="$url" /usr/bin/time -f "%M" -o "$work/rss" \
        "$TARGET/crm-gateway" import --type contact --json > "$work/out.json" 2> "$work/err.txt" \
        || { echo "$label: the import failed:"; cat "$work/err.txt"; return 1; }
    end=$(date +%s.%N)
    python3 - "$label" "$start" "$end" "$work/out.json" "$work/rss" <<'PY'
import json, sys
label, start, end, out, rss = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
s = json.load(open(out))["types"][0]
secs = end - start
print(f"{label}: {s['seen']} contacts in {secs:.2f} s ({s['seen'] / secs:,.0f}/s), {s['pages']} pages, "
      f"created {s['created']}, unchanged {s['unchanged']}, failed {s['failed']}, "
      f"peak RSS {int(open(rss).read().split()[-1]) / 1024:.0f} MiB")
PY
    if grep -q "429\|rate_limited" "$work/err.txt"; then echo "  (TreadSoft answered 429)"; else echo "  (no 429)"; fi
}

import "SQLite, first import" "sqlite://$work/import.db"
import "SQLite, run again   " "sqlite://$work/import.db"

db="cgw_bench_import_$$"
psql "$PG_ADMIN" -qAtc "CREATE DATABASE $db"
pg_url="${PG_ADMIN%/*}/$db"
import "PostgreSQL, first import" "$pg_url"
import "PostgreSQL, run again   " "$pg_url"
psql "$PG_ADMIN" -qAtc "DROP DATABASE $db WITH (FORCE)"
