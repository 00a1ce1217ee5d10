#!/usr/bin/env bash
# Runs cargo-fuzz targets one after another for a number of executions each and prints
# a Markdown table of what was measured (the table in fuzz/README.md comes from here).
#
#   fuzz/run.sh                      every target, 10 000 000 executions each
#   RUNS=100000 fuzz/run.sh conn_wire topic_wire
#   MAX_TIME=240 fuzz/run.sh         stop each target after 240 s if 10 million take longer
#
# Needs nightly and cargo-fuzz (`cargo install cargo-fuzz --locked`). Each target starts
# from fuzz/seeds/<target> and fuzz/regressions/<target>; what it finds new goes to
# fuzz/corpus/<target> (not committed), crashes to fuzz/artifacts/<target>. Logs in
# fuzz/logs/<target>.log. Built without a sanitizer (`-s none`): the code is safe Rust,
# and the speed goes to executions.
set -euo pipefail
cd "$(dirname "$0")"

RUNS=${RUNS:-10000000}
MAX_TIME=${MAX_TIME:-0}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# BUILD=0: use the binaries already built.
[ "${BUILD:-1}" = 0 ] || cargo +nightly fuzz build -s none -O >/dev/null
mkdir -p logs
echo "| target | executions | exec/s | duration | coverage (cov / ft) | corpus | crashes |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "regressions/$target"
    start=$(date +%s)
    status=0
    mkdir -p "artifacts/$target"
    # The binary cargo-fuzz built, run directly: `cargo fuzz run` would rebuild first.
    nice -n 10 "target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release/$target" \
        -artifact_prefix="artifacts/$target/" -runs="$RUNS" -max_total_time="$MAX_TIME" \
        -max_len=4096 -print_final_stats=1 "corpus/$target" "seeds/$target" "regressions/$target" \
        >"logs/$target.log" 2>&1 || status=$?
    secs=$(grep -o 'Done [0-9]* runs in [0-9]*' "logs/$target.log" | grep -o '[0-9]*$' \
        || echo $(( $(date +%s) - start )))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$target.log" | grep -o '[0-9]*$' || echo "?")
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "logs/$target.log" | grep -o '[0-9]*$' || echo "?")
    last=$(grep -E '^#[0-9]+' "logs/$target.log" | tail -1)
    cov=$(echo "$last" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*' || echo "?")
    ft=$(echo "$last" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*' || echo "?")
    corpus=$(echo "$last" | grep -o 'corp: [0-9]*' | grep -o '[0-9]*' || echo "?")
    crashes=0
    [ "$status" -ne 0 ] && crashes="1 (see logs/$target.log)"
    echo "| \`$target\` | $execs | $rate | ${secs} s | $cov / $ft | $corpus | $crashes |"
done
