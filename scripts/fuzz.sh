#!/usr/bin/env bash
# Build the libFuzzer harnesses of fuzz/ (clang, with ASan and UBSan) and run each one.
#   bash scripts/fuzz.sh [SECONDS] [HARNESS ...]     default: 30 s each, every harness
# Corpora grow in build/fuzz/corpus/<harness>/ (kept between runs); seeds come from the
# golden pcaps and from fuzz/regressions/<harness>/, the inputs of every finding so far.
# A finding stops the run, is saved as build/fuzz/findings/<harness>-crash-..., and makes
# this script exit non-zero.  Keep it: copy it into fuzz/regressions/<harness>/ with the fix.
# Harnesses run as many at once as there are cores (FUZZ_PARALLEL=1: one after another).
# A long campaign: bash scripts/fuzz.sh 3600 pump   (or FUZZ_JOBS=2 for two processes)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
shift || true
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(decap tap coalesce pump)
command -v clang >/dev/null || { echo "fuzz.sh: needs clang (apt-get install clang libclang-rt-14-dev)" >&2; exit 2; }
python="${PYTHON:-.venv/bin/python}"
build=build/fuzz
mkdir -p "$build/findings" "$build/seeds"
sources="native/table.c native/encap.c native/send.c native/decap.c native/offload.c native/answer.c native/neigh.c native/pump.c native/thread.c"
flags="-g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Inative -Ifuzz"
"$python" fuzz/seeds.py "$build/seeds"
for h in "${harnesses[@]}"; do
    extra=""
    [ "$h" = pump ] && extra="-Dvx_recvmmsg=fuzz_recvmmsg"
    # shellcheck disable=SC2086
    clang $flags $sources $extra "fuzz/$h.c" -o "$build/$h"
done

fuzz() {                                   # one harness; its summary on stdout
    local h=$1
    mkdir -p "$build/corpus/$h"
    local dirs=("$build/corpus/$h" "$build/seeds/$h")
    [ -d "fuzz/regressions/$h" ] && dirs+=("fuzz/regressions/$h")
    echo "== fuzz $h for ${seconds} s"
    if ! ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
        "$build/$h" -max_total_time="$seconds" -max_len=600000 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 ${FUZZ_JOBS:+-jobs=$FUZZ_JOBS -workers=$FUZZ_JOBS} \
        -artifact_prefix="$build/findings/$h-" "${dirs[@]}" >"$build/$h.log" 2>&1; then
        echo "fuzz.sh: $h found a bug; input and log: $build/findings/$h-*, $build/$h.log"
        tail -40 "$build/$h.log"
        return 1
    fi
    grep -E "^stat::number_of_executed_units|^stat::new_units_added" "$build/$h.log" | tr '\n' ' '; echo
}

# As many harnesses at once as there are cores (FUZZ_PARALLEL), each for SECONDS.
parallel="${FUZZ_PARALLEL:-$(nproc)}"
status=0
running=()
for h in "${harnesses[@]}"; do
    fuzz "$h" >"$build/$h.summary" 2>&1 &
    running+=("$!:$h")
    if [ ${#running[@]} -ge "$parallel" ] || [ "$h" = "${harnesses[-1]}" ]; then
        for job in "${running[@]}"; do
            wait "${job%%:*}" || status=1
            cat "$build/${job#*:}.summary"
        done
        running=()
    fi
done
exit $status
