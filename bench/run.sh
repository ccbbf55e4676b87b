#!/usr/bin/env bash
# The benchmark: services up, release log-processor and the peer built, then bench/bench.py
# (1,000,000 records, 3 alternating runs of the tuned configurations; see its docstring). Extra
# arguments go to bench.py, e.g. `bash bench/run.sh --records 100000 --runs 1 --label reduced`.
# Results: bench/results/latest.{json,md}, docs/batch-size.png and the README's generated part
# (full runs); other labels write bench/results/latest-LABEL.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/infra/infra.sh up >/dev/null
eval "$(bash tests/infra/infra.sh env)"
export DATABASE_URL KAFKA_BROKERS ELASTICSEARCH_URL
nice -n 10 cargo build --locked --release --quiet
nice -n 10 cargo build --locked --release --quiet --example ceiling_loader
bash bench/build-peer.sh
command -v kcat >/dev/null || { echo "bench: kcat is needed (apt-get install -y kcat)" >&2; exit 1; }
if [[ ! -x bench/work/venv/bin/python ]] || ! bench/work/venv/bin/python -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv bench/work/venv
  bench/work/venv/bin/pip install -q matplotlib
fi
exec bench/work/venv/bin/python bench/bench.py "$@"
