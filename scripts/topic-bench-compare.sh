#!/usr/bin/env bash
# Compares two builds with topic-bench while both run at the same time, so that both see
# the same machine. On the 2-core development machine, one build's figures drift by up
# to 50% between minutes, which hides any change smaller than that when builds take
# turns. Running both at once halves each one's share of the CPU, but both get the same
# half, so the ratio of their CPU per delivery (and p50) within a turn is steady to a few
# percent. The build started second gains about 3%; the sides swap every turn.
#
#   scripts/topic-bench-compare.sh DIR_A DIR_B [TURNS] [RELAYS]
#
# Each DIR holds a release `topic-bench` and `rmb-relay` (copy them out of target/release
# before and after a change). TURNS defaults to 8, RELAYS (1 or 2) to 2. Prints each
# turn's figures and the median ratio B/A. Costs paid per second rather than per delivery
# (timers) weigh about twice as much here as in a run alone, the message rate being half.
set -euo pipefail

a=${1:?usage: $0 DIR_A DIR_B [TURNS] [RELAYS]}
b=${2:?usage: $0 DIR_A DIR_B [TURNS] [RELAYS]}
turns=${3:-8}
relays=${4:-2}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

run() { # side dir: prints "side p50 cpu"
    nice -n -15 "$2/topic-bench" --relay-bin "$2/rmb-relay" --subscribers 100 --no-nats \
        --relays "$relays" --closed-loop 1000 --burst-deliveries 100 2>/dev/null |
        awk -F'|' -v side="$1" '/^\| rmb/ { gsub(/ /, "", $5); gsub(/ /, "", $7); print side, $5, $7 }'
}

for t in $(seq 1 "$turns"); do
    if ((t % 2)); then
        run A "$a" >"$out.A" & sleep 0.2; run B "$b" >"$out.B" &
    else
        run B "$b" >"$out.B" & sleep 0.2; run A "$a" >"$out.A" &
    fi
    wait
    read -r _ pa ca <"$out.A"
    read -r _ pb cb <"$out.B"
    echo "turn $t: A p50 $pa ms, $ca µs/delivery; B p50 $pb ms, $cb µs/delivery"
    echo "$pa $ca $pb $cb" >>"$out"
done
rm -f "$out.A" "$out.B"

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "B/A p50, median of $turns turns: $(awk '{ printf "%.3f\n", $3 / $1 }' "$out" | median)"
echo "B/A CPU per delivery, median of $turns turns: $(awk '{ printf "%.3f\n", $4 / $2 }' "$out" | median)"
