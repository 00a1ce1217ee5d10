#!/usr/bin/env bash
# The README's first command: builds rmb and runs `rmb demo` (two federating relays, a
# registry, two peers with fresh twins, an echo bot, calls across them), on this machine.
#
#   scripts/demo.sh            run the demo until Ctrl-C
#   scripts/demo.sh --once     make the calls, print the report, stop (exit 0 = all good)
#
# Needs a Rust toolchain (https://rustup.rs). Installs Debian's redis-server when it is
# missing (with sudo unless run as root); every Redis the demo uses is its own, on a
# free port, stopped with the demo.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust from https://rustup.rs, then run this again" >&2
    exit 1
fi

if ! command -v redis-server >/dev/null 2>&1; then
    echo "==> installing redis-server (Debian package)" >&2
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq redis-server >/dev/null
fi

echo "==> building rmb, rmb-relay and rmb-peer (release; the first build takes a few minutes)" >&2
cargo build --release --quiet --bin rmb --bin rmb-relay --bin rmb-peer

exec "${CARGO_TARGET_DIR:-target}/release/rmb" demo "$@"
