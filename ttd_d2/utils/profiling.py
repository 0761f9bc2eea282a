"""Where a step's time goes: ``torch.profiler`` over a few calls of a step function, summarised
as the numbers issue "performance" asks for before and after each change: wall time per step,
the device's busy fraction (the union of its kernels' intervals over the wall time; the rest is
host gaps), device-to-host synchronisations per step (on CPU: host reads of scalars), the top
kernels (CPU: top operators), the host time of each labelled stage of the step (the
``torch.profiler.record_function`` ranges named ``STAGE_PREFIX...`` that the TTD step opens:
which part of the step keeps the host busy while the device waits), each stage's device time
(GPU: its kernels' busy time inside the stage's device-side span, and the device's idle time
there: which part of the step the device spends its time on, and where it starves), and the
device time by kernel family (matmul, attention, norms, copies and casts, ...:
:func:`kernel_category`).

Used by ``benchmarks/bench_ttd_step.py --profile`` and ``benchmarks/bench_eval_protocol.py
--profile``. The interval arithmetic is pure functions (:func:`busy_time`, :func:`stage_device_times`), tested on their own.
"""
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["HOST_READ_EVENT", "KERNEL_CATEGORIES", "STAGE_PREFIX", "SYNC_EVENTS", "ProfileSummary", "busy_time",
           "kernel_category", "profile_steps", "stage_device_times", "summarize_events"]

# CUDA runtime calls that block the host until the device catches up (``.item()``, ``bool(t)``,
# ``.cpu()`` of a device tensor end in ``cudaStreamSynchronize``).
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
# On CPU nothing synchronises; the report counts the host reads of scalars instead (what would
# sync on a GPU if the tensor were there; CPU-side ones such as AdamW's step counters included).
HOST_READ_EVENT = "aten::_local_scalar_dense"
# Names of the step's labelled stages (``record_function(STAGE_PREFIX + "teacher")`` ...).
STAGE_PREFIX = "ttd."


# Kernel families of the device-time breakdown, as (category, name fragments), checked in order:
# the first category with a fragment in a kernel's (lower-cased) name gets its time. Attention
# comes before matmul (cuDNN's attention kernels are named like GEMMs); "fused" is inductor's,
# whose GEMM templates (``triton_tem_``, max-autotune; their epilogues fused in) count as matmul.
KERNEL_CATEGORIES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("attention", ("sdpa", "flash", "fmha", "attention", "attn")),
    ("matmul", ("nvjet", "gemm", "cutlass", "xmma", "cublas", "splitk", "mma_", "triton_tem_")),
    ("pamr", ("_refine_step_kernel", "_affinity_kernel")),
    ("window stitching", ("_stitch_kernel",)),
    ("fused (inductor)", ("triton_",)),
    ("norm", ("layer_norm", "layernorm", "batch_norm", "group_norm")),
    ("copy / cast", ("copy", "catarray", "transpose", "permute")),
    ("resize", ("upsample", "interpolate", "bilinear", "bicubic")),
    ("elementwise / reduce", ("elementwise", "reduce", "softmax", "gelu", "index", "fill", "where")),
)


def kernel_category(name: str) -> str:
    """The :data:`KERNEL_CATEGORIES` family of a kernel name ("other" if none)."""
    lowered = name.lower()
    for category, fragments in KERNEL_CATEGORIES:
        if any(f in lowered for f in fragments):
            return category
    return "other"


def busy_time(intervals: Sequence[Tuple[float, float]]) -> float:
    """Length of the union of ``[start, end)`` intervals (any unit): overlapping kernels (several
    streams) are counted once."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def stage_device_times(spans: Sequence[Tuple[str, float, float]],
                       kernels: Sequence[Tuple[float, float]]) -> List[Tuple[str, float, float]]:
    """(stage, busy, span) per stage name, summed over its ``spans`` (name, start, end) and in
    order of first start: ``busy`` is the union of the ``kernels`` intervals clipped to each span,
    ``span`` the spans' length, so ``span - busy`` is the device's idle time inside the stage.

    A stage's device-side span runs from its first kernel's start to its last kernel's end (the
    profiler's ``gpu_user_annotation``); nested stages lie inside their parent's."""
    ordered = sorted(kernels)
    first: Dict[str, float] = {}
    busy: Dict[str, float] = defaultdict(float)
    length: Dict[str, float] = defaultdict(float)
    for name, start, end in spans:
        first[name] = min(first.get(name, start), start)
        clipped = [(max(s, start), min(e, end)) for s, e in ordered if s < end and e > start]
        busy[name] += busy_time(clipped)
        length[name] += end - start
    return [(name, busy[name], length[name]) for name in sorted(first, key=first.get)]


@dataclass
class ProfileSummary:
    """One profiled run of ``steps`` calls; times in ms per step."""

    steps: int
    wall_ms: float
    device: str
    device_busy_ms: Optional[float] = None  # union of kernel intervals (None on CPU)
    syncs: float = 0.0  # SYNC_EVENTS per step (CPU: HOST_READ_EVENT per step)
    sync_counts: Dict[str, float] = field(default_factory=dict)
    top: List[Tuple[str, float, float]] = field(default_factory=list)  # (name, ms per step, calls per step)
    stages: List[Tuple[str, float]] = field(default_factory=list)  # (stage, host ms per step), in order
    # (stage, device busy ms per step, device span ms per step), in order (GPU only): stage_device_times
    device_stages: List[Tuple[str, float, float]] = field(default_factory=list)
    launches: float = 0.0  # kernels per step (CPU: aten operators called from Python, the host's dispatches)
    categories: Dict[str, float] = field(default_factory=dict)  # device ms per step by kernel_category (GPU only)

    @property
    def device_busy_fraction(self) -> Optional[float]:
        return None if self.device_busy_ms is None else self.device_busy_ms / max(self.wall_ms, 1e-9)

    @property
    def host_gap_ms(self) -> Optional[float]:
        return None if self.device_busy_ms is None else max(0.0, self.wall_ms - self.device_busy_ms)

    def to_dict(self) -> Dict:
        out = asdict(self)
        out.update(device_busy_fraction=self.device_busy_fraction, host_gap_ms=self.host_gap_ms)
        return out

    def table(self) -> str:
        """A short text report: the headline numbers, then the top kernels (operators on CPU)."""
        lines = [f"profile over {self.steps} steps on {self.device}: {self.wall_ms:.2f} ms/step wall"]
        if self.device_busy_ms is not None:
            lines.append(f"  device busy {self.device_busy_ms:.2f} ms/step ({100 * self.device_busy_fraction:.1f} %), "
                         f"host gaps {self.host_gap_ms:.2f} ms/step")
        counts = ", ".join(f"{k} {v:g}" for k, v in self.sync_counts.items() if v) or "none"
        what = "device-to-host syncs" if self.device_busy_ms is not None else "host reads of scalars"
        lines.append(f"  {what} per step: {self.syncs:g} ({counts})")
        lines.append(f"  {'kernels' if self.device_busy_ms is not None else 'operators called from Python'} per step: {self.launches:g}")
        lines.append(f"  top {'kernels' if self.device_busy_ms is not None else 'operators (self time)'}:")
        lines += [f"    {ms:8.3f} ms  {calls:6.1f} x  {name[:100]}" for name, ms, calls in self.top]
        if self.categories:
            lines.append("  device time by kernel family (kernel intervals summed):")
            lines += [f"    {ms:8.3f} ms  {name}" for name, ms in self.categories.items()]
        if self.stages:
            lines.append("  host time of the labelled stages (nested stages inside their parent's):")
            lines += [f"    {ms:8.3f} ms  {name}" for name, ms in self.stages]
        if self.device_stages:
            lines.append("  device time of the labelled stages (kernels busy / first-to-last-kernel span, idle = span - busy):")
            lines += [f"    {busy:8.3f} / {span:8.3f} ms  (idle {span - busy:7.3f})  {name}"
                      for name, busy, span in self.device_stages]
        return "\n".join(lines)


def _is_device_event(event) -> bool:
    return str(getattr(event, "device_type", "")).endswith(("CUDA", "PrivateUse1"))


def _stage_times(events, steps: int) -> List[Tuple[str, float]]:
    """(stage name, host ms per step) of the ``STAGE_PREFIX`` ranges, in order of first start."""
    first: Dict[str, float] = {}
    total: Dict[str, float] = defaultdict(float)
    for e in events:
        if e.name.startswith(STAGE_PREFIX) and not _is_device_event(e):
            first.setdefault(e.name, e.time_range.start)
            total[e.name] += (e.time_range.end - e.time_range.start) / 1e3 / steps
    return [(name, total[name]) for name in sorted(first, key=first.get)]


def summarize_events(events, steps: int, wall_ms: float, device: str, top: int = 12) -> ProfileSummary:
    """:class:`ProfileSummary` of a profiler's ``events()`` (``torch.autograd.profiler_util.
    FunctionEvent`` list) recorded over ``steps`` steps lasting ``wall_ms`` in all."""
    # a labelled stage's device-side annotation spans its gaps too: not a kernel
    on_device = [e for e in events if _is_device_event(e) and not e.name.startswith(STAGE_PREFIX)]
    stage_spans = [(e.name, e.time_range.start, e.time_range.end) for e in events
                   if _is_device_event(e) and e.name.startswith(STAGE_PREFIX)]
    syncs = {name: 0.0 for name in (SYNC_EVENTS if on_device else (HOST_READ_EVENT,))}
    for e in events:
        if e.name in syncs and not _is_device_event(e):
            syncs[e.name] += 1.0 / steps
    by_name: Dict[str, List[float]] = defaultdict(lambda: [0.0, 0.0])
    if on_device:
        for e in on_device:
            by_name[e.name][0] += (e.time_range.end - e.time_range.start) / 1e3 / steps
            by_name[e.name][1] += 1.0 / steps
        busy = busy_time([(e.time_range.start, e.time_range.end) for e in on_device]) / 1e3 / steps
    else:
        for e in events:
            if e.cpu_parent is None or e.name.startswith("aten::"):
                by_name[e.name][0] += e.self_cpu_time_total / 1e3 / steps
                by_name[e.name][1] += 1.0 / steps
        busy = None
    if on_device:
        launches = len(on_device) / steps
    else:
        launches = sum(1 for e in events if e.name.startswith("aten::")
                       and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))) / steps
    ranked = sorted(((n, ms, calls) for n, (ms, calls) in by_name.items()), key=lambda r: -r[1])[:top]
    categories: Dict[str, float] = defaultdict(float)
    if on_device:
        for name, (ms, _) in by_name.items():
            categories[kernel_category(name)] += ms
    return ProfileSummary(steps=steps, wall_ms=wall_ms / steps, device=device, device_busy_ms=busy,
                          syncs=sum(syncs.values()), sync_counts=syncs, top=ranked,
                          stages=_stage_times(events, steps), launches=launches,
                          device_stages=[(name, b / 1e3 / steps, span / 1e3 / steps) for name, b, span in
                                         stage_device_times(stage_spans, [(e.time_range.start, e.time_range.end)
                                                                          for e in on_device])],
                          categories=dict(sorted(categories.items(), key=lambda kv: -kv[1])))


def profile_steps(step: Callable[[], object], steps: int, device: torch.device,
                  trace_path: Optional[str] = None, top: int = 12) -> ProfileSummary:
    """Run ``step()`` ``steps`` times under ``torch.profiler`` (CPU, and CUDA on a CUDA device)
    and summarise it; ``trace_path`` also writes the Chrome trace (chrome://tracing, Perfetto).
    Warm the step up before calling this: the first calls' allocations and autotuning would
    otherwise be profiled."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
        wall_ms = 1e3 * (time.perf_counter() - start)
    if trace_path:
        prof.export_chrome_trace(trace_path)
    summary = summarize_events(prof.events(), steps, wall_ms, str(device), top=top)
    if cuda:  # the two torch.cuda.synchronize above are the timing's, not the step's
        own = min(2.0 / steps, summary.sync_counts.get("cudaDeviceSynchronize", 0.0))
        summary.sync_counts["cudaDeviceSynchronize"] -= own
        summary.syncs -= own
    return summary
