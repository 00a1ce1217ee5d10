#!/usr/bin/env bash
# The long soak of issue #33: builds rmb-relay, rmb-peer and rmb in release, and the
# rmb-soak harness (the apps and the accounting) in the test suite's debug profile, whose
# dependencies are usually built already (SOAK_PROFILE=release builds it in release too).
# Then runs RPCs, topics and pipes across two federating relays for --duration seconds
# while relays, peers and Redis servers are killed and stalled on a schedule, and prints
# the accounting, each process's RSS and open files, and a verdict; the exit code is
# rmb-soak's (0 only when nothing was lost or duplicated and growth stayed bounded).
#
#   scripts/soak.sh                      # one hour at 400 RPC/s (the defaults)
#   scripts/soak.sh --duration 120       # a two-minute trial
#   scripts/soak.sh --help               # every flag of rmb-soak
#
# Needs redis-server on the PATH. Set RMB_BIN_DIR to run binaries built elsewhere (the
# build is then limited to the harness); RMB_TEST_LOG=info shows the processes' logs.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ -z "${RMB_BIN_DIR:-}" ]]; then
    cargo build --release --locked -p rmb-relay -p rmb-peer -p rmb-cli --bins
    export RMB_BIN_DIR="$root/target/release"
fi
if [[ "${SOAK_PROFILE:-dev}" == release ]]; then
    cargo build --release --locked -p rmb-tests --bin rmb-soak
    harness="$root/target/release/rmb-soak"
else
    cargo build --locked -p rmb-tests --bin rmb-soak
    harness="$root/target/debug/rmb-soak"
fi

for bin in rmb-relay rmb-peer rmb; do
    if [[ ! -x "$RMB_BIN_DIR/$bin" ]]; then
        echo "soak.sh: $RMB_BIN_DIR/$bin is missing" >&2
        exit 2
    fi
done
command -v redis-server >/dev/null || { echo "soak.sh: redis-server is not on the PATH" >&2; exit 2; }

echo "soak.sh: binaries from $RMB_BIN_DIR, started $(date -u +%FT%TZ)" >&2
exec "$harness" "$@"
