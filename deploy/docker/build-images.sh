#!/usr/bin/env bash
# Builds the rmb container images FROM scratch out of binaries already built on this
# machine: rmb-relay, rmb-peer (with the rmb CLI for its health check), rmb (the CLI:
# keys, registration, calls, bots) and, for the compose example, a Redis made of the
# host's redis-server.
#
# Why this way: the images need no registry (nothing is pulled: every layer is COPYed
# from here) and no shell, curl or package manager inside them. Our binaries link glibc
# dynamically, so each image gets exactly the shared libraries and loader `ldd` lists
# for its binaries, copied from this machine; an image therefore runs the glibc of the
# machine that built it. deploy/docker/Dockerfile.source is the other path, for machines
# that can pull rust and debian images. docs/deployment.md ("Container images") explains
# both; tests/tests/deploy_docker.rs runs this script.
#
#   cargo build --release --bin rmb-relay --bin rmb-peer --bin rmb
#   deploy/docker/build-images.sh                      # rmb-relay:latest, rmb-peer:latest, rmb:latest, rmb-redis:latest
#   deploy/docker/build-images.sh --bin-dir target/debug --tag test1 --no-redis
#
# Options: --bin-dir DIR (default target/release), --tag TAG (default latest),
# --no-redis (skip the Redis image), --keep-context DIR (stage there and keep it).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
bin_dir="$root/target/release"
tag="latest"
redis=1
keep=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) bin_dir="$(cd "$2" && pwd)"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --no-redis) redis=0; shift ;;
        --keep-context) keep="$2"; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

for bin in rmb-relay rmb-peer rmb; do
    [ -x "$bin_dir/$bin" ] || {
        echo "$bin_dir/$bin not found: build it first (cargo build --release --bin $bin)" >&2
        exit 1
    }
done
command -v docker >/dev/null || { echo "docker not found" >&2; exit 1; }

if [ -n "$keep" ]; then
    mkdir -p "$keep"
    context="$(cd "$keep" && pwd)"
else
    context="$(mktemp -d)"
    trap 'rm -rf "$context"' EXIT
fi

# The shared libraries and the loader a binary needs, as ldd prints their paths.
libraries() {
    ldd "$1" | awk '
        $2 == "=>" && $3 ~ /^\// { print $3 }
        $1 ~ /^\// { print $1 }'
}

# stage ROOTFS BINARY... : a root file system holding BINARY (stripped of debug info)
# under /usr/local/bin, its libraries at the paths the loader looks in, a passwd entry
# for the service user (uid 10001), host lookups from /etc/hosts and DNS, and the
# machine's CA bundle (the binaries also carry Mozilla's roots built in).
stage() {
    local rootfs="$1"
    shift
    mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs"
    local bin lib
    for bin in "$@"; do
        cp -L "$bin" "$rootfs/usr/local/bin/"
        if command -v strip >/dev/null; then
            strip --strip-debug "$rootfs/usr/local/bin/$(basename "$bin")"
        fi
        for lib in $(libraries "$bin"); do
            mkdir -p "$rootfs$(dirname "$lib")"
            cp -L "$lib" "$rootfs$lib"
        done
    done
    printf 'root:x:0:0:root:/:/sbin/nologin\nrmb:x:10001:10001:rmb:/data:/sbin/nologin\n' \
        >"$rootfs/etc/passwd"
    printf 'root:x:0:\nrmb:x:10001:\n' >"$rootfs/etc/group"
    printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
    fi
}

rm -rf "${context:?}"/{relay,peer,cli,redis,state}
# /data in every image: an empty directory COPYed with the service user as owner.
mkdir -p "$context/state"
stage "$context/relay" "$bin_dir/rmb-relay"
stage "$context/peer" "$bin_dir/rmb-peer" "$bin_dir/rmb"
stage "$context/cli" "$bin_dir/rmb"
targets=(relay:rmb-relay peer:rmb-peer cli:rmb)
if [ "$redis" = 1 ]; then
    server="$(command -v redis-server || true)"
    [ -n "$server" ] || {
        echo "redis-server not found (apt-get install redis-server), or use --no-redis" >&2
        exit 1
    }
    # Debian's redis-server is a link to redis-check-rdb, and the binary picks its mode
    # by the name it runs under: cp -L copies it under the link's name, redis-server.
    stage "$context/redis" "$server"
    # redis-cli answers the image's health check (Debian's redis-tools, which
    # redis-server depends on).
    stage "$context/redis" "$(command -v redis-cli)"
    targets+=(redis:rmb-redis)
fi
cp "$root/deploy/docker/Dockerfile" "$context/Dockerfile"

for pair in "${targets[@]}"; do
    target="${pair%%:*}"
    image="${pair#*:}:$tag"
    echo "==> $image (target $target)"
    docker build --quiet --target "$target" --tag "$image" "$context" >/dev/null
    docker image ls --format '    {{.Repository}}:{{.Tag}}  {{.Size}}' "$image"
done
