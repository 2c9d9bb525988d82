#!/usr/bin/env bash
# Build fuzz/race.c -- the data-path thread pumping both ways while another thread does what
# the control plane does -- with ThreadSanitizer (clang) and run it.  A data race, a leak or a
# deadlock fails the run.  Needs root (a raw socket).
#   bash scripts/race.sh [SECONDS]      default 10
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
command -v clang >/dev/null || { echo "race.sh: needs clang (scripts/install.sh --test)" >&2; exit 2; }
mkdir -p build/race
sources="native/table.c native/encap.c native/send.c native/decap.c native/offload.c native/answer.c native/neigh.c native/pump.c native/thread.c"
# shellcheck disable=SC2086
clang -g -O1 -std=gnu11 -fsanitize=thread -Inative $sources fuzz/race.c -o build/race/race -lpthread
TSAN_OPTIONS="halt_on_error=1 exitcode=66 report_signal_unsafe=0" timeout $((seconds + 120)) build/race/race "$seconds"
