#!/bin/sh
# Temporal's persistence in PostgreSQL: creates the `temporal` and `temporal_visibility`
# databases and brings their schemas to the version of this admin-tools image. Run by the
# `temporal-schema` service of docker-compose.yml (image temporalio/admin-tools, same version as
# temporalio/server) before the server starts; safe to run again on every start and after an
# image upgrade (update-schema applies only the missing versions).
set -eu
: "${POSTGRES_SEEDS:?set POSTGRES_SEEDS to the PostgreSQL host}"
: "${POSTGRES_USER:?set POSTGRES_USER}"
: "${SQL_PASSWORD:?set SQL_PASSWORD to the password of POSTGRES_USER}"
PORT=${DB_PORT:-5432}
SCHEMAS=/etc/temporal/schema/postgresql/v12

echo "waiting for PostgreSQL at ${POSTGRES_SEEDS}:${PORT}"
until nc -z "$POSTGRES_SEEDS" "$PORT"; do sleep 1; done

for pair in temporal:temporal temporal_visibility:visibility; do
  db=${pair%%:*}
  schema=${pair#*:}
  sql() {
    temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$PORT" \
      -u "$POSTGRES_USER" --db "$db" "$@"
  }
  sql create || echo "database $db exists"
  sql setup-schema -v 0.0
  sql update-schema -d "$SCHEMAS/$schema/versioned"
done
echo "Temporal schemas are up to date"
