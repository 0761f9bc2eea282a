"""The auto / eager / triton choice of the inference's hand-written Triton kernels.

PAMR (``MODEL.SEG_INFERENCE.PAMR.KERNEL``) and the sliding-window stitching
(``MODEL.SEG_INFERENCE.STITCH_KERNEL``) each have an eager implementation that runs anywhere and
a Triton kernel for CUDA tensors. One rule for both: "auto" takes Triton on CUDA tensors when it
is importable and falls back to eager, with one warning, if a kernel fails (e.g. on a GPU that
Triton cannot target); "triton" insists (and raises); "eager" never uses Triton.

Triton is an optional dependency (CUDA builds of torch ship it): ``available()`` says whether it
is importable. Its kernels run on CUDA tensors, and on CPU tensors only in Triton's interpreter
(``TRITON_INTERPRET=1`` set before Triton is imported: what the tests do).
"""
import logging
import os
from typing import Callable, TypeVar

import torch

try:  # optional: CUDA builds of torch ship Triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is absent
    triton = None

    class tl:  # noqa: N801 -- stands in for triton.language so that kernels can be defined
        constexpr = int

logger = logging.getLogger(__name__)

__all__ = ["KERNELS", "KernelChoice", "available", "check_runnable", "interpreting", "tl", "triton"]

KERNELS = ("auto", "eager", "triton")

T = TypeVar("T")


def available() -> bool:
    """Whether Triton is importable (the kernels can run)."""
    return triton is not None


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (TRITON_INTERPRET=1): CPU tensors work then."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def check_runnable(tensor: torch.Tensor, key: str) -> None:
    """Triton present, and a CUDA tensor or the interpreter: else an error naming the fix."""
    if triton is None:
        raise RuntimeError(f"{key} 'triton' needs Triton (pip install triton; CUDA builds of torch ship it); "
                           f"or set {key} eager")
    if tensor.device.type != "cuda" and not interpreting():
        raise ValueError(f"{key} 'triton' runs on CUDA tensors, got {tensor.device} (the tests run it on the CPU with "
                         f"TRITON_INTERPRET=1); use {key} eager or auto")


class KernelChoice:
    """Which implementation of one operation runs, and the fall-back of "auto"."""

    def __init__(self, kernel: str, key: str):
        """
        Args:
            kernel: one of :data:`KERNELS`.
            key: the config key that sets it (named in errors and warnings).
        """
        if kernel not in KERNELS:
            raise ValueError(f"{key} '{kernel}' unknown; use one of {KERNELS}")
        if kernel == "triton" and not available():
            raise ValueError(f"{key} 'triton' needs Triton (CUDA builds of torch ship it; pip install triton), "
                             "or use 'auto' or 'eager'")
        self.kernel, self.key = kernel, key
        self.failed = False  # "auto" after a Triton error: eager from then on

    def uses_triton(self, device: torch.device) -> bool:
        """Whether calls on tensors of ``device`` run the Triton kernel."""
        return self.kernel == "triton" or (self.kernel == "auto" and not self.failed
                                           and device.type == "cuda" and available())

    def run(self, device: torch.device, triton_fn: Callable[[], T], eager_fn: Callable[[], T], what: str) -> T:
        """``triton_fn()`` where :meth:`uses_triton`, else ``eager_fn()``; under "auto" a Triton
        error logs one warning (naming ``what`` and the key that silences it) and runs eagerly,
        then and from then on."""
        if not self.uses_triton(device):
            return eager_fn()
        try:
            return triton_fn()
        except Exception as error:  # noqa: BLE001 -- "auto" never fails where eager works
            if self.kernel != "auto":
                raise
            self.failed = True
            message = str(error).splitlines()[0] if str(error) else ""
            logger.warning("%s's Triton kernels failed (%s: %s); running %s eagerly (%s eager silences this)",
                           what, type(error).__name__, message, what, self.key)
            return eager_fn()
