#!/usr/bin/env bash
# A real Elasticsearch or OpenSearch distribution (the minimal "integ-test-zip" each project
# publishes on Maven Central), selected by LP_TEST_SEARCH; run as an unprivileged user, since
# both refuse to run as root. infra.sh calls this instead of opensearch.sh when LP_TEST_SEARCH
# names one of the stores below; it serves the same port variables.
# Usage: search-dist.sh install|start|stop|status|reset|version
set -euo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

STORE="${LP_TEST_SEARCH:?LP_TEST_SEARCH must name a store}"
JDK17=/usr/lib/jvm/java-17-openjdk-amd64
JDK25=/usr/lib/jvm/temurin-25-jdk-amd64   # Elasticsearch 9 and OpenSearch 3 need Java 21+
# store name -> product, version (override with LP_TEST_SEARCH_VERSION), Java home
case "$STORE" in
  opensearch-2) PRODUCT=opensearch VERSION=2.19.6 JDK=$JDK17 ;;
  opensearch-3) PRODUCT=opensearch VERSION=3.6.0 JDK=$JDK25 ;;
  elasticsearch-8) PRODUCT=elasticsearch VERSION=8.19.21 JDK=$JDK17 ;;
  elasticsearch-9) PRODUCT=elasticsearch VERSION=9.2.0 JDK=$JDK25 ;;
  *) die "LP_TEST_SEARCH=$STORE: known stores are opensearch-2 opensearch-3 elasticsearch-8 elasticsearch-9" ;;
esac
VERSION="${LP_TEST_SEARCH_VERSION:-$VERSION}"
GROUP="org.$PRODUCT.distribution.integ-test-zip"
RUN_USER="${LP_SEARCH_USER:-lpsearch}"
# RUN_USER's files live where it can reach them, outside the checkout ($SHARED_DIR, common.sh).
HOME_DIR="$SHARED_DIR/search/$PRODUCT-$VERSION"   # unzipped distribution, owned by RUN_USER
SD_DATA="$SHARED_DIR/search-$STORE"               # data, logs, pid file (RUN_USER's)
SD_LOG="$LOG_DIR/search-$STORE.log"
PID_NAME=search
URL="http://127.0.0.1:$OPENSEARCH_PORT"
HEAP="${OPENSEARCH_HEAP:-1g}"

install_tools() {
  [[ -x "$JDK/bin/java" ]] || die "$STORE needs a JDK at $JDK"
  command -v mvn >/dev/null || apt_install maven
  command -v curl >/dev/null || apt_install curl
  command -v unzip >/dev/null || apt_install unzip
  id -u "$RUN_USER" >/dev/null 2>&1 \
    || useradd --system --no-create-home --shell /usr/sbin/nologin "$RUN_USER"
}

cmd_install() {
  install_tools
  [[ -x "$HOME_DIR/bin/$PRODUCT" ]] && return 0
  log "$STORE: fetching $GROUP:$PRODUCT:$VERSION:zip (Maven Central)"
  mvn -B -q dependency:copy -Dartifact="$GROUP:$PRODUCT:$VERSION:zip" \
    -Dmaven.repo.local="$CACHE_DIR/m2" -DoutputDirectory="$CACHE_DIR/search/zips" 2>&1 \
    | sed 's/\x1b\[[0-9;]*m//g' >&2
  shared_dir search >/dev/null
  local tmp="$SHARED_DIR/search/unzip-$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  unzip -q "$CACHE_DIR/search/zips/$PRODUCT-$VERSION.zip" -d "$tmp"
  rm -rf "$HOME_DIR"
  mv "$tmp/$PRODUCT-$VERSION" "$HOME_DIR"
  rmdir "$tmp"
  mkdir -p "$HOME_DIR/plugins"
  chown -R "$RUN_USER" "$HOME_DIR"
}

healthy() { curl -sf --max-time 2 "$URL/_cluster/health" | grep -Eq '"status":"(green|yellow)"'; }
healthy_or_dead() { ! pid_alive "$PID_NAME" || healthy; }

cmd_start() {
  if pid_alive "$PID_NAME"; then
    wait_for "$STORE" 120 "$SD_LOG" healthy_or_dead || die "$STORE: not healthy on $URL"
    log "$STORE: already running"
    return 0
  fi
  if curl -s --max-time 2 -o /dev/null "$URL/"; then
    die "$STORE: port $OPENSEARCH_PORT is in use by a process this script did not start"
  fi
  cmd_install
  mkdir -p "$SD_DATA/data" "$SD_DATA/logs" "$SD_DATA/tmp"
  chown -R "$RUN_USER" "$SD_DATA"
  [[ -f "$SD_LOG" ]] && mv -f "$SD_LOG" "$SD_LOG.1"
  local settings=(
    -Ediscovery.type=single-node -Enetwork.host=127.0.0.1
    -Ehttp.port="$OPENSEARCH_PORT" -Etransport.port="$OPENSEARCH_TRANSPORT_PORT"
    -Epath.data="$SD_DATA/data" -Epath.logs="$SD_DATA/logs"
    -Ecluster.routing.allocation.disk.threshold_enabled=false
    # The tests delete their indices by pattern (`i-name-*`).
    -Eaction.destructive_requires_name=false
  )
  local java_env
  if [[ "$PRODUCT" == elasticsearch ]]; then
    settings+=(-Expack.security.enabled=false)
    java_env=(ES_JAVA_HOME="$JDK" ES_TMPDIR="$SD_DATA/tmp" ES_JAVA_OPTS="-Xms$HEAP -Xmx$HEAP")
  else
    java_env=(OPENSEARCH_JAVA_HOME="$JDK" OPENSEARCH_TMPDIR="$SD_DATA/tmp" OPENSEARCH_JAVA_OPTS="-Xms$HEAP -Xmx$HEAP")
  fi
  log "$STORE: starting $PRODUCT $VERSION on $URL as $RUN_USER (heap $HEAP, files in $HOME_DIR and $SD_DATA)"
  # -d: the launcher forks the node and returns; the node writes its pid to the pid file.
  rm -f "$SD_DATA/pid"
  if ! runuser -u "$RUN_USER" -- env "${java_env[@]}" \
    "$HOME_DIR/bin/$PRODUCT" -d -p "$SD_DATA/pid" "${settings[@]}" >"$SD_LOG" 2>&1 </dev/null; then
    tail -n 40 "$SD_LOG" "$SD_DATA/logs/"*.log 2>/dev/null >&2 || true
    die "$STORE: launcher failed (log: $SD_LOG, $SD_DATA/logs)"
  fi
  wait_for "$STORE pid file" 60 "$SD_LOG" test -s "$SD_DATA/pid" || die "$STORE: no pid file"
  cp "$SD_DATA/pid" "$RUN_DIR/$PID_NAME.pid"
  if ! wait_for "$STORE" 180 "$SD_DATA/logs/$PRODUCT.log" healthy_or_dead || ! pid_alive "$PID_NAME"; then
    tail -n 40 "$SD_DATA/logs/$PRODUCT.log" >&2 2>/dev/null || true
    stop_pid "$PID_NAME"
    die "$STORE: did not become healthy (logs: $SD_DATA/logs)"
  fi
  # One node: replicas could never be assigned. OpenSearch has a cluster-wide default for it;
  # Elasticsearch does not (its templates' settings stay as the daemon writes them).
  if [[ "$PRODUCT" == opensearch ]]; then
    curl -sf --max-time 10 -XPUT "$URL/_cluster/settings" -H 'Content-Type: application/json' \
      -d '{"persistent":{"cluster.default_number_of_replicas":0}}' >/dev/null \
      || die "$STORE: could not set cluster.default_number_of_replicas"
  fi
  log "$STORE: up"
}

# The version the running node reports (`GET /` is absent in Elasticsearch's minimal distribution).
cmd_version() {
  curl -sf --max-time 5 "$URL/_nodes/_local?filter_path=nodes.*.version" \
    | sed -n 's/.*"version" *: *"\([^"]*\)".*/\1/p'
}

cmd_status() {
  local v
  if pid_alive "$PID_NAME" && v="$(cmd_version)" && [[ -n "$v" ]]; then
    echo "opensearch: up as $STORE (pid $(cat "$RUN_DIR/$PID_NAME.pid"), 127.0.0.1:$OPENSEARCH_PORT, $PRODUCT $v)"
  else
    echo "opensearch: down ($STORE)"
    return 1
  fi
}

cmd_stop() { stop_pid "$PID_NAME" 60; }

cmd_reset() {
  cmd_stop
  rm -rf "$SD_DATA"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  reset) cmd_reset ;;
  version) cmd_version ;;
  *) die "usage: $0 install|start|stop|status|reset|version" ;;
esac
