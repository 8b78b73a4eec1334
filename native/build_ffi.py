"""cffi (API mode) build of the native engines (DHCP responder, route fast path) into ``agent._native``.

setup.py names ``native/build_ffi.py:ffibuilder`` in ``cffi_modules``; ``scripts/sanitize.sh``
runs this file directly with ``ACA_NATIVE_CFLAGS`` in a copy of the tree to get an instrumented
build in place.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
HEADERS = ("dhcp.h", "route.h")  # the Python-facing API; table.h and pktio.h stay internal
HEADER = "\n".join((HERE / name).read_text() for name in HEADERS)


def _cdef() -> str:
    """The header's declarations without preprocessor lines or comments (cffi parses plain C)."""
    text = re.sub(r"/\*.*?\*/", "", HEADER, flags=re.S)
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    defines = re.findall(r"^#define ((?:DHCP|ROUTE)_\w+) (\w+)", HEADER, flags=re.M)
    return "\n".join(lines) + "".join(f"\n#define {name} {value}" for name, value in defines)


# No -Werror here: a compiler newer than CI's must not fail an install over a new warning;
# scripts/sanitize.sh (CI) builds with -Werror.
CFLAGS = ["-Wall", "-Wextra", "-O2", *shlex.split(os.environ.get("ACA_NATIVE_CFLAGS", ""))]

ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "agent._native",
    "".join(f'#include "{name}"\n' for name in HEADERS),
    # Relative to the project root: setuptools wants relative sources (setup.py runs from there).
    sources=["native/dhcp.c", "native/route.c", "native/table.c", "native/pktio.c"],
    include_dirs=["native"],
    extra_compile_args=CFLAGS,
    extra_link_args=["-pthread", *shlex.split(os.environ.get("ACA_NATIVE_LDFLAGS", ""))],
)

if __name__ == "__main__":
    # In place: agent/_native*.so next to the package (scripts/sanitize.sh runs this in a copy).
    os.chdir(HERE.parent)
    ffibuilder.compile(tmpdir=".", verbose=True)
