#!/usr/bin/env bash
# A tiny run of the whole benchmark (20,000 records, one run of everything) to prove the
# harness works. Results: bench/results/latest-smoke.{json,md}, bench/work/batch-size-smoke.png.
set -euo pipefail
exec bash "$(dirname "$0")/run.sh" --smoke "$@"
