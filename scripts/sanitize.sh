#!/usr/bin/env bash
# Build the C fast path with AddressSanitizer and UndefinedBehaviorSanitizer (gcc) into
# build/sanitize/, beside a copy of the package, and run the tests that drive the C path
# (in memory and through the pumps) against that build.  Any finding fails the run.
#   bash scripts/sanitize.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-$(pwd)/.venv/bin/python}"
out=build/sanitize
rm -rf "$out"
mkdir -p "$out/c"
cp -r vxland "$out/vxland"
cp -r native "$out/c/native"                  # cffi builds in its tmpdir, from sources relative to it
rm -f "$out"/vxland/_fastpath*.so
VXLAND_SANITIZE=1 "$python" -c "import sys; sys.path.insert(0, 'native'); import build_fastpath as b
b.ffibuilder.compile(tmpdir='$out/c', verbose=False)" >/dev/null
cp "$out"/c/vxland/_fastpath*.so "$out/vxland/"
tests=(tests/test_differential.py tests/test_offload.py tests/test_partial_checksums.py tests/test_pumps.py
       tests/test_golden.py tests/test_ipv6.py tests/test_policy.py tests/test_hardening.py tests/test_wire.py)
[ $# -gt 0 ] && tests=("$@")
export LD_PRELOAD="$(gcc -print-file-name=libasan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
PYTHONPATH="$(pwd)/$out" VXLAND_EXPECT_SANITIZED=1 "$python" -P -m pytest -q -p no:cacheprovider "${tests[@]}"
