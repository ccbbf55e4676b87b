#!/usr/bin/env bash
# Builds the benchmark peer (bench/peer: Benthos v4.27.0 with kafka_franz, sql_insert and
# opensearch) into bench/work/peer/benthos-peer. Modules come from the Go module proxy into the
# normal Go module cache; nothing third-party is kept in the repository. Skips when built.
set -euo pipefail
cd "$(dirname "$0")"
out=work/peer/benthos-peer
if [[ -x "$out" && "$out" -nt peer/main.go && "$out" -nt peer/go.mod ]]; then
  echo "build-peer: $out is up to date"
  exit 0
fi
mkdir -p work/peer
cd peer
export GOFLAGS=-mod=mod
[[ -f go.sum ]] || nice -n 10 go mod tidy
start=$(date +%s)
nice -n 10 go build -trimpath -ldflags='-s -w' -o "../$out" .
echo "build-peer: built $out in $(( $(date +%s) - start ))s ($(../$out --version 2>/dev/null | head -1))"
