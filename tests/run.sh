#!/usr/bin/env bash
# Runs the whole rmb test suite, exactly as CI does (.ci/run calls this script).
#
#   tests/run.sh            formatting check, clippy (warnings are errors), every test
#
# Needs a Rust toolchain (https://rustup.rs). Installs what else the tests need when it
# is missing: Debian's redis-server and haproxy (tests start their own servers on free
# ports; relay_haproxy.rs runs docs/examples/haproxy.cfg), nftables and faketime (the
# network-fault tests, tests/tests/faults/, drop packets with nft and shift a peer's
# clock with libfaketime), docker.io and docker-compose (deploy_docker.rs builds the
# container images and runs deploy/compose/compose.yaml; it starts dockerd itself).
# ../shared (the reference folder beside the checkout) must exist: the rmb-rs
# compatibility tests read their vectors from it, the tfchain tests start a local chain
# with ../shared/tfchain/start-local-chain (which needs node, present on this machine kind).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust from https://rustup.rs, then run this again" >&2
    exit 1
fi

step() { printf '\n==> %s\n' "$*"; }

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v faketime >/dev/null 2>&1 || missing+=(faketime)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    missing+=(docker-compose)
fi
if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]} (Debian packages)"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "all tests passed"
