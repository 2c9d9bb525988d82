"""The C fast path under the sanitizers, in the suite: every libFuzzer harness of fuzz/ runs for
a bounded time (scripts/fuzz.sh; longer campaigns by hand), and the tests that drive the C path
run against an ASan/UBSan build of it (scripts/sanitize.sh), and the data-path thread races the
control plane under ThreadSanitizer (scripts/race.sh).  A finding fails the suite."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ_SECONDS = os.environ.get("VXLAND_FUZZ_SECONDS", "15")   # a guard in the suite: campaigns by hand


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


def test_the_data_path_thread_and_the_control_plane_do_not_race():
    """fuzz/race.c under ThreadSanitizer: the thread pumps both ways while another thread
    changes the tables, reads counters, takes sightings and re-watches the TAP."""
    out = run("bash", "scripts/race.sh", "10", timeout=300)
    assert "sightings taken" in out
