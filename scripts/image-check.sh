#!/usr/bin/env bash
# Builds the Dockerfile's runtime stage under podman and runs the image against the running test
# services, checking what the PID-1 tests check of the bare binary: the daemon runs as a non-root
# uid, as PID 1, on a read-only root file system, answers /healthz and /readyz, and
# `podman stop` (SIGTERM) drains it to exit code 0 inside its deadline.
#
#   scripts/image-check.sh        (root; `make image-check` builds the release binary first;
#                                  LP_IMAGE_BINARY=path checks another build)
#
# Where no registry can be reached, two things stand in for pulls, the Dockerfile as it is:
#   - debian:bookworm-slim is a minbase bookworm made by mmdebstrap from Debian's packages
#     (cached in .cache/image/), imported under that name into a podman store of its own
#     (.cache/image/storage), so the machine's own images are never shadowed;
#   - the builder stage (rust:1.95-bookworm) is replaced by the host's release binary through
#     `--build-context builder=DIR`: the runtime stage copies it from the same path.
# The services come from the environment (DATABASE_URL, KAFKA_BROKERS, ELASTICSEARCH_URL), else
# from `tests/infra/infra.sh env`; nothing here starts or stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[image-check] %s\n' "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }
((EUID == 0)) || fail "needs root (rootful podman)"

# crun refuses a hybrid cgroup layout whose cgroup2 hierarchy has controllers ("cgroups in
# hybrid mode not supported, drop all controllers from cgroupv2"): run in a private mount
# namespace without that hierarchy, which leaves the host's mounts alone.
unified=/sys/fs/cgroup/unified
if [[ -z "${LP_IMAGE_CHECK_NS:-}" ]] && mountpoint -q "$unified" 2>/dev/null \
  && [[ -n "$(cat "$unified/cgroup.controllers")" ]]; then
  export LP_IMAGE_CHECK_NS=1
  exec unshare -m --propagation private bash -c 'umount "$1" && shift && exec bash "$@"' \
    _ "$unified" "$0" "$@"
fi

need=()
for tool in podman:podman mmdebstrap:mmdebstrap curl:curl; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if ((${#need[@]})); then
  say "installing ${need[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } >/dev/null \
    || fail "could not install ${need[*]}"
fi

bin=${LP_IMAGE_BINARY:-target/release/log-processor}
[[ -x "$bin" ]] || fail "$bin missing: cargo build --locked --release (make image-check does)"
cache=.cache/image
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
# This sandbox may not raise rlimits (no CAP_SYS_RESOURCE): ask for ones under the host's.
limits=(--ulimit nofile=16384:16384 --ulimit nproc=4096:4096)
pm() { podman --root "$cache/storage" --runroot "$cache/run" "$@"; }

if ! pm image exists docker.io/library/debian:bookworm-slim; then
  if ! pull_err=$(pm pull -q docker.io/library/debian:bookworm-slim 2>&1); then
    say "no registry: ${pull_err##*$'\n'}"
    if [[ ! -s "$cache/bookworm-minbase.tar" ]]; then
      say "making a bookworm minbase root file system with mmdebstrap (about a minute)"
      mmdebstrap --quiet --variant=minbase --mode=root --format=tar bookworm "$cache/bookworm-minbase.tar.tmp" \
        http://deb.debian.org/debian
      mv "$cache/bookworm-minbase.tar.tmp" "$cache/bookworm-minbase.tar"
    fi
    pm import -q "$cache/bookworm-minbase.tar" docker.io/library/debian:bookworm-slim >/dev/null
  fi
fi

stage=$(mktemp -d)
name="lp-image-check-$$"
cleanup() {
  pm rm -f -t 0 "$name" >/dev/null 2>&1 || true
  rm -rf "$stage"
}
trap cleanup EXIT
install -D -m 0755 "$bin" "$stage/usr/local/bin/log-processor"
say "building the runtime stage (Dockerfile --target runtime, builder = $bin)"
start=$(date +%s)
pm build -q --pull=never --network=host "${limits[@]}" --target runtime \
  --build-context "builder=$stage" -t localhost/log-processor:check . >"$stage/build.log" 2>&1 \
  || { tail -n 30 "$stage/build.log" >&2; fail "podman build"; }
size=$(pm image inspect -f '{{.Size}}' localhost/log-processor:check)
say "image built in $(($(date +%s) - start)) s: localhost/log-processor:check, $((size / 1024 / 1024)) MiB"

if [[ -z "${DATABASE_URL:-}" || -z "${KAFKA_BROKERS:-}" || -z "${ELASTICSEARCH_URL:-}" ]]; then
  eval "$(bash tests/infra/infra.sh env)"
fi
topic="image-check-$(date +%s)"
port=$((20000 + RANDOM % 20000))
deadline_ms=25000
# Records to drain when the stop comes: produced by the host binary before the container starts.
"$bin" loadgen --kafka-brokers "$KAFKA_BROKERS" --topic "$topic" --count 200000 >/dev/null 2>&1 \
  || fail "loadgen into $KAFKA_BROKERS"
pm run -d --name "$name" --network=host --read-only "${limits[@]}" \
  -e LP_KAFKA_BROKERS="$KAFKA_BROKERS" -e LP_TOPICS="$topic" -e LP_GROUP_ID="$topic" \
  -e LP_DATABASE_URL="$DATABASE_URL" -e LP_PG_SCHEMA=image_check \
  -e LP_ELASTICSEARCH_URL="$ELASTICSEARCH_URL" -e LP_ES_INDEX="$topic-%Y.%m.%d" \
  -e LP_HTTP_ADDR="127.0.0.1:$port" -e LP_SHUTDOWN_DEADLINE_MS="$deadline_ms" \
  localhost/log-processor:check >/dev/null || fail "podman run"

ready=
for _ in $(seq 1 120); do
  if [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" == 200 ]]; then
    ready=1
    break
  fi
  [[ "$(pm inspect -f '{{.State.Running}}' "$name")" == true ]] || break
  sleep 0.5
done
[[ -n "$ready" ]] || { pm logs "$name" 2>&1 | tail -n 20 >&2; fail "/readyz never answered 200"; }
healthz=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/healthz")
[[ "$healthz" == 200 ]] || fail "/healthz answered $healthz"

pid=$(pm inspect -f '{{.State.Pid}}' "$name")
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
[[ "$uid" != 0 ]] || fail "the daemon runs as root"
pid1=$(pm exec "$name" cat /proc/1/comm)
[[ "$pid1" == log-processor ]] || fail "PID 1 is $pid1, not the daemon"
readonly_root=$(pm inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$name")
# Even root inside the container cannot write to the image's file system.
ro_err=$(pm exec --user 0 "$name" sh -c ': > /written' 2>&1) && fail "the root file system is writable"
[[ "$ro_err" == *"Read-only file system"* ]] || fail "a write failed, not as read-only: $ro_err"

before=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^log_processor_records_stored_total/ {s += $2} END {print s + 0}')
start_ns=$(date +%s%N)
pm stop -t 30 "$name" >/dev/null
stop_ms=$((($(date +%s%N) - start_ns) / 1000000))
code=$(pm inspect -f '{{.State.ExitCode}}' "$name")
exit_line=$(pm logs "$name" 2>&1 | grep 'shutdown: exit' | tail -n 1)
[[ "$code" == 0 ]] || { pm logs "$name" 2>&1 | tail -n 20 >&2; fail "exit code $code after podman stop"; }
((stop_ms < deadline_ms)) || fail "podman stop took $stop_ms ms, deadline $deadline_ms ms"
[[ -n "$exit_line" ]] || fail "no 'shutdown: exit' line in the container's log"

say "uid=$uid pid1=$pid1 read_only_root=$readonly_root (a write as root inside: ${ro_err##*: }) healthz=200 readyz=200"
say "stored before the stop: $before records; podman stop -t 30: exit code $code after $stop_ms ms (deadline $deadline_ms ms)"
say "daemon: ${exit_line#*INFO }"
echo "image-check: ok uid=$uid pid1=$pid1 read_only_root=$readonly_root healthz=200 readyz=200 stop_exit=$code stop_ms=$stop_ms deadline_ms=$deadline_ms image_mib=$((size / 1024 / 1024))"
