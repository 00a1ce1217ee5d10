#!/usr/bin/env bash
# Runs the whole rmb test suite, exactly as CI does (.ci/run calls this script).
#
#   tests/run.sh            formatting check, clippy (warnings are errors), every test
#
# Needs: a Rust toolchain (https://rustup.rs). Installs nothing else yet; services the
# tests need (redis-server for relay/peer tests) are added here as those tests arrive.
# ../shared (the reference folder beside the checkout) must exist: the rmb-rs
# compatibility tests read their vectors from it.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust from https://rustup.rs, then run this again" >&2
    exit 1
fi

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "all tests passed"
