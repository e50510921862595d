#!/usr/bin/env bash
# Measures what the agent costs a connect-heavy workload: bench/connectloop
# bare, under `callscope run` and under a bpftrace one-liner, alternated.
# Kept for its old interface; bench/overhead.sh does the work and says how.
#
#   sudo bench/connect-overhead.sh [BIN] [ROUNDS] [SECS]
set -euo pipefail
exec "$(dirname "$0")/overhead.sh" connect "$@"
