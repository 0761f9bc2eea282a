#!/usr/bin/env python
"""Export the open_clip weights of a ttd_d2 checkpoint as a plain open_clip checkpoint.

    python tools/export_clip.py output/synthetic/pretrain_tiny_clip/model_final.pth checkpoints/tiny_clip_synthetic.pt

The result loads with ``MODEL.CLIP.PRETRAINED <file>`` or ``open_clip.create_model(arch,
pretrained=<file>)``. Tensors are stored in fp16 by default (``--fp32`` to keep fp32).
"""
import argparse
import os

import torch

from ttd_d2.modeling.lora.file import save_lora_file
from ttd_d2.utils.cli import run_tool

PREFIX = "backbone.clip."


def export(src: str, dst: str, fp16: bool = True) -> int:
    """Write the ``backbone.clip.*`` tensors of ``src`` to ``dst``; returns the tensor count."""
    if not os.path.isfile(src):
        raise FileNotFoundError(f"checkpoint '{src}' does not exist")
    if os.path.exists(dst) and not os.path.isfile(dst):
        raise ValueError(f"'{dst}' exists and is not a regular file")
    state = torch.load(src, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    clip = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    if not clip:
        raise ValueError(f"'{src}' holds no '{PREFIX}*' weights: is it a ttd_d2 checkpoint?")
    if any(k.startswith("visual.tcl_head.") for k in clip):  # ttd_d2/modeling/backbone/tcl.py: HEAD_NAME
        raise ValueError(f"'{src}' is a TCL model: its CLIP is the frozen MODEL.CLIP.PRETRAINED, and its head is "
                         "no part of an open_clip model (write it in TCL's format with tcl_checkpoint.tcl_checkpoint)")
    if any(".parametrizations." in k or ".lora_" in k for k in clip):
        raise ValueError("the checkpoint has LoRA adapters: export the base model, or merge them first")
    if fp16:
        clip = {k: v.half() if v.is_floating_point() else v for k, v in clip.items()}
    save_lora_file(clip, dst)  # an atomic torch.save
    return len(clip)


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
