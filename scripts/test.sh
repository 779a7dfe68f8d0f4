#!/usr/bin/env bash
# The whole test suite: starts a throwaway PostgreSQL on a free loopback port (installing it
# from Debian's packages if needed; needs root) unless WORKFLOW_TEST_POSTGRES_URL is already
# set, installs Debian's chromium for the web UI's browser tests and nftables/iproute2 for the
# cluster tests if they are missing (needs root),
# runs pytest with any arguments given, and stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
    echo "installing Debian's chromium (tests/test_ui.py drives it with Playwright)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi
if ! command -v nft >/dev/null || ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
    echo "installing Debian's nftables and iproute2 (tests/test_cluster.py builds a cluster of network namespaces)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq nftables iproute2 >/dev/null
fi
if [ -z "${WORKFLOW_TEST_POSTGRES_URL:-}" ]; then
    # shellcheck source=.ci/services.sh
    source .ci/services.sh
    trap services_down EXIT
    services_up
fi
python -m pytest "$@"
