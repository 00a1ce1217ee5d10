#!/usr/bin/env bash
# Connections to a twin behind NAT (issue #15), with real Linux network namespaces:
#
#   root ns ("outside": a twin with an rmb-peer, `rmb call`, `rmb forward`)
#     └─ veth ─ nat-pub (the relay, 10.77.1.1)
#                 └─ veth ─ nat-router (masquerades 10.77.2.0/24; forwards only
#                             outgoing connections and their replies)
#                             └─ veth ─ nat-inner (rmb-peer --expose, a bot, a TCP service)
#
# Shows: the outside twin calls the inside bot (request/response) and reaches the inside
# TCP service through a forwarded connection, while a direct TCP connection from
# outside to the inside fails.
#
# Needs root. Installs iproute2 and nftables with apt-get when missing. Exits 77 (with
# the reason on stdout) when namespaces cannot be created. Cleans up every namespace
# and process it made. Usage: RMB_BIN_DIR=target/debug tests/nat/connections-nat.sh
set -euo pipefail

BIN=${RMB_BIN_DIR:?set RMB_BIN_DIR to the directory of rmb, rmb-peer and rmb-relay}
TAG=rmbnat$$
PUB=$TAG-pub ROUTER=$TAG-rt INNER=$TAG-in
WORK=$(mktemp -d)
PIDS=()

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; for f in "$WORK"/*.log; do echo "== $f"; tail -n 20 "$f"; done; exit 1; }

cleanup() {
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    for ns in "$PUB" "$ROUTER" "$INNER"; do ip netns del "$ns" 2>/dev/null || true; done
    ip link del "${TAG}a" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || skip "not root: network namespaces need CAP_SYS_ADMIN"
install() {
    command -v apt-get >/dev/null || skip "$1 missing and no apt-get to install it"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >"$WORK/apt.log" 2>&1 \
        || { apt-get update -q >>"$WORK/apt.log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >>"$WORK/apt.log" 2>&1; } \
        || skip "could not install $2 (see apt-get)"
}
command -v ip >/dev/null || install ip iproute2
command -v nft >/dev/null || install nft nftables
command -v redis-server >/dev/null || skip "redis-server is not installed"
ip netns add "$PUB" 2>/dev/null || skip "cannot create network namespaces here"
ip netns add "$ROUTER"
ip netns add "$INNER"

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
link() { # link NS_A IF_A ADDR_A NS_B IF_B ADDR_B (NS "" = root)
    ip link add "$2" type veth peer name "$5"
    [ -n "$1" ] && ip link set "$2" netns "$1"
    ip link set "$5" netns "$4"
    if [ -n "$1" ]; then in_ns "$1" ip addr add "$3" dev "$2"; in_ns "$1" ip link set "$2" up
    else ip addr add "$3" dev "$2"; ip link set "$2" up; fi
    in_ns "$4" ip addr add "$6" dev "$5"; in_ns "$4" ip link set "$5" up
}
for ns in "$PUB" "$ROUTER" "$INNER"; do in_ns "$ns" ip link set lo up; done
link "" "${TAG}a" 10.77.3.1/24 "$PUB" pub0 10.77.3.2/24
link "$PUB" pub1 10.77.1.1/24 "$ROUTER" rt0 10.77.1.2/24
link "$ROUTER" rt1 10.77.2.1/24 "$INNER" in0 10.77.2.2/24
# Outside reaches the relay's network, and has a route towards the inside network too
# (so only the NAT's firewall stands in the way of a direct connection).
ip route add 10.77.1.0/24 via 10.77.3.2
ip route add 10.77.2.0/24 via 10.77.3.2
in_ns "$PUB" sysctl -qw net.ipv4.ip_forward=1
in_ns "$PUB" ip route add 10.77.2.0/24 via 10.77.1.2
in_ns "$ROUTER" sysctl -qw net.ipv4.ip_forward=1
in_ns "$ROUTER" ip route add default via 10.77.1.1
in_ns "$INNER" ip route add default via 10.77.2.1
in_ns "$ROUTER" nft -f - <<'NFT'
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "rt0" ip saddr 10.77.2.0/24 masquerade
    }
}
table inet filter {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "rt1" oifname "rt0" accept
    }
}
NFT

start() { # start NAME NS CMD... (NS "" = root); logs to $WORK/NAME.log
    local name=$1 ns=$2; shift 2
    if [ -n "$ns" ]; then ip netns exec "$ns" "$@" >"$WORK/$name.log" 2>&1 &
    else "$@" >"$WORK/$name.log" 2>&1 & fi
    PIDS+=($!)
}
wait_for() { # wait_for WHAT SECONDS CMD...
    local what=$1 secs=$2; shift 2
    for _ in $(seq $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    fail "$what"
}
tcp_open() { # tcp_open NS HOST PORT
    local ns=$1; shift
    if [ -n "$ns" ]; then in_ns "$ns" timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2"
    else timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2"; fi
}

RELAY=10.77.1.1:18080
# Ports in the root namespace, shared with other tests running at the same time. They are
# taken below the kernel's ephemeral range (outgoing connections of other tests never get
# them; ports derived from the pid used to collide with those) among ports nothing listens on.
free_port() { # free_port [EXCEPT]
    local low high port
    read -r low high < /proc/sys/net/ipv4/ip_local_port_range
    [ "$low" -gt 12000 ] || low=32768
    for _ in $(seq 200); do
        port=$((10000 + RANDOM % (low - 10000)))
        [ "$port" != "${1:-}" ] || continue
        tcp_open "" 127.0.0.1 "$port" || { echo "$port"; return 0; }
    done
    fail "no free port below $low"
}
OUT_REDIS=$(free_port) FWD_PORT=$(free_port "$OUT_REDIS")
export RUST_LOG=${RMB_TEST_LOG:-warn}
mkdir -p "$WORK/relay"
start relay "$PUB" "$BIN/rmb-relay" --listen 0.0.0.0:18080 --domain "$RELAY" --data-dir "$WORK/relay"
wait_for "the relay to listen" 20 tcp_open "" 10.77.1.1 18080

INNER_SECRET=//Alice OUTER_SECRET=//Bob
register() {
    "$BIN/rmb" twin register -m "$1" --registry "http://$RELAY" --relay "$RELAY" --json \
        | grep -o '"id": *[0-9]*' | grep -o '[0-9]*$'
}
INNER_TWIN=$(register "$INNER_SECRET")
OUTER_TWIN=$(register "$OUTER_SECRET")
OTHER_TWIN=$(register //Charlie)
echo "inside twin $INNER_TWIN, outside twin $OUTER_TWIN"

# Inside: Redis (the local TCP service too), rmb-peer exposing it to the outside twin
# only, and a bot answering `echo`.
start redis-in "$INNER" redis-server --port 6390 --bind 127.0.0.1 --save '' --appendonly no
wait_for "the inside Redis" 10 tcp_open "$INNER" 127.0.0.1 6390
start peer-in "$INNER" "$BIN/rmb-peer" -m "$INNER_SECRET" --redis redis://127.0.0.1:6390 \
    --relay "ws://$RELAY" --registry "http://$RELAY" \
    --expose "redis=127.0.0.1:6390,allow=$OUTER_TWIN"
start bot "$INNER" "$BIN/rmb" serve -r redis://127.0.0.1:6390 --cmd echo --echo

# Outside: its own rmb-peer for `rmb call`.
start redis-out "" redis-server --port $OUT_REDIS --bind 127.0.0.1 --save '' --appendonly no
wait_for "the outside Redis" 10 tcp_open "" 127.0.0.1 $OUT_REDIS
start peer-out "" "$BIN/rmb-peer" -m "$OUTER_SECRET" --redis redis://127.0.0.1:$OUT_REDIS \
    --relay "ws://$RELAY" --registry "http://$RELAY"

# 1. The outside twin calls the bot behind the NAT.
call() { "$BIN/rmb" call -r redis://127.0.0.1:$OUT_REDIS --dst "$INNER_TWIN" --cmd echo --data "hello from outside" -t 5; }
wait_for "a call to the bot behind the NAT" 60 call
reply=$(call)
echo "call: $reply"
grep -q "hello from outside" <<<"$reply" || fail "the bot's reply: $reply"

# 2. A forwarded TCP connection reaches the inside service (Redis answers PING).
start forward "" "$BIN/rmb" forward --listen 127.0.0.1:$FWD_PORT --to "$INNER_TWIN" --protocol redis \
    -m "$OUTER_SECRET" --relay "ws://$RELAY" --registry "http://$RELAY" --no-update
wait_for "rmb forward to listen" 30 tcp_open "" 127.0.0.1 $FWD_PORT
ping_inside() {
    exec 3<>/dev/tcp/127.0.0.1/$FWD_PORT
    printf 'PING\r\n' >&3
    local line; IFS= read -r -t 15 line <&3; exec 3<&-
    [ "${line%$'\r'}" = "+PONG" ]
}
ping_inside || fail "PING through the forwarded connection"
echo "forward: PING → +PONG through the NAT"
# Bytes both ways in bulk: set and read back a 100 KB value.
big=$(head -c 75000 /dev/urandom | base64 -w0)
exec 3<>/dev/tcp/127.0.0.1/$FWD_PORT
printf '*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%s\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n' "${#big}" "$big" >&3
IFS= read -r -t 15 ok <&3; IFS= read -r -t 15 len <&3; IFS= read -r -t 15 got <&3; exec 3<&-
[ "${ok%$'\r'}" = "+OK" ] && [ "${got%$'\r'}" = "$big" ] || fail "100 KB through the forwarded connection"
echo "forward: 100 KB value written and read back intact"

# 3. The inside is not reachable directly from outside.
if tcp_open "" 10.77.2.2 6390 2>/dev/null; then fail "a direct TCP connection reached the inside"; fi
echo "direct: TCP from outside to 10.77.2.2:6390 fails (NAT)"

# 4. A twin not on the access list (twin $OTHER_TWIN) is refused.
if timeout 20 "$BIN/rmb" pipe connect --to "$INNER_TWIN" --protocol redis -m //Charlie \
    --relay "ws://$RELAY" --registry "http://$RELAY" </dev/null >"$WORK/charlie.log" 2>&1; then
    fail "a twin outside the access list connected"
fi
grep -q "does not allow us" "$WORK/charlie.log" || fail "the refusal: $(cat "$WORK/charlie.log")"
echo "access list: $(tail -n1 "$WORK/charlie.log")"
echo "PASS"
