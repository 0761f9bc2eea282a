"""What the micro-benchmarks share: the mean time of a call, the device's name for the report
and the precision they time in (bf16 on CUDA, as the towers run under autocast; float32 on
the CPU, where bf16 is emulated on most hosts)."""
import time

import torch


def time_ms(fn, repeats: int, device: torch.device) -> float:
    """Mean milliseconds per call of ``fn`` (CUDA events on CUDA, wall clock elsewhere)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / repeats
    begin = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - begin) * 1e3 / repeats


def device_name(device: torch.device) -> str:
    """The GPU's name (e.g. "NVIDIA H100 80GB HBM3"), or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def bench_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA, float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32
