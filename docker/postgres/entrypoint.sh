#!/bin/sh
# Make the cluster on first start (in the volume at PGDATA), then run the server in the foreground.
# POSTGRES_PASSWORD: the password of the `domus` role that owns the `domus` database.
set -eu
PGBIN=/usr/lib/postgresql/15/bin
: "${PGDATA:=/var/lib/postgresql/data}" "${PGPORT:=5432}" "${PGLISTEN:=127.0.0.1}"
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 -E UTF8 >/dev/null
    "$PGBIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses='' -k /tmp" -w start >/dev/null
    psql -h /tmp -U postgres -v ON_ERROR_STOP=1 -v pw="$POSTGRES_PASSWORD" >/dev/null <<'SQL'
CREATE ROLE domus LOGIN PASSWORD :'pw';
CREATE DATABASE domus OWNER domus;
SQL
    "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
    echo "domus-postgres: created the cluster in $PGDATA"
fi
exec "$PGBIN/postgres" -D "$PGDATA" -p "$PGPORT" -k /tmp -c listen_addresses="$PGLISTEN"
