#!/usr/bin/env bash
# PostgreSQL for tests: our own cluster (initdb + pg_ctl) on 127.0.0.1:$PG_PORT, not Debian's
# systemd-managed default cluster. Role and database `logproc` (password `logproc`).
# Usage: postgres.sh {install|start|stop|status|reset}
set -euo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PG_HOST=127.0.0.1
PG_SOCKET_DIR=/tmp
PG_LOG="$LOG_DIR/postgres.log"
PG_START_TIMEOUT="${PG_START_TIMEOUT:-60}"
PG_DB_USER=logproc
PG_DB_PASS=logproc
PG_DB_NAME=logproc
pg_settings=(-c "listen_addresses=$PG_HOST" -c fsync=on -c shared_buffers=256MB -c max_connections=200)

# The server runs as user postgres: its data lives where that user can reach it (common.sh).
pg_data_dir() { printf '%s\n' "$SHARED_DIR/postgres"; }

pg_bin() {
  local ver
  ver="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
  [[ -n "$ver" && -x "/usr/lib/postgresql/$ver/bin/pg_ctl" ]] || die "postgres: no server under /usr/lib/postgresql (run install)"
  printf '%s\n' "/usr/lib/postgresql/$ver/bin"
}

# From /: the checkout may be a folder user postgres cannot enter.
as_pg() { (cd / && runuser -u postgres -- "$@"); }

install() {
  apt_install postgresql
}

running() {
  local d
  d="$(pg_data_dir)"
  [[ -f "$d/PG_VERSION" ]] && as_pg "$(pg_bin)/pg_ctl" -D "$d" status >/dev/null 2>&1
}

healthy() {
  PGPASSWORD="$PG_DB_PASS" PGCONNECT_TIMEOUT=5 psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_DB_USER" -d "$PG_DB_NAME" \
    -XAtqc 'select 1' 2>/dev/null | grep -qx 1
}

# Debian's package creates a cluster on 5432; under systemd it is started at install time.
# If such a cluster holds our port, stop it (it is the package's idle default, not ours to keep).
free_port_from_debian_cluster() {
  command -v pg_lsclusters >/dev/null || return 0
  local ver name port status _rest
  while read -r ver name port status _rest; do
    if [[ "$port" == "$PG_PORT" && "$status" == online* ]]; then
      log "postgres: stopping Debian cluster $ver/$name, which holds port $PG_PORT"
      pg_ctlcluster "$ver" "$name" stop -m fast || true
    fi
  done < <(pg_lsclusters -h 2>/dev/null)
}

init_cluster() {
  local d="$1" bin="$2" ver
  if [[ -f "$d/PG_VERSION" ]]; then
    ver="$(cat "$d/PG_VERSION")"
    [[ "$bin" == "/usr/lib/postgresql/$ver/bin" ]] || die "postgres: $d was made by PostgreSQL $ver; run reset"
    return 0
  fi
  log "postgres: initdb in $d"
  rm -rf "$d"   # a half-made dir from an interrupted initdb
  mkdir -p "$d"
  chmod 755 "$(dirname "$d")"
  chown postgres:postgres "$d"
  chmod 700 "$d"
  # Local socket: peer auth for the postgres superuser (setup below); TCP: passwords (scram).
  as_pg "$bin/initdb" -D "$d" -U postgres -E UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=scram-sha-256 >>"$PG_LOG" 2>&1 \
    || { tail -n 20 "$PG_LOG" >&2; die "postgres: initdb failed"; }
}

setup_role_and_db() {
  # Idempotent: the role's password is (re)set, the database is created only when missing.
  # CREATEROLE: the tests run the daemon as least-privilege roles they create.
  as_pg psql -XAtq -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" -p "$PG_PORT" -d postgres >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_DB_USER') THEN
    CREATE ROLE $PG_DB_USER LOGIN CREATEDB CREATEROLE PASSWORD '$PG_DB_PASS';
  ELSE
    ALTER ROLE $PG_DB_USER LOGIN CREATEDB CREATEROLE PASSWORD '$PG_DB_PASS';
  END IF;
END \$\$;
SELECT 'CREATE DATABASE $PG_DB_NAME OWNER $PG_DB_USER' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB_NAME')\gexec
SQL
}

start() {
  install
  local d bin
  d="$(pg_data_dir)"
  bin="$(pg_bin)"
  if running; then
    head -n 1 "$d/postmaster.pid" >"$RUN_DIR/postgres.pid"
    setup_role_and_db
    if healthy; then log "postgres: already running (pid $(cat "$RUN_DIR/postgres.pid"))"; return 0; fi
    wait_for postgres "$PG_START_TIMEOUT" "$PG_LOG" healthy
    return 0
  fi
  free_port_from_debian_cluster
  if (exec 3<>"/dev/tcp/$PG_HOST/$PG_PORT") 2>/dev/null; then
    die "postgres: port $PG_PORT is in use by a server this script did not start"
  fi
  init_cluster "$d" "$bin"
  log "postgres: starting on $PG_HOST:$PG_PORT (data $d)"
  # No -l: the server inherits pg_ctl's stdout, i.e. this root-opened log file, so user postgres
  # needs no write access to the log folder. pg_ctl puts the server in its own session.
  as_pg "$bin/pg_ctl" -D "$d" -w -t "$PG_START_TIMEOUT" \
    -o "-p $PG_PORT -k $PG_SOCKET_DIR ${pg_settings[*]}" start </dev/null >>"$PG_LOG" 2>&1 \
    || { tail -n 40 "$PG_LOG" >&2; die "postgres: pg_ctl start failed"; }
  head -n 1 "$d/postmaster.pid" >"$RUN_DIR/postgres.pid"
  setup_role_and_db
  wait_for postgres "$PG_START_TIMEOUT" "$PG_LOG" healthy || die "postgres: started but login as $PG_DB_USER fails"
  log "postgres: up (pid $(cat "$RUN_DIR/postgres.pid"))"
}

stop() {
  # Only our cluster: pg_ctl on our data dir; fast mode disconnects clients instead of waiting.
  local d
  d="$(pg_data_dir)"
  if running; then
    log "postgres: stopping"
    as_pg "$(pg_bin)/pg_ctl" -D "$d" -m fast -w -t 60 stop >/dev/null 2>&1 || stop_pid postgres 30
  fi
  rm -f "$RUN_DIR/postgres.pid"
}

status() {
  local v
  if running && v="$(PGPASSWORD="$PG_DB_PASS" PGCONNECT_TIMEOUT=5 psql -h "$PG_HOST" -p "$PG_PORT" \
    -U "$PG_DB_USER" -d "$PG_DB_NAME" -XAtqc "select current_setting('server_version')" 2>/dev/null)"; then
    printf 'postgres: up (pid %s, %s:%s, PostgreSQL %s)\n' "$(head -n 1 "$(pg_data_dir)/postmaster.pid")" \
      "$PG_HOST" "$PG_PORT" "$v"
  elif running; then
    printf 'postgres: unhealthy (%s:%s, login as %s fails)\n' "$PG_HOST" "$PG_PORT" "$PG_DB_USER"
    return 1
  else
    printf 'postgres: down\n'
    return 1
  fi
}

reset() {
  stop
  rm -rf "$(pg_data_dir)"
  log "postgres: data wiped"
}

case "${1:-}" in
  install | start | stop | status | reset) "$1" ;;
  *) die "usage: $0 {install|start|stop|status|reset}" ;;
esac
