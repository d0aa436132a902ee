#!/bin/sh
# Runs once, when the PostgreSQL data volume is initialised (docker-entrypoint-initdb.d), as the
# superuser. Creates the application's role (BIOMEDSEARCH_DB_USER, default `biomedsearch`): it can
# log in and owns the database POSTGRES_DB (so `biomedsearch db upgrade` can create its tables,
# triggers and functions there), and nothing more: no superuser, no CREATEDB / CREATEROLE, no
# replication, no connection to other databases. The password (BIOMEDSEARCH_DB_PASSWORD) and the
# names are passed as psql variables, quoted by psql, never spliced into the SQL text.
# tests/test_compose.py runs this script against a real PostgreSQL server.
set -eu
: "${BIOMEDSEARCH_DB_PASSWORD:?BIOMEDSEARCH_DB_PASSWORD must be set}"
psql -v ON_ERROR_STOP=1 \
     -v app_role="${BIOMEDSEARCH_DB_USER:-biomedsearch}" \
     -v app_password="$BIOMEDSEARCH_DB_PASSWORD" \
     -v app_db="$POSTGRES_DB" \
     --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE :"app_role" LOGIN PASSWORD :'app_password'
  NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 200;
ALTER DATABASE :"app_db" OWNER TO :"app_role";
REVOKE ALL ON DATABASE :"app_db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"app_db" TO :"app_role";
REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
SQL
