"""TCL checkpoints in the authors' format (kakaobrain/tcl, ``utils/checkpoint.py``): reading
one into ``TCLHead`` + the masker, and writing one (tests, conversions).

The file is ``torch.save({"model": state_dict, "optimizer", "lr_scheduler", "scaler", "step",
"config"})``; only ``"model"`` is read. Its keys, for TCL's ViT configuration (one copied block,
``ie_freeze`` 11 of 12; a decoder of 2 blocks of 2 gated convolutions), and ours in ``TCLHead``
(``backbone.clip.visual.tcl_head.<ours>`` in a ttd_d2 model):

========================================================================  =======================================
authors' key                                                              ours
========================================================================  =======================================
``masker.image_encoder.backbone.transformer.resblocks.0.<p>``             ``block.<p>`` (ln_1, attn, ln_2, mlp)
``masker.image_encoder.decoder.decoder.net.<i>.conv.{norm,conv}.<p>``     ``decoder.blocks.<i>.convs.0.{norm,conv}.<p>``
``masker.image_encoder.decoder.decoder.net.<i>.conv.gate.gate``           ``decoder.blocks.<i>.convs.0.gate``
``masker.image_encoder.decoder.decoder.net.<i>.conv2.*``                  ``decoder.blocks.<i>.convs.1.*`` (same)
``masker.image_encoder.decoder.image_proj.ln.{weight,bias}``              ``ln_post.{weight,bias}``
``masker.image_encoder.decoder.image_proj.proj``                          ``proj``
``masker.sim2mask.{w,b}``                                                 the masker's ``w``, ``b``
========================================================================  =======================================

Keys of the frozen CLIP (``clip_image_encoder.*``, ``clip_text_encoder.*``: not in the released
file, which TCL's own loader tolerates; the CLIP comes from ``MODEL.CLIP.PRETRAINED``) and of
TCL's losses (``tcli_loss.*``, ``tclf_loss.*``: their learnable temperatures) are skipped. Any
other key, a missing key or a shape that differs is an error naming the key.
"""
import logging
import os
import re
from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import nn

logger = logging.getLogger(__name__)

WEIGHTS_KEY = "MODEL.TCL.WEIGHTS"
BLOCK = "masker.image_encoder.backbone.transformer.resblocks.0."
DECODER = "masker.image_encoder.decoder.decoder.net."
IMAGE_PROJ = "masker.image_encoder.decoder.image_proj."
MASKER_KEYS = {"masker.sim2mask.w": "w", "masker.sim2mask.b": "b"}
SKIPPED_PREFIXES = ("clip_image_encoder.", "clip_text_encoder.", "tcli_loss.", "tclf_loss.")
_DECODER_KEY = re.compile(r"decoder\.blocks\.(\d+)\.convs\.([01])\.(.+)")


def authors_key(name: str) -> str:
    """The key in TCL's checkpoint of the ``TCLHead`` state-dict entry ``name``."""
    if name.startswith("block."):
        return BLOCK + name[len("block."):]
    if name.startswith("ln_post."):
        return IMAGE_PROJ + "ln." + name[len("ln_post."):]
    if name == "proj":
        return IMAGE_PROJ + "proj"
    match = _DECODER_KEY.fullmatch(name)
    if match:
        block, conv, rest = match.groups()
        return f"{DECODER}{block}.{('conv', 'conv2')[int(conv)]}.{'gate.gate' if rest == 'gate' else rest}"
    raise KeyError(f"TCLHead entry '{name}' has no counterpart in TCL's checkpoint format")


class _Placeholder:
    """Stands in for every object of the file that is neither a tensor nor a plain container
    (TCL's OmegaConf ``config``, ...): none of the file's own classes is imported or run."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def read_tcl_state(path: str, key: str = WEIGHTS_KEY) -> Dict[str, torch.Tensor]:
    """The ``"model"`` state dict of a TCL checkpoint (:func:`read_tcl_checkpoint`)."""
    return read_tcl_checkpoint(path, key)[0]


def read_tcl_checkpoint(path: str, key: str = WEIGHTS_KEY) -> Tuple[Dict[str, torch.Tensor], int]:
    """The ``"model"`` state dict of a TCL checkpoint and its ``"step"`` (0 if absent), loaded
    with ``weights_only=True``.

    The file's ``config`` is a pickled OmegaConf object, which ``weights_only`` refuses; torch's
    own list of the file's other globals (``get_unsafe_globals_in_checkpoint``) is mapped onto
    an inert placeholder instead, so the tensors load without trusting the file's pickles.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{key} '{path}' does not exist. Give TCL's checkpoint (e.g. tcl.pth of kakaobrain/tcl's release, "
            f"downloaded on a machine with network), or '' to start TCL's head from the CLIP's last block."
        )
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        with torch.serialization.safe_globals([(_Placeholder, name) for name in unsafe]):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch zip file, truncated, ...
        raise ValueError(f"{key} '{path}' cannot be read as a torch checkpoint ({type(e).__name__}: {e})") from e
    state = content.get("model") if isinstance(content, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{key} '{path}' is not a TCL checkpoint in the authors' format: expected a dict with a 'model' state "
            f"dict (and 'optimizer', 'lr_scheduler', 'scaler', 'step', 'config'), got "
            f"{sorted(content) if isinstance(content, Mapping) else type(content).__name__}"
        )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{key} '{path}': 'model' entries {bad[:5]} are not tensors")
    step = content.get("step", 0)
    return dict(state), int(step) if isinstance(step, (int, float, torch.Tensor)) else 0


def load_tcl_checkpoint(head: nn.Module, path: str, key: str = WEIGHTS_KEY) -> Dict[str, torch.Tensor]:
    """Copy a TCL checkpoint into ``head`` (a ``TCLHead`` without adapters) and return the
    masker's trained ``{"w", "b"}`` (Sim2Mask). Every key of the table above must be there
    with ``head``'s shape; keys outside it and the skipped prefixes are refused."""
    state = read_tcl_state(path, key)
    ours = head.state_dict()
    expected = {authors_key(name): name for name in ours}
    expected.update(MASKER_KEYS)
    missing = [k for k in expected if k not in state]
    skipped = [k for k in state if k not in expected and k.startswith(SKIPPED_PREFIXES)]
    unexpected = [k for k in state if k not in expected and not k.startswith(SKIPPED_PREFIXES)]
    if missing or unexpected:
        raise ValueError(
            f"{key} '{path}' does not fit TCL's head on this CLIP: missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''} (docs/BACKBONES.md lists the expected keys; a masker of "
            "several blocks or another decoder is not supported)"
        )
    shapes = {k: (tuple(state[k].shape), tuple(ours[n].shape)) for k, n in expected.items() if n in ours}
    shapes.update({k: (tuple(state[k].shape), ()) for k in MASKER_KEYS})
    wrong = [f"{k}: checkpoint {s} vs model {m}" for k, (s, m) in shapes.items() if s != m]
    if wrong:
        raise ValueError(
            f"{key} '{path}' has other shapes than TCL's head on this CLIP (MODEL.CLIP.ARCH must be the CLIP "
            "TCL was trained on):\n  " + "\n  ".join(wrong[:8])
        )
    head.load_state_dict({name: state[k] for k, name in expected.items() if name in ours})
    if skipped:
        logger.info("%s: skipped %d keys of the frozen CLIP and of TCL's losses (e.g. %s)", key, len(skipped), skipped[0])
    logger.info("Loaded TCL's head and masker from %s", path)
    return {name: state[k].detach().clone().float() for k, name in MASKER_KEYS.items()}


def tcl_checkpoint(head: nn.Module, masker: Mapping[str, torch.Tensor], config: Optional[object] = None,
                   step: int = 0) -> Dict:
    """A checkpoint of ``head`` and ``masker`` ({"w", "b"}) in the authors' format (empty
    optimizer, scheduler and scaler states), e.g. to hand a TCL trained here to TCL's code.
    ``head`` must have no LoRA adapters (merge them first: ``merge_lora``)."""
    adapted = [n for n in head.state_dict() if ".parametrizations." in n or ".lora_" in n or ".base." in n]
    if adapted:
        raise ValueError(f"TCL's head has LoRA adapters ({adapted[0]}, ...): merge them (merge_lora) before writing")
    model = {authors_key(name): t.detach().cpu().clone() for name, t in head.state_dict().items()}
    model.update({k: masker[name].detach().cpu().clone() for k, name in MASKER_KEYS.items()})
    return {"model": model, "optimizer": {}, "lr_scheduler": {}, "scaler": {}, "step": int(step), "config": config}
