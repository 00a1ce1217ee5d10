#!/usr/bin/env bash
# rpc-profile.sh: where the wall time of one RPC through the Redis API goes.
#
# Runs `peer-bench` with one client (256 B, one relay, reliable), traces the socket
# system calls of every process of its network with `perf trace` for a fraction of a
# second, and prints one RPC's hops in time order: which process read or wrote how many
# bytes, when (µs since the client's LPUSH), and how long the process had been busy
# since its previous event. docs/performance.md "Where the wall time goes" explains the
# steps. Needs root (perf) and a release build:
#
#   cargo build --release -p rmb-peer -p rmb-relay --bins
#   scripts/rpc-profile.sh [TRACE_SECONDS] [peer-bench flags...]
set -euo pipefail

cd "$(dirname "$0")/.."
secs=${1:-0.2}
shift || true
bench=target/release/peer-bench
[ -x "$bench" ] || { echo "build first: cargo build --release -p rmb-peer -p rmb-relay --bins" >&2; exit 2; }
command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 2; }

work=$(mktemp -d)
pid=""
# peer-bench kills its network when it ends by itself; on a signal its children would
# be left, so they are killed first.
stop() {
    local kids
    [ -n "$pid" ] || { rm -rf "$work"; return; }
    kids=$(pgrep -P "$pid" || true)
    [ -z "$kids" ] || kill $kids 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap stop EXIT
"$bench" --duration 8 --clients 1 --sizes 256 --delivery reliable --topology one-relay \
    --burst 0 "$@" >"$work/bench.txt" 2>&1 &
pid=$!
sleep 4
children=$(pgrep -P "$pid" | paste -sd, -)
[ -n "$children" ] || { echo "peer-bench did not start:" >&2; cat "$work/bench.txt" >&2; exit 1; }
# Roles in the order peer-bench starts them.
{
    redis=(redis-A redis-B) peers=(peer-A peer-B) r=0 p=0
    for child in ${children//,/ }; do
        case $(cat "/proc/$child/comm") in
            redis-server) role=${redis[$r]:-redis}; r=$((r + 1)) ;;
            rmb-relay) role=relay ;;
            rmb-peer) role=${peers[$p]:-peer}; p=$((p + 1)) ;;
            *) role=other ;;
        esac
        for task in /proc/"$child"/task/*; do echo "${task##*/} $role"; done
    done
    for task in /proc/"$pid"/task/*; do echo "${task##*/} bench"; done
} >"$work/tids"
perf trace -p "$pid,$children" -e read,write,writev,sendto,recvfrom -o "$work/trace.txt" \
    -- sleep "$secs" >/dev/null 2>&1
python3 - "$work/tids" "$work/trace.txt" <<'EOF'
import re, sys
roles = dict(line.split() for line in open(sys.argv[1]))
events = []
pat = re.compile(r"^\s*([\d.]+) \(\s*([\d.]+) ms\): \S+?/(\d+) (\w+)\(fd: (\d+).*\)\s+= (\d+)")
for line in open(sys.argv[2]):
    m = pat.match(line)
    if not m or float(m.group(1)) > 1e9:
        continue
    t, dur, tid, call, fd, n = m.groups()
    role = roles.get(tid, "?")
    kind = "read" if call in ("read", "recvfrom") else "write"
    events.append((float(t) * 1000, role, kind, int(fd), int(n), float(dur) * 1000))
events.sort()
# An RPC starts when redis A reads what the bench wrote just before (the client's LPUSH
# of the request; the bench's other writes go to redis B) and ends at the next one.
starts = [i for i, e in enumerate(events)
          if e[1] == "redis-A" and e[2] == "read" and e[4] > 300
          and any(p[1] == "bench" and p[2] == "write" and p[4] == e[4] for p in events[max(0, i - 4):i])]
if len(starts) < 3:
    sys.exit(f"only {len(starts)} RPCs seen in the trace; trace longer")
a, b = starts[len(starts) // 2], starts[len(starts) // 2 + 1]
window = [e for e in events[a - 4:b] if e[1] != "?"]
t0 = next(e[0] for e in window if e[1] == "bench" and e[2] == "write")
window = [e for e in window if e[0] >= t0]
print(f"one RPC of {len(starts)} traced; µs since the client's LPUSH (perf trace adds ~10-20 µs per system call)")
print(f"{'at µs':>8} {'process':<8} {'call':<5} {'fd':>3} {'bytes':>6} {'since prev µs':>13}")
prev = {}
for t, role, kind, fd, n, dur in window:
    gap = f"{t - prev[role]:.0f}" if role in prev else ""
    prev[role] = t
    print(f"{t - t0:8.0f} {role:<8} {kind:<5} {fd:>3} {n:>6} {gap:>13}")
EOF
