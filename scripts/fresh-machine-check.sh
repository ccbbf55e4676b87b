#!/usr/bin/env bash
# Proves that scripts/system-deps.sh lists everything the build needs: removes each listed
# package whose removal takes no other package with it (on a machine of this project's kind:
# cmake and libcurl4-openssl-dev, which a fresh one lacks), then runs the README's first command,
# `make demo`, at a reduced size. A package the build needs but the list lacks makes it fail.
# Root only; `.ci/run` calls it before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
((EUID == 0)) || { echo "fresh-machine-check: needs root (it removes packages)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

removed=()
while read -r p; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || continue
  # The simulation lists every package a removal would take ("Remv NAME ..."): only ours may go.
  others=$(apt-get -s remove "$p" 2>/dev/null | awk '/^Remv /{print $2}' | grep -vx "$p" || true)
  [[ -z "$others" ]] || continue
  apt-get remove -y -qq "$p" >/dev/null 2>&1 && removed+=("$p")
done < <(bash scripts/system-deps.sh --list)
echo "fresh-machine-check: removed ${removed[*]:-nothing}; now: make demo (DEMO_RECORDS=${DEMO_RECORDS:=20000})"
DEMO_RECORDS="$DEMO_RECORDS" make demo
