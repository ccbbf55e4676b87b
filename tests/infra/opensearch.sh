#!/usr/bin/env bash
# Single-node OpenSearch 2.19 for tests: jars from Maven Central, embedded by a small Java launcher
# (tests/infra/opensearch/Launcher.java), because there is no Docker and no tarball download here.
# Usage: opensearch.sh install|start|stop|status|reset
# A second node beside the suite's (a test's store with other static settings): OPENSEARCH_INSTANCE
# names its pid file, data and log; OPENSEARCH_PORT/OPENSEARCH_TRANSPORT_PORT its ports;
# OPENSEARCH_HTTP_MAX_CONTENT_LENGTH (e.g. 1mb) its http.max_content_length.
set -euo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

OS_SRC="$INFRA_DIR/opensearch"
OS_CACHE="$CACHE_DIR/opensearch"
OS_LIBS="$OS_CACHE/libs"
OS_CLASSES="$OS_CACHE/classes"
OS_NAME="${OPENSEARCH_INSTANCE:-opensearch}"
OS_DATA="$DATA_DIR/$OS_NAME"
OS_LOG="$LOG_DIR/$OS_NAME.log"
OS_HEAP="${OPENSEARCH_HEAP:-1g}"
OS_URL="http://127.0.0.1:$OPENSEARCH_PORT"

# Fingerprint of the input files' contents, so an edited pom or launcher triggers a rebuild of the cache.
fingerprint() { cat "$@" | sha256sum | cut -c1-16; }

install_tools() {
  [[ -x "$JAVAC" ]] || apt_install openjdk-17-jdk-headless
  command -v mvn >/dev/null || apt_install maven
  command -v curl >/dev/null || apt_install curl
}

cmd_install() {
  install_tools
  local fp
  fp="$(fingerprint "$OS_SRC/pom.xml")"
  if [[ "$(cat "$OS_LIBS/.stamp" 2>/dev/null)" != "$fp" ]]; then
    log "opensearch: fetching jars (Maven Central)"
    rm -rf "$OS_LIBS"   # no stale jars from an older version on the classpath
    # Output to stderr (callers may parse our stdout), minus the colour codes Debian's mvn emits even with -B.
    mvn -B -q -f "$OS_SRC/pom.xml" -Dmaven.repo.local="$CACHE_DIR/m2" \
      -Dlp.jars="$OS_LIBS" -Dlp.build="$OS_CACHE/mvn-target" package 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2
    echo "$fp" >"$OS_LIBS/.stamp"
  fi
  fp="$(fingerprint "$OS_SRC/Launcher.java" "$OS_LIBS/.stamp")"
  if [[ "$(cat "$OS_CLASSES/.stamp" 2>/dev/null)" != "$fp" ]]; then
    log "opensearch: compiling launcher"
    rm -rf "$OS_CLASSES"
    "$JAVAC" -nowarn -d "$OS_CLASSES" -cp "$OS_LIBS/*" "$OS_SRC/Launcher.java"
    echo "$fp" >"$OS_CLASSES/.stamp"
  fi
}

os_healthy() {
  curl -sf --max-time 2 "$OS_URL/_cluster/health" | grep -Eq '"status":"(green|yellow)"'
}

# For wait_for: stop waiting when healthy, or at once when the process has died.
os_healthy_or_dead() { ! pid_alive "$OS_NAME" || os_healthy; }

cmd_start() {
  if pid_alive "$OS_NAME"; then
    if os_healthy; then log "opensearch: already running (pid $(cat "$RUN_DIR/$OS_NAME.pid"))"; return 0; fi
    # Probably still starting (another caller launched it). Not ours to kill if it never gets healthy.
    log "opensearch: pid $(cat "$RUN_DIR/$OS_NAME.pid") alive but not healthy on $OS_URL yet, waiting"
    wait_for "$OS_NAME" 120 "$OS_LOG" os_healthy_or_dead \
      || die "opensearch: pid $(cat "$RUN_DIR/$OS_NAME.pid") is not healthy on $OS_URL; try '$0 stop' first"
  else
    # Someone else on our port would make tests talk to the wrong node.
    if curl -s --max-time 2 -o /dev/null "$OS_URL/"; then
      die "opensearch: port $OPENSEARCH_PORT is in use by a process this script did not start"
    fi
    cmd_install
    mkdir -p "$OS_DATA"
    [[ -f "$OS_LOG" ]] && mv -f "$OS_LOG" "$OS_LOG.1"   # keep the previous run's log for post-mortems
    log "opensearch: starting on 127.0.0.1:$OPENSEARCH_PORT (heap $OS_HEAP)"
    # setsid: own session, so the caller's Ctrl-C or process-group kill does not take the node down.
    # Flags: no netty processor pinning and COMPAT locales, as the OpenSearch 2.x distribution does.
    nohup setsid "$JAVA" -Xms"$OS_HEAP" -Xmx"$OS_HEAP" -Xss1m \
      -Djava.awt.headless=true -Dfile.encoding=UTF-8 \
      -Dopensearch.set.netty.runtime.available.processors=false \
      -Djava.locale.providers=SPI,COMPAT \
      -Dio.netty.recycler.maxCapacityPerThread=0 \
      -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true \
      -Dlog4j2.configurationFile="$OS_SRC/log4j2.xml" \
      -Dlp.home="$OS_DATA/home" -Dlp.data="$OS_DATA/data" \
      -Dlp.http.port="$OPENSEARCH_PORT" -Dlp.transport.port="$OPENSEARCH_TRANSPORT_PORT" \
      -Dlp.http.max_content_length="${OPENSEARCH_HTTP_MAX_CONTENT_LENGTH:-}" \
      -cp "$OS_CLASSES:$OS_LIBS/*" Launcher >"$OS_LOG" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/$OS_NAME.pid"
    if ! wait_for "$OS_NAME" 120 "$OS_LOG" os_healthy_or_dead; then
      stop_pid "$OS_NAME"   # a half-started node would block the next start's ports
      exit 1
    fi
  fi
  if ! pid_alive "$OS_NAME"; then
    rm -f "$RUN_DIR/$OS_NAME.pid"
    tail -n 40 "$OS_LOG" >&2 || true
    die "opensearch: process exited during start (log: $OS_LOG)"
  fi
  # Indices created without a replica count (auto-created, or by templates without one) would stay
  # yellow on one node. Only a cluster setting fixes that default; persisted in the data folder.
  curl -sf --max-time 10 -XPUT "$OS_URL/_cluster/settings" -H 'Content-Type: application/json' \
    -d '{"persistent":{"cluster.default_number_of_replicas":0}}' >/dev/null \
    || die "opensearch: could not set cluster.default_number_of_replicas"
  log "opensearch: up"
}

cmd_status() {
  local version
  if pid_alive "$OS_NAME" && version="$(curl -sf --max-time 2 "$OS_URL/")"; then
    version="$(sed -n 's/.*"number" *: *"\([^"]*\)".*/\1/p' <<<"$version")"
    echo "opensearch: up (pid $(cat "$RUN_DIR/$OS_NAME.pid"), 127.0.0.1:$OPENSEARCH_PORT, version $version)"
  else
    echo "opensearch: down"
    return 1
  fi
}

cmd_stop() { stop_pid "$OS_NAME" 30; }

cmd_reset() {
  cmd_stop
  rm -rf "$OS_DATA"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  reset) cmd_reset ;;
  *) die "usage: $0 install|start|stop|status|reset" ;;
esac
