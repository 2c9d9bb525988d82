"""The README stays true to the code: CI runs its test command; its tables list what exists."""

import pathlib
import re

from vxland.daemon import KERNEL_DROPS
from vxland.datapath import DropReason

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def quick_start_commands():
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_quick_start_has_two_commands_and_ci_runs_the_test_one():
    demo, test = quick_start_commands()
    assert "demo" in demo and "pytest" in test
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test in ci_lines


def test_every_drop_reason_is_documented():
    documented = set(re.findall(r"^\| `(\w+)`(?: / `(\w+)`)?", README, re.M))
    names = {n for pair in documented for n in pair if n}
    assert names == {r.name for r in DropReason} | set(KERNEL_DROPS)


def test_every_flag_of_run_is_in_the_flags_table_and_every_row_is_a_flag():
    from vxland.cli import build_parser
    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]
    flags = {s for a in run._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
    table = README.split("| flag | meaning |", 1)[1].split("\n\n", 1)[0]
    documented = set(re.findall(r"^\| `(--[\w-]+)", table, re.M))
    assert documented == flags - {"--verbose", "--config"}, (flags - documented, documented - flags)
