# Shared settings and helpers for the service scripts. Sourced, never run.
# Every path lives under the repo's ignored .infra/ folder; every port can be overridden.
set -euo pipefail

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$INFRA_DIR/../.." && pwd)"
STATE_DIR="${LP_INFRA_STATE:-$REPO_ROOT/.infra}"
CACHE_DIR="$STATE_DIR/cache"   # downloaded jars, compiled launchers: survives `reset`
DATA_DIR="$STATE_DIR/data"     # service data: wiped by `reset`
LOG_DIR="$STATE_DIR/logs"
RUN_DIR="$STATE_DIR/run"       # pid files of the processes we started
mkdir -p "$CACHE_DIR" "$DATA_DIR" "$LOG_DIR" "$RUN_DIR"

# What a service running as another user must read or write (PostgreSQL's data, the search
# stores' distributions, data and logs) lives outside the checkout: a clone under /root or in a
# mode-700 folder is a path that user cannot enter. One rule for every such service: a folder per
# checkout under /var/tmp (keyed by the state folder's path), which every user can traverse.
SHARED_DIR="${LP_INFRA_SHARED:-/var/tmp/lp-infra-$(printf '%s' "$STATE_DIR" | sha256sum | cut -c1-12)}"

# shared_dir NAME: create and print "$SHARED_DIR/NAME", its parents traversable by every user.
shared_dir() {
  mkdir -p "$SHARED_DIR/$1"
  chmod 755 "$SHARED_DIR"
  printf '%s\n' "$SHARED_DIR/$1"
}

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
PG_PORT="${PG_PORT:-5432}"
OPENSEARCH_PORT="${OPENSEARCH_PORT:-9200}"
OPENSEARCH_TRANSPORT_PORT="${OPENSEARCH_TRANSPORT_PORT:-9300}"

# Java 17 runs both Kafka and OpenSearch 2.x (2.x passes COMPAT locale flags that newer JDKs dropped).
JAVA_HOME="${LP_JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}"
JAVA="$JAVA_HOME/bin/java"
JAVAC="$JAVA_HOME/bin/javac"

log() { printf '[infra] %s\n' "$*" >&2; }
die() { printf '[infra] ERROR: %s\n' "$*" >&2; exit 1; }

# pid_alive NAME: true when the pid file NAME exists and its process is alive.
pid_alive() {
  local f="$RUN_DIR/$1.pid"
  [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

# stop_pid NAME [SECONDS]: SIGTERM the process from pid file NAME, SIGKILL after SECONDS.
stop_pid() {
  local name="$1" secs="${2:-30}" f="$RUN_DIR/$1.pid" pid i
  [[ -f "$f" ]] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { log "$name did not stop in ${secs}s, killing"; kill -KILL "$pid" 2>/dev/null || true; }
  fi
  rm -f "$f"
}

# wait_for NAME SECONDS LOGFILE CMD...: retry CMD until it succeeds; on timeout fail naming
# the service and showing the tail of its log.
wait_for() {
  local name="$1" secs="$2" logf="$3"; shift 3
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      printf '[infra] ERROR: %s did not become healthy within %ss. Last lines of %s:\n' "$name" "$secs" "$logf" >&2
      tail -n 40 "$logf" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.5
  done
}

# apt_install PKG...: install Debian packages that are missing (apt-get update once per run).
apt_install() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if [[ -z "${_LP_APT_UPDATED:-}" ]]; then apt-get update -qq >/dev/null; _LP_APT_UPDATED=1; fi
  apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The KRaft properties every test broker shares: combined broker and controller, small
# internal topics, records up to 8 MiB. Args: node id, controller.quorum.voters, listeners,
# advertised listeners, listener.security.protocol.map, log dir, replicas (1 or 3).
kafka_base_props() {
  local id="$1" voters="$2" listeners="$3" adv="$4" map="$5" dir="$6" replicas="$7"
  local isr=$((replicas > 1 ? 2 : 1))
  cat <<EOF
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=$listeners
advertised.listeners=$adv
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$map
log.dirs=$dir
# Internal topics as replicated as the cluster allows, with few partitions: the first
# consumer-group join creates them, and 50 is slow.
offsets.topic.replication.factor=$replicas
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$isr
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
num.partitions=1
default.replication.factor=$replicas
min.insync.replicas=$isr
# Tests send records up to 6 MiB (topics also set max.message.bytes).
message.max.bytes=8388608
replica.fetch.max.bytes=8388608
EOF
}
