#!/usr/bin/env bash
# Renders docs/dashboard.png from a real run: tests/observability.rs runs the daemon against the
# test services (load, a write-blocked index that holds every partition, release) and keeps each
# 1 s scrape of /metrics; `promql-names eval` loads them into a TSDB and evaluates every panel's
# expression with Prometheus' query engine; scripts/plot-dashboard.py draws the panels.
# Needs the services (`make services-up`, or the same port variables as the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
work=.cache/dashboard-run
rm -rf "$work" && mkdir -p "$work"
tools="$(bash scripts/go-tools.sh)"
eval "$(bash tests/infra/infra.sh env)"
LP_OBS_SCRAPES="$PWD/$work/scrapes" cargo test --locked --features failpoints \
  --test observability -- --test-threads=1
echo "[dashboard] $(ls "$work/scrapes" | wc -l) scrapes"
"$tools/promql-names" eval "$work/scrapes" deploy/grafana/log-processor.json "$work/panels.json"
if [[ ! -x .cache/plot-venv/bin/python ]]; then
  python3 -m venv .cache/plot-venv
  .cache/plot-venv/bin/pip install --quiet 'matplotlib==3.10.*'
fi
.cache/plot-venv/bin/python scripts/plot-dashboard.py "$work/panels.json" docs/dashboard.png
echo "[dashboard] wrote docs/dashboard.png"
