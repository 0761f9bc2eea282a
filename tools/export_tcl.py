#!/usr/bin/env python
"""Shrink a TCL checkpoint (the authors' format, e.g. ``model_tcl_final.pth`` written by the TCL
objective's hook) to what ``MODEL.TCL.WEIGHTS`` reads: the ``model`` state dict, in fp16 by
default (``--fp32`` to keep fp32), and its ``step``, with the authors' other keys kept empty so
that the file stays in their format.

    python tools/export_tcl.py output/synthetic/pretrain_tcl/model_tcl_final.pth checkpoints/tcl_synthetic.pth

The head computes in fp32 either way: loading copies the tensors into the model's parameters.
"""
import argparse
import os

from ttd_d2.modeling.backbone.tcl_checkpoint import read_tcl_checkpoint
from ttd_d2.modeling.lora.file import save_lora_file
from ttd_d2.utils.cli import run_tool


def export(src: str, dst: str, fp16: bool = True) -> int:
    """Write ``src``'s TCL state dict to ``dst`` (atomically); returns the tensor count."""
    if os.path.exists(dst) and not os.path.isfile(dst):
        raise ValueError(f"'{dst}' exists and is not a regular file")
    state, step = read_tcl_checkpoint(src, key="checkpoint")
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    content = {"model": state, "optimizer": {}, "lr_scheduler": {}, "scaler": {}, "step": step, "config": None}
    save_lora_file(content, dst)  # an atomic torch.save, as the TCL hook writes these files
    return len(state)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--fp32", action="store_true")
    args = parser.parse_args()
    n = export(args.src, args.dst, fp16=not args.fp32)
    print(f"wrote {n} tensors to {args.dst} ({os.path.getsize(args.dst) / 2**20:.1f} MiB)")


if __name__ == "__main__":
    run_tool(main)  # a missing or corrupt input: its message, no traceback
