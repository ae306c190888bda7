"""The loader workers' host memory policy (cutie/utils/host_memory.py): freed malloc blocks come back warm."""

from __future__ import annotations

import subprocess
import sys

# 64 MB through plain malloc (as numpy and OpenCV allocate), every page written, freed; minor faults counted.
SCRIPT = """
import ctypes, resource, sys
from cutie.utils import host_memory
if sys.argv[1] == "keep":
    assert host_memory.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
def faults_of_one_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(64 << 20)
    ctypes.memset(p, 1, 64 << 20)
    libc.free(ctypes.c_void_p(p))
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_block()
print(min(faults_of_one_block() for _ in range(3)))
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_freed_blocks_are_reused_without_page_faults() -> None:
    pages = (64 << 20) // 4096
    assert _faults("default") > pages // 4  # glibc maps and unmaps a 64 MB block every time
    assert _faults("keep") < pages // 100  # the same heap pages come back warm
