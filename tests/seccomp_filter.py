"""Run a command under a system-call filter like a systemd unit's `SystemCallFilter=~GROUP...`:
the groups' system calls fail with EPERM (`SystemCallErrorNumber=EPERM`), everything else is
allowed.  systemd itself does not run here; its own `systemd-analyze syscall-filter` says
which calls a group holds, and the kernel's header which number each has.

    python tests/seccomp_filter.py @privileged @resources -- COMMAND ARGS...

The process must have no_new_privs set already (setpriv --no-new-privs), as a unit with a
filter has; the filter is inherited by everything the command starts.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys

UNISTD = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
AUDIT_ARCH_X86_64 = 0xC000003E
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
EPERM = 1
LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]


def calls(group: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of a systemd group, its nested groups expanded."""
    seen = seen if seen is not None else set()
    out = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True, text=True, check=True)
    names: set[str] = set()
    for line in out.stdout.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if word.startswith("@"):
            if word not in seen:
                seen.add(word)
                names |= calls(word, seen)
        else:
            names.add(word)
    return names


def numbers(names: set[str]) -> list[int]:
    with open(UNISTD) as f:
        table = dict(re.findall(r"#define __NR_(\w+)\s+(\d+)", f.read()))
    return sorted({int(table[n]) for n in names if n in table})


def install(denied: list[int]) -> None:
    n = len(denied)
    program = [SockFilter(LD_W_ABS, 0, 0, 4),                                  # the architecture
               SockFilter(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
               SockFilter(RET_K, 0, 0, SECCOMP_RET_ALLOW),
               SockFilter(LD_W_ABS, 0, 0, 0)]                                  # the call's number
    program += [SockFilter(JEQ_K, n - i, 0, nr) for i, nr in enumerate(denied)]
    program += [SockFilter(RET_K, 0, 0, SECCOMP_RET_ALLOW), SockFilter(RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM)]
    array = (SockFilter * len(program))(*program)
    prog = SockFprog(len(program), array)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def main() -> None:
    split = sys.argv.index("--")
    groups, command = sys.argv[1:split], sys.argv[split + 1:]
    install(numbers(set().union(*(calls(g) for g in groups))))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
