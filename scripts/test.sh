#!/usr/bin/env bash
# The whole test suite: starts a throwaway PostgreSQL on a free loopback port (installing it
# from Debian's packages if needed; needs root) unless WORKFLOW_TEST_POSTGRES_URL is already
# set, runs pytest with any arguments given, and stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${WORKFLOW_TEST_POSTGRES_URL:-}" ]; then
    # shellcheck source=.ci/services.sh
    source .ci/services.sh
    trap services_down EXIT
    services_up
fi
python -m pytest "$@"
