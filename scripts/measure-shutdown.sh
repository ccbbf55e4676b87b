#!/usr/bin/env bash
# SIGTERM-to-exit time under steady load, over N runs of the real binary against the real
# services (the shutdown test of tests/shutdown.rs), and the deadline-exceeded exit times.
# Usage: scripts/measure-shutdown.sh [N=20]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-20}"
bash tests/infra/infra.sh up >/dev/null
eval "$(bash tests/infra/infra.sh env)"
cargo build --locked --tests --features failpoints --quiet
steady=()
slow=()
for ((i = 1; i <= n; i++)); do
  out=$(cargo test --locked --features failpoints --quiet --test shutdown -- --nocapture --test-threads=1 \
    sigterm_under_steady_load sigterm_with_a_slow_store 2>&1) || { echo "$out" | tail -40; exit 1; }
  steady+=("$(sed -n 's/.*SIGTERM to exit under steady load: \([0-9]*\) ms.*/\1/p' <<<"$out")")
  slow+=("$(sed -n 's/.*deadline-exceeded exit after \([0-9]*\) ms.*/\1/p' <<<"$out")")
  echo "run $i: steady=${steady[-1]} ms, deadline-exceeded=${slow[-1]} ms (deadline 4000 ms)"
done
stats() { sort -n | awk '{a[NR]=$1} END {m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "median=%s ms max=%s ms min=%s ms runs=%d\n", m, a[NR], a[1], NR}'; }
echo "SIGTERM to exit under steady load: $(printf '%s\n' "${steady[@]}" | stats)"
echo "deadline-exceeded exit (deadline 4000 ms): $(printf '%s\n' "${slow[@]}" | stats)"
