#!/bin/sh
# Creates Courier's namespace once the Temporal frontend answers, with the retention that
# bounds workflow-ID de-duplication (see docs/deploy.md). Run by the `temporal-namespace`
# service of docker-compose.yml (image temporalio/admin-tools). An existing namespace is left as
# it is; change its retention with `temporal operator namespace update --retention`.
set -eu
: "${TEMPORAL_ADDRESS:?set TEMPORAL_ADDRESS, e.g. temporal:7233}"
NAMESPACE=${NAMESPACE:-default}
RETENTION=${RETENTION:-168h}

until temporal operator cluster health --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1; do
  echo "waiting for Temporal at $TEMPORAL_ADDRESS"
  sleep 2
done
if temporal operator namespace describe --namespace "$NAMESPACE" \
    --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1; then
  echo "namespace $NAMESPACE exists"
else
  temporal operator namespace create --namespace "$NAMESPACE" --retention "$RETENTION" \
    --address "$TEMPORAL_ADDRESS"
fi
