#!/bin/sh
# Initialise the cluster on first start (POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB),
# then run postgres in the foreground with any extra arguments (e.g. -c port=55432).
set -eu
: "${POSTGRES_USER:=sde}" "${POSTGRES_DB:=sde}"
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -A scram-sha-256 >/dev/null
    rm -f "$pwfile"
    postgres -D "$PGDATA" -c listen_addresses='' -c unix_socket_directories=/run/postgresql &
    pid=$!
    until pg_isready -q -h /run/postgresql -U "$POSTGRES_USER" -d postgres; do sleep 0.2; done
    PGPASSWORD="$POSTGRES_PASSWORD" psql -q -h /run/postgresql -U "$POSTGRES_USER" -d postgres \
        -c "CREATE DATABASE \"$POSTGRES_DB\""
    kill -INT "$pid"
    wait "$pid"
fi
exec postgres -D "$PGDATA" "$@"
