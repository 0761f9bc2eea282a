"""``torch.compile`` of the towers' transformer blocks (and of PAMR's iteration), with a fallback
to eager execution.

Why blocks: they are the fixed-shape part of both passes (the test-time protocol's windows, a
training step's images; text batches come in a few padded shapes), while what surrounds them
(tag batches, sliding windows, the dense heads' custom last block) is Python control flow that
would only break graphs. Each block's ``forward`` is wrapped, so whatever the block runs at its
first call is traced: LoRA adapters added later (``lora/``), their side branches and the
teacher's adapters-off path (a guard on the adapters' ``enabled`` flags: one graph each). Mode
``reduce-overhead`` adds CUDA graphs, which remove the kernel launches that keep the TTD step
and the test-time protocol host-bound on a GPU (benchmarks/README.md).

Fallback: if compiling a block fails when it is first called (no C++ compiler for inductor on
CPU, an unsupported op, a backend error), that block logs one warning and runs eagerly from then
on; a genuine error of the block is then raised by the eager call itself. Errors of the compiled
backward surface in ``backward()`` and are not caught.

CUDA graphs (modes ``reduce-overhead``, ``max-autotune``) write a graph's outputs into static
buffers that its next replay overwrites, and all blocks of a tower replay the same graph (their
weights are its inputs): block k's output would be overwritten by block k+1's call while the
residual stream still reads it (the GPU host raised exactly that). So under CUDA graphs the
wrapper returns a copy of each output, torch's documented remedy; it costs one activation copy
per block call, which the removed kernel launches pay for.

Regions: a wrapped function called while dynamo traces another one (a block inside
``CLIPDense``'s gradient-free dense tower, ``_dense_tower``) runs its eager function, so the
outer region is traced as one graph: its blocks' adds and layer norms can fuse across block
boundaries, and under CUDA graphs only the region's output is copied, not each block's.
"""
import copy
import logging
from typing import Iterable, Tuple

import torch
from torch import nn

__all__ = ["COMPILE_MODES", "CompiledWithFallback", "check_compile_backend", "compile_backends", "compile_blocks", "is_compiling"]

logger = logging.getLogger(__name__)
# torch.compile's modes ("" = no compilation).
COMPILE_MODES = ("", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Modes whose inductor graphs run as CUDA graphs (their outputs are copied, see above).
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
# Graphs dynamo keeps per code object before it runs new variants eagerly (torch's default is 8).
# All blocks of a tower share their graphs (their adapted modules share one class: lora/inject.py),
# but a TTD step has many variants: two towers, adapters on (student) and off (frozen teacher),
# with and without grad, and a few padded text lengths; the tiny test CLIP's training step and
# inference together need 8 (tests/modeling/test_compile.py).
RECOMPILE_LIMIT = 64
# Whether dynamo is tracing the caller (torch.compiler's since 2.3, torch._dynamo's before).
is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or torch._dynamo.is_compiling


def compile_backends() -> Tuple[str, ...]:
    """The ``torch.compile`` backends this installation has (``inductor``, ``aot_eager``, ...)."""
    return tuple(sorted(torch._dynamo.list_backends(exclude_tags=())))


def check_compile_backend(mode: str, backend: str) -> None:
    """Raise a ValueError naming the fix for an unknown mode or backend."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"MODEL.CLIP.COMPILE.MODE '{mode}' unknown; use one of {COMPILE_MODES}")
    if mode and backend not in compile_backends():
        raise ValueError(f"MODEL.CLIP.COMPILE.BACKEND '{backend}' is not a torch.compile backend here; "
                         f"use one of {compile_backends()}")


class CompiledWithFallback:
    """A block's ``forward`` (or any function, e.g. PAMR's step): compiled, or eager once
    compiling it has failed. ``eager`` is the class's ``forward`` bound to the block; a deep copy
    of the block gets a wrapper of its own. ``dynamic``: torch.compile's (False: one graph per
    shape; None: dynamic shapes after the second)."""

    def __init__(self, eager, name: str, mode: str, backend: str, dynamic=False):
        self.eager, self.name, self.mode, self.backend, self.dynamic = eager, name, mode, backend, dynamic
        options = {"mode": mode} if backend == "inductor" else {}  # modes are inductor's
        self.compiled = torch.compile(eager, backend=backend, dynamic=dynamic, **options)
        self.copy_outputs = backend == "inductor" and mode in CUDAGRAPH_MODES
        self.failed = False

    def __deepcopy__(self, memo):
        return CompiledWithFallback(copy.deepcopy(self.eager, memo), self.name, self.mode, self.backend, self.dynamic)

    def __call__(self, *args, **kwargs):
        if is_compiling():
            return self.eager(*args, **kwargs)  # inside a compiled region: traced as part of it
        if not self.failed:
            try:
                out = self.compiled(*args, **kwargs)
                return torch.utils._pytree.tree_map_only(torch.Tensor, torch.clone, out) if self.copy_outputs else out
            except Exception as error:  # noqa: BLE001 -- any compile failure falls back; eager re-raises real ones
                self.failed = True
                logger.warning("torch.compile of %s failed (%s: %s); running it eagerly",
                               self.name, type(error).__name__, str(error).splitlines()[0] if str(error) else "")
        return self.eager(*args, **kwargs)


def compile_blocks(blocks: Iterable[nn.Module], prefix: str, mode: str, backend: str = "inductor",
                   dynamic=False) -> int:
    """Wrap each block's ``forward`` in :class:`CompiledWithFallback` (an instance attribute, so
    ``block(x)`` and the class's own callers go through it); returns how many were wrapped.
    ``mode`` "" compiles nothing; ``dynamic`` as in :class:`CompiledWithFallback`."""
    check_compile_backend(mode, backend)
    if not mode:
        return 0
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # renamed in torch 2.6
    setattr(config, limit, max(getattr(config, limit), RECOMPILE_LIMIT))
    count = 0
    for index, block in enumerate(blocks):
        if isinstance(block.__dict__.get("forward"), CompiledWithFallback):
            continue  # compiled already
        block.forward = CompiledWithFallback(block.forward, f"{prefix}.{index}", mode, backend, dynamic)
        count += 1
    return count
