#!/usr/bin/env bash
# Measures `crm-gateway prune` on a million old rows each of crm_sync_logs and crm_inbox (plus
# as many recent ones that must stay), on SQLite and PostgreSQL: the pace, and how long each
# batch's transaction took (the longest the write lock was held). BENCHMARKS.md has the figures.
#
#   bench/scripts/prune-million.sh [ROWS]        (ROWS defaults to 1000000)
#
# Needs the release binary (cargo build --release --bin crm-gateway), sqlite3, and PostgreSQL at
# TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test) for the second half.
set -euo pipefail
ROWS="${1:-1000000}"
BIN="${CARGO_TARGET_DIR:-target}/release/crm-gateway"
PG_ADMIN="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Every batch's duration from the debug log, summarised.
summarise() {
    python3 -c '
import re, sys
took = []
for line in sys.stdin:
    m = re.search(r"deleted=(\d+) took=([\d.]+)(µs|ms|s)", line)
    if m and int(m.group(1)) > 0:
        v = float(m.group(2)) * {"µs": 0.001, "ms": 1, "s": 1000}[m.group(3)]
        took.append(v)
took.sort()
if took:
    p = lambda q: took[min(len(took) - 1, int(q * len(took)))]
    print(f"batches {len(took)}: median {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, max {took[-1]:.1f} ms")
'
}

run_prune() {
    local url="$1"
    local start end
    start=$(date +%s.%N)
    DATABASE_URL="$url" RUST_LOG="warn,crm_gateway::ops::retention=debug" LOG_FORMAT=human \
        "$BIN" prune --json > "$work/out.json" 2> "$work/log.txt"
    end=$(date +%s.%N)
    python3 -c "import json; d=json.load(open('$work/out.json'))['removed']; t=$end-$start; n=sum(d.values()); print(f'removed {n} rows in {t:.1f} s: {n/t:,.0f} rows/s; {d}')"
    summarise < "$work/log.txt"
}

echo "== SQLite ($ROWS old + $ROWS recent rows per table)"
db="$work/gw.db"
DATABASE_URL="sqlite://$db" "$BIN" migrate 2>/dev/null
sqlite3 "$db" <<SQL
PRAGMA journal_mode=WAL;
WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 2 * $ROWS)
INSERT INTO crm_sync_logs (entity_type, entity_id, crm_id, action, status, request_data, response_data, error_message, created_at)
SELECT 'contact', 'user_' || x, 'crm_' || x, 'update', 'success', '{"phone":"+44 20 7946 0000"}', '{"id":"crm"}', NULL,
       CASE WHEN x <= $ROWS THEN '2026-01-01T00:00:00.000000000+00:00' ELSE strftime('%Y-%m-%dT%H:%M:%S.000000000+00:00', 'now') END
FROM n;
WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 2 * $ROWS)
INSERT INTO crm_inbox (event_id, delivery_id, event_type, record_type, crm_id, received_at, payload, outcome, reason, waiting_for, attempts, processed_at)
SELECT 'evt_' || x, 'd_' || x, 'contact.updated', 'contact', 'crm_' || x,
       CASE WHEN x <= $ROWS THEN '2026-01-01T00:00:00.000000000+00:00' ELSE strftime('%Y-%m-%dT%H:%M:%S.000000000+00:00', 'now') END,
       '{"id":"evt","type":"contact.updated"}', 'applied', NULL, NULL, 1, '2026-01-01T00:00:00.000000000+00:00'
FROM n;
SQL
ls -la "$db" | awk '{print "database file: " $5 / 1048576 " MiB"}'
run_prune "sqlite://$db"
echo "left: $(sqlite3 "$db" 'select count(*) from crm_sync_logs') logs, $(sqlite3 "$db" 'select count(*) from crm_inbox') inbox rows"

echo "== PostgreSQL"
name="cgw_prune_$(date +%s)"
psql "$PG_ADMIN" -qc "CREATE DATABASE $name"
pg="${PG_ADMIN%/*}/$name"
DATABASE_URL="$pg" "$BIN" migrate 2>/dev/null
psql "$pg" -q <<SQL
INSERT INTO crm_sync_logs (entity_type, entity_id, crm_id, action, status, request_data, response_data, error_message, created_at)
SELECT 'contact', 'user_' || x, 'crm_' || x, 'update', 'success', '{"phone":"+44 20 7946 0000"}', '{"id":"crm"}', NULL,
       CASE WHEN x <= $ROWS THEN timestamptz '2026-01-01' ELSE now() END
FROM generate_series(1, 2 * $ROWS) AS x;
INSERT INTO crm_inbox (event_id, delivery_id, event_type, record_type, crm_id, received_at, payload, outcome, reason, waiting_for, attempts, processed_at)
SELECT 'evt_' || x, 'd_' || x, 'contact.updated', 'contact', 'crm_' || x,
       CASE WHEN x <= $ROWS THEN timestamptz '2026-01-01' ELSE now() END,
       '{"id":"evt","type":"contact.updated"}', 'applied', NULL, NULL, 1, timestamptz '2026-01-01'
FROM generate_series(1, 2 * $ROWS) AS x;
VACUUM ANALYZE;
SQL
run_prune "$pg"
echo "left: $(psql "$pg" -Atc 'select count(*) from crm_sync_logs') logs, $(psql "$pg" -Atc 'select count(*) from crm_inbox') inbox rows"
psql "$PG_ADMIN" -qc "DROP DATABASE $name"
