#!/usr/bin/env bash
# The long version of the cluster scenarios (tests/test_cluster.py, docs/network-faults.md):
# longer faults (20 s partitions, 3 s leases) under a heavier load, with the SQL streamer and
# Kafka. Needs root (network namespaces). Installs nftables/iproute2 and PostgreSQL from
# Debian's packages and the Tansu broker (.ci/services.sh) if missing; prints one JSON line of
# results per scenario at the end (also kept in $WORKFLOW_CLUSTER_RESULTS if set).
#
#   ./scripts/cluster.sh                 # every scenario, long
#   ./scripts/cluster.sh -k partition    # extra pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nft >/dev/null || ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq nftables iproute2 >/dev/null
fi
# shellcheck source=.ci/services.sh
source .ci/services.sh
trap services_down EXIT
_install_postgres
if [ -z "${WORKFLOW_TEST_TANSU_BIN:-}" ]; then
    kafka_up   # for the Tansu binary; the cluster starts its own broker in its namespace
fi
results=${WORKFLOW_CLUSTER_RESULTS:-$(mktemp /tmp/cluster-results.XXXXXX)}
export WORKFLOW_CLUSTER=long WORKFLOW_CLUSTER_RESULTS="$results"
status=0
python -m pytest tests/test_cluster.py -p no:randomly --timeout=1200 "$@" || status=$?
echo "== results ($results)"
cat "$results"
exit $status
