#!/usr/bin/env bash
# Test services in one place: Kafka, PostgreSQL, OpenSearch (each one run by tests/infra/NAME.sh).
# Usage: infra.sh {up|down|status|reset|env} [service...]   (default: all services)
#   up      install + start (idempotent), then print status
#   down    stop what the scripts started
#   status  one line per service; exit 1 when any is not up
#   reset   stop and wipe data (downloaded jars stay cached)
#   env     print `export` lines for the tests, e.g.  eval "$(tests/infra/infra.sh env)"
set -euo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ALL_SERVICES=(postgres kafka opensearch)

usage() { die "usage: $0 {up|down|status|reset|env} [${ALL_SERVICES[*]}]"; }

verb="${1:-}"
[[ -n "$verb" ]] || usage
shift
services=("$@")
((${#services[@]})) || services=("${ALL_SERVICES[@]}")
for s in "${services[@]}"; do
  [[ " ${ALL_SERVICES[*]} " == *" $s "* ]] || die "unknown service '$s' (known: ${ALL_SERVICES[*]})"
  [[ -x "$INFRA_DIR/$s.sh" || "$verb" == env ]] || die "missing $INFRA_DIR/$s.sh"
done

# LP_TEST_SEARCH (opensearch-2|opensearch-3|elasticsearch-8|elasticsearch-9) puts a real
# distribution in the search store's place (tests/infra/search-dist.sh); unset: the embedded node.
run() {
  if [[ "$1" == opensearch && -n "${LP_TEST_SEARCH:-}" ]]; then
    "$INFRA_DIR/search-dist.sh" "$2"
  else
    "$INFRA_DIR/$1.sh" "$2"
  fi
}

status_all() {
  local s rc=0
  for s in "${services[@]}"; do run "$s" status || rc=1; done
  return "$rc"
}

up() {
  local s i rc=0 pids=()
  log "state in $STATE_DIR; files of services run as other users in $SHARED_DIR"
  # Installs one after another: apt (dpkg lock) and Maven (shared local repo) do not mix in parallel.
  for s in "${services[@]}"; do run "$s" install; done
  # Starts in parallel: separate ports and folders; the JVMs' warm-up overlaps.
  for s in "${services[@]}"; do run "$s" start & pids+=($!); done
  for i in "${!pids[@]}"; do wait "${pids[$i]}" || { log "${services[$i]}: start failed"; rc=1; }; done
  status_all || rc=1
  return "$rc"
}

down() {
  local s rc=0
  for s in "${services[@]}"; do run "$s" stop || rc=1; done
  # The secured servers tests/secured.rs starts (secure.sh up) go too: left running, they would
  # answer the next checkout's tests with another checkout's certificates.
  bash "$INFRA_DIR/secure.sh" down || rc=1
  return "$rc"
}

reset() {
  local s rc=0
  for s in "${services[@]}"; do run "$s" reset || rc=1; done
  return "$rc"
}

print_env() {
  local s
  for s in "${services[@]}"; do
    case "$s" in
      kafka) printf 'export KAFKA_BROKERS=127.0.0.1:%s\n' "$KAFKA_PORT" ;;
      postgres) printf 'export DATABASE_URL=postgres://logproc:logproc@127.0.0.1:%s/logproc\n' "$PG_PORT" ;;
      opensearch) printf 'export ELASTICSEARCH_URL=http://127.0.0.1:%s\n' "$OPENSEARCH_PORT" ;;
    esac
  done
}

case "$verb" in
  up) up ;;
  down) down ;;
  status) status_all ;;
  reset) reset ;;
  env) print_env ;;
  *) usage ;;
esac
