#!/usr/bin/env bash
# `log-processor audit` at scale: N records (default 1,000,000, 4 partitions, 1% malformed) are
# produced and consumed by the release binary, then divergence is made by hand (1,000 rows of
# partition 2 and 500 documents of partition 1 deleted), and the audit runs three times: to
# the end (wall time, peak RSS from /usr/bin/time), SIGKILLed half way, and again to the end,
# whose report must equal the first. Then `--repair` and a last audit that must be clean.
# Writes bench/results/audit.json (figures and the commit they describe).
# Usage: scripts/measure-audit.sh [N=1000000]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000000}"
bash tests/infra/infra.sh up >/dev/null
eval "$(bash tests/infra/infra.sh env)"
cargo build --locked --release --quiet
bin="$(pwd)/${CARGO_TARGET_DIR:-target}/release/log-processor"
id="audit_$(date +%Y%m%d%H%M%S)"
index="${id//_/-}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export LP_KAFKA_BROKERS="$KAFKA_BROKERS" LP_DATABASE_URL="$DATABASE_URL" LP_ELASTICSEARCH_URL="$ELASTICSEARCH_URL"
export LP_TOPICS="$id" LP_GROUP_ID="$id" LP_PG_SCHEMA="$id" LP_ES_INDEX="$index-%Y.%m.%d" LP_HTTP_ADDR=127.0.0.1:0
export LP_LOG=warn,librdkafka=off
"$bin" loadgen --topic "$id" --count "$n" --partitions 4 --malformed-ratio 0.01 2>/dev/null
"$bin" run 2>"$work/daemon.log" &
pid=$!
while :; do
  sleep 2
  done_count=$(psql "$DATABASE_URL" -tAqc "SELECT (SELECT count(*) FROM $id.log_records) + (SELECT count(*) FROM $id.dead_letters)" 2>/dev/null || echo 0)
  printf '\raudit: consumed %s/%s' "$done_count" "$n"
  ((done_count >= n)) && break
done
sleep 3
kill -TERM "$pid"; wait "$pid" || true
echo

# The faults, each checked to have happened.
deleted_rows=$(psql "$DATABASE_URL" -tAqc "WITH d AS (DELETE FROM $id.log_records WHERE kafka_partition = 2 AND kafka_offset >= 100000 AND kafka_offset < 101000 RETURNING 1) SELECT count(*) FROM d")
deleted_docs=$(python3 - "$ELASTICSEARCH_URL" "$index" "$id" <<'PY'
import json, sys, urllib.request
url, index, topic = sys.argv[1:]
def call(method, path, body=None, ctype="application/json"):
    req = urllib.request.Request(url + path, data=body, method=method, headers={"content-type": ctype})
    return json.load(urllib.request.urlopen(req))
ids = [f"{topic}-1-{o}" for o in range(200000, 200500)]
hits = call("POST", f"/{index}-*/_search", json.dumps({"size": 1000, "_source": False, "query": {"ids": {"values": ids}}}).encode())
lines = "".join(json.dumps({"delete": {"_index": h["_index"], "_id": h["_id"]}}) + "\n" for h in hits["hits"]["hits"])
answer = call("POST", "/_bulk?refresh=true", lines.encode(), "application/x-ndjson")
print(sum(1 for i in answer["items"] if i["delete"].get("result") == "deleted"))
PY
)
echo "audit: made by hand: rows deleted=$deleted_rows documents deleted=$deleted_docs"

/usr/bin/time -v "$bin" audit --json >"$work/first.json" 2>"$work/first.time" || [[ $? == 3 ]]
"$bin" audit --json >/dev/null 2>&1 &
kpid=$!
first_s=$(python3 -c "import json; print(json.load(open('$work/first.json'))['seconds'])")
sleep "$(python3 -c "print($first_s / 2)")"
kill -KILL "$kpid"; wait "$kpid" || true
"$bin" audit --json >"$work/again.json" 2>/dev/null || [[ $? == 3 ]]
/usr/bin/time -v "$bin" audit --repair --json >"$work/repair.json" 2>"$work/repair.time"
set +e
"$bin" audit >"$work/last.txt" 2>&1
last=$?
set -e
cat "$work/last.txt"

mkdir -p bench/results
python3 - "$work" "$n" "$deleted_rows" "$deleted_docs" "$last" "$(git rev-parse --short HEAD)" <<'PY'
import json, re, sys
work, n, rows, docs, last, commit = sys.argv[1:]
def rss_and_wall(path):
    text = open(path).read()
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return rss // 1024
first = json.load(open(f"{work}/first.json"))
again = json.load(open(f"{work}/again.json"))
repair = json.load(open(f"{work}/repair.json"))
offsets = sum(p["offsets_checked"] for p in first["partitions"])
found = {f"{p['partition']}:{k}": v["count"] for p in first["partitions"] for k, v in p["found"].items()}
strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}
out = {
    "commit": commit,
    "records": int(n),
    "made_by_hand": {"rows_deleted": int(rows), "documents_deleted": int(docs)},
    "audit": {
        "offsets": offsets,
        "seconds": round(first["seconds"], 1),
        "offsets_per_s": int(offsets / first["seconds"]),
        "peak_rss_mib": rss_and_wall(f"{work}/first.time"),
        "found": found,
    },
    "same_report_after_sigkill_half_way": strip(first) == strip(again),
    "repair": {
        "seconds": round(repair["seconds"], 1),
        "peak_rss_mib": rss_and_wall(f"{work}/repair.time"),
        "repaired": repair["repair"]["repaired"],
        "unrepaired": repair["repair"]["unrepaired"],
    },
    "clean_after_repair": last == "0",
}
json.dump(out, open("bench/results/audit.json", "w"), indent=2)
print(json.dumps(out, indent=2))
ok = out["same_report_after_sigkill_half_way"] and out["clean_after_repair"]
sys.exit(0 if ok else 1)
PY
PGOPTIONS="-c client_min_messages=warning" psql "$DATABASE_URL" -qc "DROP SCHEMA $id CASCADE" >/dev/null
curl -s -X DELETE "$ELASTICSEARCH_URL/$index-*" >/dev/null
