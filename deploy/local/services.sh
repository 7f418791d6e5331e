#!/usr/bin/env bash
# Installs (Debian packages) and starts the services peakdesk needs on this
# machine: PostgreSQL and Redis on loopback, with role and database
# "peakdesk" (password "peakdesk"), and Chromium for the console's browser
# tests. Idempotent and quiet when all is up.
# NATS needs nothing here: `peakdesk dev` and the tests embed it, and
# `go tool nats-server` runs the pinned standalone server.
set -euo pipefail

log() { echo "services: $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    as_root apt-get update -qq >/dev/null
    apt_updated=1
  fi
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- PostgreSQL -----------------------------------------------------------
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt_install postgresql postgresql-contrib
fi
command -v pg_isready >/dev/null || apt_install postgresql-client

pg_version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$pg_version main"; then
  log "creating PostgreSQL $pg_version cluster"
  as_root pg_createcluster "$pg_version" main >/dev/null
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  log "starting PostgreSQL $pg_version"
  as_root pg_ctlcluster "$pg_version" main start
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 0.5
  done
  pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL did not become ready"; exit 1; }
fi

psql_admin() { as_root su postgres -c "psql -v ON_ERROR_STOP=1 -qtAX $*"; }

# The test suite runs packages in parallel, each with its own databases and
# pools: 100 connections (the default) is not enough.
if [ "$(psql_admin "-c 'SHOW max_connections'")" -lt 400 ]; then
  log "raising PostgreSQL max_connections to 400 (restart)"
  psql_admin "-c 'ALTER SYSTEM SET max_connections = 400'"
  as_root pg_ctlcluster "$pg_version" main restart
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 0.5
  done
fi
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_roles WHERE rolname = 'peakdesk'\"")" != 1 ]; then
  log "creating role peakdesk"
  psql_admin "-c \"CREATE ROLE peakdesk LOGIN CREATEDB PASSWORD 'peakdesk'\""
fi
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_database WHERE datname = 'peakdesk'\"")" != 1 ]; then
  log "creating database peakdesk"
  psql_admin "-c \"CREATE DATABASE peakdesk OWNER peakdesk\""
fi

# --- Redis ----------------------------------------------------------------
command -v redis-server >/dev/null || apt_install redis-server
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis"
  as_root mkdir -p /var/lib/peakdesk-redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 \
    --dir /var/lib/peakdesk-redis --logfile /var/lib/peakdesk-redis/redis.log \
    --save "" --appendonly no
  for _ in $(seq 1 40); do
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
    sleep 0.25
  done
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { log "Redis did not become ready"; exit 1; }
fi

# --- Chromium (the operator console's browser tests drive it headless) -----
if [ ! -x /usr/bin/chromium ]; then
  apt_install chromium fonts-liberation fonts-wqy-microhei
fi
