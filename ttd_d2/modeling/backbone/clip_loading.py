"""Build an open_clip model from ``MODEL.CLIP.{ARCH,PRETRAINED,CACHE_DIR}`` with errors that
name the fix (unknown architecture, missing file, weights not cached offline); in distributed
runs a failure on one process ends every process with that error."""
import functools
import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional, Tuple, TypeVar

import open_clip
import torch
from detectron2.utils import comm

logger = logging.getLogger(__name__)
T = TypeVar("T")

PACKAGE_MODEL_CONFIGS = Path(__file__).resolve().parents[2] / "model_configs"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


def resolve_arch(arch: str) -> str:
    """Return an open_clip model name for ``arch``: a known name, or a JSON model config file
    (looked up as given, then in ttd_d2/model_configs/) registered under its file stem."""
    if arch.endswith(".json"):
        candidates = [Path(arch), PACKAGE_MODEL_CONFIGS / arch, PACKAGE_MODEL_CONFIGS / Path(arch).name]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"MODEL.CLIP.ARCH: model config '{arch}' not found (looked in the working "
                f"directory and {PACKAGE_MODEL_CONFIGS}). Give a path to an open_clip-style JSON "
                "with 'embed_dim', 'vision_cfg' and 'text_cfg'."
            )
        try:
            with open(path) as f:
                cfg = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"MODEL.CLIP.ARCH: model config {path} is not valid JSON ({e})") from e
        if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ValueError(f"{path}: an open_clip model config needs embed_dim, vision_cfg, text_cfg")
        if path.stem not in open_clip.list_models():
            open_clip.add_model_config(path)
        return path.stem
    if arch not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if arch.lower().split("-")[0] in m.lower()][:8]
        raise ValueError(
            f"MODEL.CLIP.ARCH '{arch}' is not an open_clip model. Use a name from "
            f"open_clip.list_models() (e.g. {', '.join(close) or 'ViT-B-16'}) or a path to a JSON "
            "model config."
        )
    return arch


def build_tokenizer(arch: str):
    """open_clip's tokenizer of ``MODEL.CLIP.ARCH`` (list[str] -> [N, L] ids): the one the
    backbone encodes text with and the training loader's workers tokenise captions with."""
    return open_clip.get_tokenizer(resolve_arch(arch))


def check_pretrained(name: str, pretrained: str) -> None:
    """``FileNotFoundError`` for a missing checkpoint file, ``ValueError`` for an unknown tag of
    open_clip model ``name`` (a resolved MODEL.CLIP.ARCH); nothing is downloaded or read."""
    looks_like_file = os.sep in pretrained or pretrained.endswith(_CHECKPOINT_SUFFIXES)
    if looks_like_file and not os.path.isfile(pretrained):
        raise FileNotFoundError(
            f"MODEL.CLIP.PRETRAINED: checkpoint file '{pretrained}' does not exist. Give an "
            "existing local file, an open_clip tag, or '' for random init."
        )
    if not looks_like_file and pretrained not in open_clip.list_pretrained_tags_by_model(name):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(
            f"MODEL.CLIP.PRETRAINED '{pretrained}' is not an open_clip tag of {name} "
            f"(known: {tags or 'none'}) nor an existing file."
        )


def needs_quick_gelu(name: str, pretrained: str) -> bool:
    """Whether open_clip tag ``pretrained`` of model ``name`` was trained with QuickGELU while
    ``name``'s config builds GELU (OpenAI's weights under "ViT-B-16"; open_clip >= 2.20 only
    warns about the mismatch, and every activation of the model would then differ from the one
    its weights were trained with). Local checkpoint files cannot be told apart: name an
    architecture with the right activation for them ("ViT-B-16-quickgelu" for OpenAI's)."""
    if not pretrained or pretrained not in open_clip.list_pretrained_tags_by_model(name):
        return False
    tag_quick_gelu = bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))
    return tag_quick_gelu and not (open_clip.get_model_config(name) or {}).get("quick_gelu", False)


def _create(name: str, pretrained: str, cache_dir: str) -> torch.nn.Module:
    quick_gelu = needs_quick_gelu(name, pretrained)
    if quick_gelu:
        logger.info("open_clip tag '%s' of %s was trained with QuickGELU: building %s with it "
                    "(as open_clip's '-quickgelu' configs do)", pretrained, name, name)
    try:
        return open_clip.create_model(name, pretrained=pretrained or None, cache_dir=cache_dir or None,
                                      force_quick_gelu=quick_gelu)
    except Exception as e:
        if pretrained and os.path.isfile(pretrained):  # a local file that open_clip could not load
            raise ValueError(
                f"MODEL.CLIP.PRETRAINED '{pretrained}' cannot be loaded into open_clip {name} "
                f"({type(e).__name__}: {' '.join(str(e).split())[:300]}): give an intact open_clip "
                "state dict of the architecture MODEL.CLIP.ARCH names (tools/export_clip.py writes one from a "
                "ttd_d2 run)"
            ) from e
        if not isinstance(e, RuntimeError) or "download" not in str(e).lower():
            raise
        raise RuntimeError(
            f"Weights '{pretrained}' of {name} are not in the cache and could not be downloaded "
            f"({e}). Offline, download the checkpoint on a machine with network (e.g. "
            f"open_clip.create_model('{name}', pretrained='{pretrained}', cache_dir=DIR)) and set "
            "MODEL.CLIP.CACHE_DIR to DIR, or set MODEL.CLIP.PRETRAINED to the local checkpoint file."
        ) from e


def vision_config(arch: str) -> Optional[dict]:
    """open_clip's ``vision_cfg`` of ``arch`` (image_size, layers, patch_size...), or None when
    ``arch`` cannot be resolved here (``load_clip`` then raises the error)."""
    try:
        name = resolve_arch(arch)
    except (OSError, ValueError):
        return None
    return (open_clip.get_model_config(name) or {}).get("vision_cfg")


def _load(arch: str, pretrained: str, cache_dir: str) -> Tuple[torch.nn.Module, dict]:
    name = resolve_arch(arch)
    if pretrained:
        check_pretrained(name, pretrained)
    model = _create(name, pretrained, cache_dir)
    if not isinstance(getattr(model, "visual", None), open_clip.transformer.VisionTransformer):
        raise ValueError(
            f"MODEL.CLIP.ARCH '{arch}': ttd_d2's dense heads need an open_clip ViT image tower "
            f"(open_clip.transformer.VisionTransformer), got {type(getattr(model, 'visual', None)).__name__}."
        )
    logger.info("Built open_clip %s (pretrained=%r)", name, pretrained or None)
    return model, open_clip.get_model_preprocess_cfg(model)


def _in_turn(load: Optional[Callable[[], T]]) -> Optional[T]:
    """Run ``load`` (None: this process sits this turn out), then tell every process whether a
    load failed anywhere: ``comm.all_gather`` is a collective that every process reaches, loaded
    or failed, so no process is left waiting at a barrier until the timeout. If one failed,
    it re-raises its own error and every other process raises a ``RuntimeError`` carrying it."""
    result, error = None, None
    if load is not None:
        try:
            result = load()
        except Exception as e:  # any failure must reach the other processes before we raise
            error = e
    failures = comm.all_gather(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(rank, message) for rank, message in enumerate(failures) if message is not None]
    if failed:
        rank, message = failed[0]
        raise RuntimeError(
            f"loading CLIP (MODEL.CLIP.ARCH / PRETRAINED) failed on process {rank} of {len(failures)}, "
            f"so process {comm.get_rank()} stops too. The error there: {message}"
        )
    return result


def load_clip(arch: str, pretrained: str = "", cache_dir: str = "") -> Tuple[torch.nn.Module, dict]:
    """Create the open_clip model and return it with its preprocessing config (mean, std, size).

    In distributed runs the first process of each machine loads (and maybe downloads into the
    shared cache) first, then the others. After each of the two turns every process learns
    whether a load failed on any process, and then all of them raise (see ``_in_turn``).
    """
    load = functools.partial(_load, arch, pretrained, cache_dir)
    first = comm.get_local_rank() == 0
    loaded = _in_turn(load if first else None)
    later = _in_turn(None if first else load)
    return loaded if first else later
