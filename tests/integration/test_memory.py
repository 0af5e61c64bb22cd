"""memory.trim gives the free pages in malloc's heaps back to the system."""

from __future__ import annotations

import subprocess
import sys

import pytest

from saffron import memory

# In a fresh interpreter, straight through malloc as the encoders' buffers are:
# freeing one big mmapped block raises glibc's mmap threshold, so the 1 MB
# blocks after it come from the heap; a small block after each keeps what is
# freed off the heap's top, which glibc would trim by itself.
SCRIPT = """
import ctypes, os
from saffron import memory

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

libc.free(libc.malloc(8 << 20))
blocks, pins = [], []
for _ in range(150):
    blocks.append(libc.malloc(1 << 20))
    ctypes.memset(blocks[-1], 1, 1 << 20)
    pins.append(libc.malloc(1000))
for block in blocks:
    libc.free(block)
before = rss_mb()
assert memory.trim()
print(before, rss_mb())
"""


@pytest.mark.skipif(memory._TRIM is None, reason="malloc_trim is glibc's")
def test_trim_gives_freed_heap_memory_back() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True
    ).stdout
    before, after = map(float, out.split())
    assert before - after > 100, f"RSS {before:.0f} MB before the trim, {after:.0f} MB after"
