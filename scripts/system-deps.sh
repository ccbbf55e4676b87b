#!/usr/bin/env bash
# The one list of Debian packages that building and running this project's commands needs.
# Every Makefile target that builds (`make demo`, `test`, `chaos`, `bench`, `build`, `release`),
# `.ci/run` and the Dockerfile's builder stage call this script, so the lists cannot drift.
#
#   scripts/system-deps.sh            install what is missing (says what), or fail naming it
#   scripts/system-deps.sh --list     print the packages, one a line
#   scripts/system-deps.sh --check    exit 1 naming what is missing, install nothing
#   ... --build-only                  only the build's packages (the Dockerfile's builder stage)
#   ... --runtime-only                only what the built binary needs to run (the Dockerfile's
#                                     runtime stage)
#
# The services' own packages (PostgreSQL, kcat, the JDK, Maven) are installed by
# tests/infra/*.sh when a service is first started.
set -euo pipefail

# rdkafka's vendored librdkafka (feature `cmake-build`): cmake and a C/C++ tool chain; librdkafka
# includes curl/curl.h even when it does not link libcurl; zlib is linked from the system;
# OpenSSL (feature `ssl`: Kafka over TLS, SASL SCRAM) from the system through openssl-sys.
build_packages=(cmake make gcc g++ pkg-config libcurl4-openssl-dev zlib1g-dev libssl-dev)
# The binary's shared libraries besides libc (`ldd`): OpenSSL 3 (librdkafka's TLS), zlib and
# libgcc_s; the CA bundle for HTTPS and TLS against public CAs.
runtime_packages=(libssl3 zlib1g libgcc-s1 ca-certificates)
# What the scripts around the build call: the demo's and bench's counters (python3, curl),
# `unshare` (util-linux) and `systemd-analyze verify` (systemd) in the deploy tests, `groff` to
# render the man pages in tests/cli_docs.rs (groff-base). The deploy
# tests' Go tools come from the Go module proxy instead (scripts/go-tools.sh).
tool_packages=(curl python3 util-linux systemd groff-base)

action=install
needs_cargo=1
packages=("${build_packages[@]}" "${tool_packages[@]}")
for arg in "$@"; do
  case "$arg" in
    --list | --check) action="$arg" ;;
    --build-only) packages=("${build_packages[@]}") ;;
    --runtime-only) packages=("${runtime_packages[@]}"); needs_cargo= ;;
    *) printf '[system-deps] usage: %s [--list|--check] [--build-only|--runtime-only]\n' "$0" >&2; exit 2 ;;
  esac
done

say() { printf '[system-deps] %s\n' "$*" >&2; }

missing_packages() {
  local p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || printf '%s\n' "$p"
  done
}

if [[ "$action" == --list ]]; then printf '%s\n' "${packages[@]}"; exit 0; fi

[[ -z "$needs_cargo" ]] || command -v cargo >/dev/null || {
  say "cargo is not on PATH: install Rust (1.94 or later) first, e.g. with rustup; no package here provides it"
  exit 1
}
command -v dpkg-query >/dev/null || {
  say "this is not a Debian-based system (no dpkg-query). Install the equivalents of: ${packages[*]}"
  exit 1
}

mapfile -t missing < <(missing_packages)
((${#missing[@]})) || exit 0

if [[ "$action" == --check ]]; then
  say "missing: ${missing[*]}"
  exit 1
fi
if ((EUID != 0)); then
  say "missing: ${missing[*]}; installing them needs root. Run as root, or by hand:"
  say "  sudo apt-get update && sudo apt-get install -y ${missing[*]}"
  exit 1
fi
command -v apt-get >/dev/null || { say "no apt-get here. Install by hand: ${missing[*]}"; exit 1; }

say "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$out" 2>&1; then
  tail -n 20 "$out" >&2
  say "apt-get could not install: ${missing[*]} (its last lines above)"
  exit 1
fi
mapfile -t still < <(missing_packages)
((${#still[@]} == 0)) || { say "still missing after apt-get: ${still[*]}"; exit 1; }
