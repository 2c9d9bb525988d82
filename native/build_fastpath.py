"""cffi builder for vxland's fast path (API mode, out of line).

The cdef is native/fastpath.h itself, less the preprocessor lines cffi does not
read, so the header stays the one description of the C interface.  Paths come
from __file__ because setuptools runs this with a relative one and compile()
changes directory.
"""

import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "fastpath.h")
ROOT = os.path.dirname(HERE)
# setuptools wants sources relative to setup.py's directory, where it runs us.
SOURCES = [os.path.join("native", name) for name in ("table.c", "encap.c", "send.c", "decap.c", "offload.c", "answer.c", "neigh.c", "pump.c",
                                                          "thread.c")]


def cdef_text(header: str) -> str:
    """The header as cffi reads it: keep `#define NAME <int>`, drop other # lines."""
    keep = []
    for line in header.splitlines():
        if line.startswith("#") and not re.match(r"#define\s+VX_\w+\s+\d+", line):
            continue
        keep.append(re.sub(r"/\*.*?\*/", "", line) if line.startswith("#define") else line)
    return "\n".join(keep)


# VXLAND_SANITIZE=1: a build with AddressSanitizer and UndefinedBehaviorSanitizer, for
# scripts/sanitize.sh (which loads libasan first: Python itself is not built with it).
SANITIZE = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all"] if os.environ.get("VXLAND_SANITIZE") else []

ffibuilder = FFI()
with open(HEADER) as f:
    ffibuilder.cdef(cdef_text(f.read()))
ffibuilder.set_source(
    "vxland._fastpath",
    '#include "fastpath.h"',
    sources=SOURCES,
    include_dirs=[HERE],
    depends=[HEADER, os.path.join("native", "dataplane.h")],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", *SANITIZE],
    extra_link_args=SANITIZE[-2:] if SANITIZE else [],
)

if __name__ == "__main__":
    os.chdir(ROOT)
    ffibuilder.compile(verbose=True)
