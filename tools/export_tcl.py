#!/usr/bin/env python
"""Shrink a TCL checkpoint (the authors' format, e.g. ``model_tcl_final.pth`` written by the TCL
objective's hook) to what ``MODEL.TCL.WEIGHTS`` reads: the ``model`` state dict, in fp16 by
default (``--fp32`` to keep fp32), with the authors' other keys kept empty so that the file stays
in their format.

    python tools/export_tcl.py output/pretrain_tcl_synthetic/model_tcl_final.pth checkpoints/tcl_synthetic.pth

The head computes in fp32 either way: loading copies the tensors into the model's parameters.
"""
import argparse
import os

import torch

from ttd_d2.modeling.backbone.tcl_checkpoint import read_tcl_state


def training_step(path: str) -> int:
    """The checkpoint's ``step``; 0 when it cannot be read without unpickling objects (the
    authors' files carry an OmegaConf ``config``, which ``weights_only`` refuses)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True).get("step", 0))
    except Exception:
        return 0


def export(src: str, dst: str, fp16: bool = True) -> int:
    """Write ``src``'s TCL state dict to ``dst`` (atomically); returns the tensor count."""
    if os.path.exists(dst) and not os.path.isfile(dst):
        raise ValueError(f"'{dst}' exists and is not a regular file")
    state = read_tcl_state(src, key="checkpoint")
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    step = training_step(src)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = dst + ".tmp"
    torch.save({"model": state, "optimizer": {}, "lr_scheduler": {}, "scaler": {}, "step": step, "config": None}, tmp)
    os.replace(tmp, dst)
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
    main()
