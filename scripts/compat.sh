#!/usr/bin/env bash
# `make compat`: the pipeline test, the hostile-input scenario and the reduced SIGKILL scenario
# against each search store in turn (tests/infra/search-dist.sh starts it in the search store's
# place), then one line per store. Fails at the end when any store has a test that did not pass.
#   COMPAT_STORES   stores to run (default: all four)
#   COMPAT_PIPELINE test filter in tests/pipeline.rs (default: the 100k end-to-end test)
set -uo pipefail
cd "$(dirname "$0")/.."
INFRA=tests/infra/infra.sh
stores=(${COMPAT_STORES:-opensearch-2 opensearch-3 elasticsearch-8 elasticsearch-9})
pipeline_filter="${COMPAT_PIPELINE:-end_to_end_100k_records_exactly_once}"
logs=.infra/logs/compat
mkdir -p "$logs"
summary=()
failed=0

# run NAME STORE CARGO-ARGS...: one test run, its output in the log folder; prints ok or FAILED.
run() {
  local name="$1" store="$2"; shift 2
  if cargo test --locked --features failpoints "$@" >"$logs/$store-$name.log" 2>&1; then
    echo ok
  else
    echo FAILED
  fi
}

# Only the search store changes: Kafka and PostgreSQL stay up throughout.
bash "$INFRA" up postgres kafka >/dev/null || exit 1
eval "$(bash "$INFRA" env)"
nice cargo test --locked --features failpoints --no-run --test pipeline --test chaos --test lifecycle --test reindex >/dev/null 2>&1 \
  || { echo "compat: build failed" >&2; exit 1; }
# The default search store shares the port: stop it for the run, restart it after.
bash "$INFRA" down opensearch >/dev/null
for store in "${stores[@]}"; do
  export LP_TEST_SEARCH="$store"
  echo "compat: starting $store" >&2
  if ! bash "$INFRA" up opensearch >"$logs/$store-infra.log" 2>&1; then
    summary+=("compat: store=$store start=FAILED (log: $logs/$store-infra.log)")
    failed=1
    bash "$INFRA" down opensearch >/dev/null 2>&1
    continue
  fi
  version="$(bash tests/infra/search-dist.sh version)"
  product="${store%-*}"
  pipeline="$(run pipeline "$store" --test pipeline -- --exact "$pipeline_filter" --test-threads=1)"
  hostile="$(run hostile "$store" --test chaos -- --exact chaos_4_hostile_input --nocapture --test-threads=1)"
  sigkill="$(run sigkill "$store" --test chaos -- --exact chaos_1_sigkill_at_random_moments --nocapture --test-threads=1)"
  lifecycle="$(run lifecycle "$store" --test lifecycle -- --nocapture --test-threads=1)"
  reindex="$(run reindex "$store" --test reindex -- --nocapture --test-threads=1)"
  line="compat: store=$product-$version pipeline=$pipeline hostile=$hostile sigkill=$sigkill lifecycle=$lifecycle reindex=$reindex"
  echo "$line" >&2
  summary+=("$line")
  [[ "$pipeline$hostile$sigkill$lifecycle$reindex" == okokokokok ]] || failed=1
  bash "$INFRA" reset opensearch >/dev/null 2>&1
done
unset LP_TEST_SEARCH
bash "$INFRA" up opensearch >/dev/null 2>&1 || true
printf '%s\n' "${summary[@]}"
((failed == 0)) || { echo "compat: FAILED (logs: $logs)"; exit 1; }
