#!/usr/bin/env bash
# Install and start what the TRE needs on this host, idempotently: a Docker engine (dockerd),
# iptables/iproute2 (workspace isolation and the tests' outside host), configurable-http-proxy,
# and, with --test, PostgreSQL, Chromium, docker-compose and the test OIDC provider (npm).
#
# Safe on a machine where all of it already runs: it only adds what is missing, and starts
# dockerd / PostgreSQL only when they do not answer. Processes it starts are left running
# (their PIDs are written to var/system/*.pid); it never stops anything it did not start.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/var/system"
mkdir -p "$STATE"
WITH_TEST=0
[[ "${1:-}" == "--test" ]] && WITH_TEST=1

log() { printf '[ensure-system] %s\n' "$*" >&2; }

APT_UPDATED=0
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    if ((APT_UPDATED == 0)); then
        log "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# --- Docker engine ---------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null 2>&1 || apt_install docker.io
    apt_install iptables
    log "starting dockerd (log: $STATE/dockerd.log)"
    nohup dockerd >"$STATE/dockerd.log" 2>&1 &
    echo $! >"$STATE/dockerd.pid"
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { tail -20 "$STATE/dockerd.log" >&2; log "dockerd did not start"; exit 1; }
fi
log "docker: $(docker version --format '{{.Server.Version}}')"
apt_install iptables iproute2 util-linux debootstrap

# --- configurable-http-proxy (npm) -------------------------------------------------------
if ! command -v configurable-http-proxy >/dev/null 2>&1; then
    command -v npm >/dev/null 2>&1 || apt_install npm
    log "installing configurable-http-proxy"
    npm install -g --silent configurable-http-proxy >/dev/null
fi

if ((WITH_TEST)); then
    # --- PostgreSQL for the store tests ----------------------------------------------------
    apt_install postgresql
    ver=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1)
    if ! pg_lsclusters -h 2>/dev/null | awk '{print $4}' | grep -q online; then
        log "starting PostgreSQL $ver"
        pg_ctlcluster "$ver" main start
    fi
    for _ in $(seq 30); do
        su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break
        sleep 1
    done
    su postgres -c "psql -qAtc \"select 1 from pg_roles where rolname='sde'\"" | grep -q 1 ||
        su postgres -c "psql -qc \"create role sde login password 'sde' createdb\""
    su postgres -c "psql -qAtc \"select 1 from pg_database where datname='sde_test'\"" | grep -q 1 ||
        su postgres -c "psql -qc 'create database sde_test owner sde'"
    # --- Chromium for the browser tier ---------------------------------------------------------
    apt_install chromium
    # --- the OpenID Connect provider of the login tests (oidc-provider, pinned by its lockfile) --
    command -v npm >/dev/null 2>&1 || apt_install npm
    if [[ ! -f "$ROOT/tests/oidc/node_modules/oidc-provider/package.json" ]]; then
        log "installing the test OpenID Connect provider (npm ci in tests/oidc)"
        (cd "$ROOT/tests/oidc" && npm ci --no-audit --no-fund --silent)
    fi
    # --- docker-compose for tests/docker/test_compose.py (docker-compose.yml end to end) -------
    command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 ||
        apt_install docker-compose
fi
log "ready"
