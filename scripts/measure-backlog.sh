#!/usr/bin/env bash
# Peak RSS of the daemon while a backlog drains: N records (default 1,000,000) are produced
# first, then the release binary consumes them; VmHWM is read from /proc at the end.
# Usage: scripts/measure-backlog.sh [N=1000000]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000000}"
bash tests/infra/infra.sh up >/dev/null
eval "$(bash tests/infra/infra.sh env)"
cargo build --locked --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/log-processor"   # where cargo put it
id="backlog_$(date +%Y%m%d%H%M%S)"
export LP_KAFKA_BROKERS="$KAFKA_BROKERS" LP_DATABASE_URL="$DATABASE_URL" LP_ELASTICSEARCH_URL="$ELASTICSEARCH_URL"
export LP_TOPICS="$id" LP_GROUP_ID="$id" LP_PG_SCHEMA="$id" LP_ES_INDEX="${id//_/-}-%Y.%m.%d" LP_HTTP_ADDR=127.0.0.1:0
"$bin" loadgen --topic "$id" --count "$n" --partitions 6 --malformed-ratio 0.01 2>/dev/null
start=$(date +%s.%N)
"$bin" run 2>".infra/logs/$id.log" &
pid=$!
peak=0
while :; do
  sleep 1
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  ((rss > peak)) && peak=$rss
  done_count=$(psql "$DATABASE_URL" -tAqc "SELECT (SELECT count(*) FROM $id.log_records) + (SELECT count(*) FROM $id.dead_letters)" 2>/dev/null || echo 0)
  printf '\rbacklog: %s/%s done, rss=%s KiB' "$done_count" "$n" "$rss"
  ((done_count >= n)) && break
done
secs=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
kill -TERM "$pid"; wait "$pid" || true
echo
echo "backlog: records=$n seconds=$secs records_per_s=$(python3 -c "print(int($n / $secs))") peak_rss_kib=$hwm peak_rss_mib=$((hwm / 1024)) sampled_max_rss_kib=$peak"
PGOPTIONS="-c client_min_messages=warning" psql "$DATABASE_URL" -qc "DROP SCHEMA $id CASCADE" >/dev/null
curl -s -X DELETE "$ELASTICSEARCH_URL/${id//_/-}-*" >/dev/null
