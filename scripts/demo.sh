#!/usr/bin/env bash
# The main job end to end: services up, a 6-partition topic with 200,000 generated records
# (about 1% malformed), the daemon processing them with a progress line, SIGTERM once the lag
# is zero, and one summary line with counts read back from PostgreSQL and OpenSearch.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT="${DEMO_RECORDS:-200000}"

bash tests/infra/infra.sh up >/dev/null
eval "$(bash tests/infra/infra.sh env)"
cargo build --locked --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/log-processor"   # where cargo put it

run_id="$(date +%Y%m%d%H%M%S)"
topic="demo_logs_${run_id}"
log=".infra/logs/demo-${run_id}.log"
export LP_KAFKA_BROKERS="$KAFKA_BROKERS" LP_DATABASE_URL="$DATABASE_URL" LP_ELASTICSEARCH_URL="$ELASTICSEARCH_URL"
export LP_TOPICS="$topic" LP_GROUP_ID="demo" LP_PG_SCHEMA="demo" LP_ES_INDEX="demo-logs-%Y.%m.%d" LP_HTTP_ADDR="127.0.0.1:9898"

echo "demo: producing $COUNT records to $topic (6 partitions, 1% malformed)"
"$bin" loadgen --topic "$topic" --count "$COUNT" --partitions 6 --malformed-ratio 0.01

pg() { psql "$DATABASE_URL" -tAqc "$1"; }
es_count() {
  curl -s "$ELASTICSEARCH_URL/demo-logs-*/_count" -H 'Content-Type: application/json' \
    -d "{\"query\":{\"term\":{\"kafka.topic\":\"$topic\"}}}" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("count", 0))'
}

"$bin" run 2>"$log" &
pid=$!
trap 'kill -KILL $pid 2>/dev/null || true' EXIT
echo "demo: daemon pid $pid, log $log"

start=$(date +%s.%N)
last_done=0
last_t=$start
done_count=0
until ((done_count >= COUNT)); do
  sleep 1
  kill -0 "$pid" 2>/dev/null || { echo; echo "demo: daemon died; last log lines:"; tail -n 20 "$log"; exit 1; }
  done_count=$(pg "SELECT (SELECT count(*) FROM demo.log_records WHERE topic = '$topic') + (SELECT count(*) FROM demo.dead_letters WHERE topic = '$topic')" 2>/dev/null || echo 0)
  now=$(date +%s.%N)
  rate=$(python3 -c "print(int(($done_count - $last_done) / max($now - $last_t, 0.001)))")
  last_done=$done_count
  last_t=$now
  printf '\rdemo: progress stored+dead_lettered=%s/%s rate=%s records/s lag=%s   ' "$done_count" "$COUNT" "$rate" "$((COUNT - done_count))"
done
elapsed=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
echo
echo "demo: lag is zero after ${elapsed}s ($(python3 -c "print(int($COUNT / $elapsed))") records/s end to end); sending SIGTERM"

t0=$(date +%s%N)
kill -TERM "$pid"
set +e
wait "$pid"
code=$?
set -e
trap - EXIT
shutdown_ms=$((($(date +%s%N) - t0) / 1000000))
grep -E "shutdown: " "$log" | sed 's/^/  /' || true

curl -s -X POST "$ELASTICSEARCH_URL/demo-logs-*/_refresh" >/dev/null
stored=$(pg "SELECT count(*) FROM demo.log_records WHERE topic = '$topic'")
dead=$(pg "SELECT count(*) FROM demo.dead_letters WHERE topic = '$topic'")
indexed=$(es_count)
echo "demo: produced=$COUNT stored=$stored indexed=$indexed dead_lettered=$dead shutdown_ms=$shutdown_ms exit=$code"
[[ "$code" == 0 && "$stored" == "$indexed" && $((stored + dead)) == "$COUNT" ]]
