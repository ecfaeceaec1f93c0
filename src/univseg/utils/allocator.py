"""Process-wide settings of the C memory allocator that holds the CPU tensors."""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
FIXED_THRESHOLD = 128 * 1024  # glibc's initial mmap threshold, kept fixed


def return_freed_memory() -> bool:
    """Make glibc serve every block of 128 KiB or more with its own mapping and unmap it when freed.

    By default glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB),
    so later activations of a training step come from the heap, which keeps freed memory and
    fragments: the process's resident memory grows far above what its live tensors need. A fixed
    threshold (setting it also stops the dynamic adjustment) returns freed activations to the OS at
    once, at the cost of a page fault per page of each new large tensor. Returns whether it applied:
    False where the C library is not glibc (e.g. macOS, musl), which is left as it is.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, FIXED_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, FIXED_THRESHOLD) == 1
