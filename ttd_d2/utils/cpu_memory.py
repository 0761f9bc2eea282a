"""Let glibc's malloc keep freed memory for reuse, so that large CPU tensors do not fault in
fresh pages at every allocation.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap``
and returns it to the system when freed, so each new activation of a CPU training step (a
[32, 192, 64, 64] float32 map is 100 MiB) is zero-filled page by page on first touch: on the
2-core development machine the synthetic benchmark's TTD step spent more time in those page
faults than in its convolutions (benchmarks/README.md, "The CPU quickstart's time"). PyTorch's
CPU allocator is plain ``malloc`` (no caching allocator as on CUDA), so the remedy is glibc's
own: ``mallopt(M_MMAP_MAX, 0)`` serves large blocks from the heap, and a high
``M_TRIM_THRESHOLD`` keeps freed heap memory for the next step. Values are unchanged: only
where memory comes from. The process keeps its peak memory until it exits.
"""
import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 2 ** 31 - 1  # mallopt takes an int: keep up to 2 GiB of freed heap

_applied = None


def keep_freed_cpu_memory() -> bool:
    """Apply the two ``mallopt`` settings to this process (once; later calls return the first
    result). Returns whether they took effect: False where the C library is not glibc."""
    global _applied
    if _applied is None:
        _applied = _mallopt()
        if _applied:
            logger.info("glibc malloc keeps freed memory (M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GiB): "
                        "CPU tensors reuse it instead of faulting in new pages")
    return _applied


def _mallopt() -> bool:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):  # musl / macOS / Windows
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
