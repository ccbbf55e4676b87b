#!/usr/bin/env bash
# The Go tools the deploy tests run, built from the Go module proxy at the versions pinned in
# tools/*/go.mod and go.sum, into .cache/go-tools/bin (rebuilt only when a module changes):
#   promtool       github.com/prometheus/prometheus/cmd/promtool   (tools/promql)
#   promql-names   tools/promql: the dashboard's and rules' PromQL against a /metrics scrape
#   kustomize      sigs.k8s.io/kustomize/kustomize/v5              (tools/kustomize)
#   manifestcheck  tools/manifestcheck: manifests decoded strictly into their Go API types
#   helm           helm.sh/helm/v3/cmd/helm                         (tools/helm)
#
#   scripts/go-tools.sh          build what is missing or stale, print the bin folder
#   scripts/go-tools.sh --force  rebuild everything
# Needs Go 1.26 or later on PATH (the module proxy supplies everything else).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
bin="$root/.cache/go-tools/bin"
stamps="$root/.cache/go-tools/stamps"
mkdir -p "$bin" "$stamps"

say() { printf '[go-tools] %s\n' "$*" >&2; }
command -v go >/dev/null || { say "go is not on PATH: install Go 1.26 or later"; exit 1; }
export GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local

# build MODULE_DIR OUTPUT PACKAGE: go build unless the module's files (only go.mod and go.sum
# for a package from the proxy) are unchanged since the last build of OUTPUT.
build() {
  local dir="$1" out="$2" pkg="$3" sum start own=
  [[ "$pkg" == . ]] && own=./*.go
  # shellcheck disable=SC2086 # $own is a glob on purpose
  sum="$(cd "$dir" && cat go.mod go.sum $own | sha256sum | cut -d' ' -f1)"
  if [[ "${force:-}" != 1 && -x "$bin/$out" && "$(cat "$stamps/$out" 2>/dev/null)" == "$sum" ]]; then
    return 0
  fi
  say "building $out ($pkg in $dir; the first build downloads modules and takes minutes)"
  start=$SECONDS
  (cd "$dir" && go build -o "$bin/$out.tmp" "$pkg")
  mv "$bin/$out.tmp" "$bin/$out"
  printf '%s\n' "$sum" >"$stamps/$out"
  say "built $out in $((SECONDS - start)) s"
}

force=
[[ "${1:-}" == --force ]] && force=1
build tools/promql promtool github.com/prometheus/prometheus/cmd/promtool
build tools/promql promql-names .
build tools/kustomize kustomize sigs.k8s.io/kustomize/kustomize/v5
build tools/manifestcheck manifestcheck .
build tools/helm helm helm.sh/helm/v3/cmd/helm
printf '%s\n' "$bin"
