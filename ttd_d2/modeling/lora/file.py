"""LoRA files (``model_lora_*.pth``): the adapters of a TTD run, with the settings they were
trained with, as an artifact of their own. The layout is documented in docs/LORA_FILES.md::

    {"format": "ttd_d2.lora", "version": 1,
     "settings": {"rank": int, "alpha": float, "targets": [str], "towers": [str],
                  "image_layers": int, "arch": str, "dense_mode": str},
     "lora": {"<adapted weight>.lora_A": Tensor[r, in], "<adapted weight>.lora_B": Tensor[out, r]},
     "masker": {"w": Tensor[], "b": Tensor[]},
     "ema": {"<adapted weight>": Tensor[out, in]},     # only with an EMA teacher
     "trained": {"<weight>": Tensor}}                 # only for weights TTD trains in full (TCL's decoder)

Only plain types: it loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Sequence

import torch

LORA_FILE_FORMAT = "ttd_d2.lora"
LORA_FILE_VERSION = 1
WEIGHTS_KEY = "MODEL.TTD.LORA.WEIGHTS"
# setting -> the config key it comes from (named in errors)
SETTING_KEYS = {
    "rank": "MODEL.TTD.LORA.RANK",
    "alpha": "MODEL.TTD.LORA.ALPHA",
    "targets": "MODEL.TTD.LORA.TARGETS",
    "towers": "MODEL.TTD.LORA.TOWERS",
    "image_layers": "MODEL.TTD.LORA.IMAGE_LAYERS",
    "arch": "MODEL.CLIP.ARCH",
    "dense_mode": "MODEL.CLIP.DENSE_MODE",
}


def lora_settings(rank: int, alpha: float, targets: Sequence[str], towers: Sequence[str], image_layers: int,
                  arch: str, dense_mode: str) -> Dict:
    """The settings a LoRA file records, normalised for comparison (sorted lists; ``image_layers``
    as the number of adapted image blocks, 0 when the image tower has no adapters)."""
    return {"rank": int(rank), "alpha": float(alpha), "targets": sorted(targets), "towers": sorted(towers),
            "image_layers": int(image_layers), "arch": str(arch), "dense_mode": str(dense_mode)}


def _plain(tensors: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in tensors.items()}


def make_lora_file(settings: Mapping, lora: Mapping[str, torch.Tensor], masker: Mapping[str, torch.Tensor],
                   ema: Optional[Mapping[str, torch.Tensor]] = None,
                   trained: Optional[Mapping[str, torch.Tensor]] = None) -> Dict:
    """The content of a LoRA file (CPU tensors); ``ema`` and ``trained`` (weights of the open_clip
    model that TTD trained in full, by name) are left out when empty or None."""
    missing = set(SETTING_KEYS) - set(settings)
    if missing:
        raise ValueError(f"LoRA file settings lack {sorted(missing)}")
    content = {"format": LORA_FILE_FORMAT, "version": LORA_FILE_VERSION, "settings": dict(settings),
               "lora": _plain(lora), "masker": _plain(masker)}
    if ema:
        content["ema"] = _plain(ema)
    if trained:
        content["trained"] = _plain(trained)
    return content


def save_lora_file(content: Mapping, path: str) -> None:
    """Write ``content`` to ``path`` atomically (a crash leaves no half-written file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(dict(content), tmp)
    os.replace(tmp, path)


def is_lora_file(obj) -> bool:
    """Whether a loaded object is a LoRA file (this format, or the settings-less one before it)."""
    if not isinstance(obj, Mapping):
        return False
    return obj.get("format") == LORA_FILE_FORMAT or ("lora" in obj and "masker" in obj and "model" not in obj)


def read_lora_file(path: str, key: str = WEIGHTS_KEY) -> Dict:
    """Load and check a LoRA file; every error names ``path``, the config ``key`` and the fix."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key} '{path}' does not exist: give a model_lora_*.pth written by a TTD run")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, pickled objects...
        raise ValueError(f"{key} '{path}' cannot be read ({type(e).__name__}: {e}); it is not an intact "
                         "model_lora_*.pth of a TTD run") from e
    if isinstance(content, Mapping) and "model" in content:
        raise ValueError(f"{key} '{path}' is a full checkpoint (model_*.pth), not a LoRA file: give it as MODEL.WEIGHTS")
    if not is_lora_file(content):
        raise ValueError(f"{key} '{path}' is not a ttd_d2 LoRA file (no format '{LORA_FILE_FORMAT}')")
    if "format" not in content:
        raise ValueError(f"{key} '{path}' holds no settings (written before LoRA file format {LORA_FILE_VERSION}): "
                         "retrain, or add them as docs/LORA_FILES.md shows")
    if content.get("version") != LORA_FILE_VERSION:
        raise ValueError(f"{key} '{path}' has LoRA file version {content.get('version')!r}; this ttd_d2 reads "
                         f"version {LORA_FILE_VERSION}")
    missing = [k for k in ("settings", "lora", "masker") if not isinstance(content.get(k), Mapping)]
    missing += [k for k in ("ema", "trained") if k in content and not isinstance(content[k], Mapping)]
    missing += [f"settings.{k}" for k in SETTING_KEYS if k not in content.get("settings", {})]
    if missing:
        raise ValueError(f"{key} '{path}' is incomplete: no {missing}")
    return content


def _show(value) -> str:
    return str(value) if isinstance(value, (int, float, str)) else repr(value)


def check_lora_settings(trained: Mapping, expected: Mapping, path: str,
                        keys: Optional[Mapping[str, str]] = None) -> None:
    """``ValueError`` naming the first config key whose value differs from the file's, e.g.
    ``MODEL.TTD.LORA.ALPHA is 8.0 but file.pth was trained with 16.0``. ``keys`` replaces entries
    of ``SETTING_KEYS`` where the backbone reads a setting from another key (TCL's dense path:
    ``MODEL.TCL.DENSE_PATH``). An empty expected ``arch`` is not checked."""
    for name, key in {**SETTING_KEYS, **(keys or {})}.items():
        if name == "arch" and not expected[name]:
            continue
        if trained[name] != expected[name]:
            note = " (adapted image blocks, IMAGE_LAYERS 0 counting all)" if name == "image_layers" else ""
            raise ValueError(f"{key} is {_show(expected[name])} but {path} was trained with "
                             f"{_show(trained[name])}{note}: set {key} to the file's value")
