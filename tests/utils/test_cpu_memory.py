"""ttd_d2.utils.cpu_memory: large CPU tensors come from the heap, not from fresh mmaps."""
import ctypes
import ctypes.util
import subprocess
import sys
import textwrap

import pytest

glibc = ctypes.CDLL(ctypes.util.find_library("c"))
needs_glibc = pytest.mark.skipif(not hasattr(glibc, "mallinfo2"), reason="glibc >= 2.33 (mallinfo2)")

# In a fresh interpreter: bytes held in mmap'd blocks (mallinfo2's hblkhd) while a 64 MiB tensor
# is alive, before and after keep_freed_cpu_memory, and the values computed both times.
SCRIPT = textwrap.dedent("""
    import ctypes, ctypes.util, json, torch
    from ttd_d2.utils.cpu_memory import keep_freed_cpu_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = MallInfo2

    def mmapped_bytes_and_sum():
        x = torch.arange(16 * 2 ** 20, dtype=torch.float32)  # 64 MiB: above glibc's mmap threshold
        return libc.mallinfo2().hblkhd, float(x.sum())

    before = mmapped_bytes_and_sum()
    applied = keep_freed_cpu_memory()
    after = mmapped_bytes_and_sum()
    print(json.dumps({"before": before, "applied": applied, "again": keep_freed_cpu_memory(), "after": after}))
""")


@needs_glibc
def test_large_tensors_come_from_the_heap_after_the_call():
    import json

    out = json.loads(subprocess.run([sys.executable, "-c", SCRIPT], check=True, capture_output=True, text=True).stdout)
    assert out["applied"] is True and out["again"] is True
    assert out["before"][0] >= 64 * 2 ** 20  # glibc's default: the tensor is its own mmap
    assert out["after"][0] < 64 * 2 ** 20  # now from the heap
    assert out["before"][1] == out["after"][1]  # the same values


def test_without_glibc_nothing_is_applied(monkeypatch):
    from ttd_d2.utils import cpu_memory

    monkeypatch.setattr(cpu_memory, "_applied", None)
    monkeypatch.setattr(cpu_memory.ctypes.util, "find_library", lambda name: None)
    assert cpu_memory.keep_freed_cpu_memory() is False
