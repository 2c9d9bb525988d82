"""The C fast path under the sanitizers, in the suite: every libFuzzer harness of fuzz/ runs for
a bounded time (scripts/fuzz.sh; longer campaigns by hand), and the tests that drive the C path
run against an ASan/UBSan build of it (scripts/sanitize.sh).  A finding fails the suite."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ_SECONDS = os.environ.get("VXLAND_FUZZ_SECONDS", "30")


def run(*cmd, timeout):
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout


def test_fuzz_harnesses_find_nothing():
    out = run("bash", "scripts/fuzz.sh", FUZZ_SECONDS, timeout=4 * int(FUZZ_SECONDS) + 300)
    for harness in ("decap", "tap", "coalesce", "pump"):
        assert f"== fuzz {harness}" in out
    assert out.count("stat::number_of_executed_units") == 4


def test_the_c_path_under_asan_and_ubsan():
    out = run("bash", "scripts/sanitize.sh", timeout=900)
    assert " passed" in out and "failed" not in out
