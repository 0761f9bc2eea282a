"""A disk cache of evaluation results, keyed by everything the results depend on.

Used by ``tools/quickstart.py --base-cache`` (benchmarks/ablations.sh): every ablation row
evaluates the same base model on the same splits, so the "before" evaluation runs once and
the other rows read it back. A result is reused only under an identical key, so the key must
name every input of the evaluation: :func:`evaluation_key` builds it from the resolved config,
the content of every file the config names (checkpoints, model configs), the datasets'
fingerprints (e.g. the synthetic splits' ``meta.json``), the calibration applied to the model,
the code that evaluates, and the torch version. Storage is ``joblib.Memory`` (a hash of the
key; results written to a temporary file and renamed, so an interrupted run leaves no entry).
"""
import hashlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Tuple, Union

import joblib
import torch
from fvcore.common.config import CfgNode

__all__ = ["file_digest", "config_file_digests", "source_digest", "evaluation_key", "cached_call"]

PathLike = Union[str, Path]


def file_digest(path: PathLike) -> str:
    """sha256 (hex) of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def config_file_digests(cfg: CfgNode) -> Dict[str, str]:
    """{dotted key: :func:`file_digest`} for every string value of ``cfg`` (also inside
    lists) that names an existing file, e.g. ``MODEL.CLIP.PRETRAINED``: a checkpoint replaced
    at the same path changes the key."""
    out: Dict[str, str] = {}

    def visit(node, prefix: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                visit(v, f"{prefix}.{k}" if prefix else k)
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                visit(v, f"{prefix}[{i}]")
        elif isinstance(node, str) and node and Path(node).is_file():
            out[prefix] = file_digest(node)

    visit(cfg, "")
    return out


def source_digest(roots: Iterable[PathLike], suffixes: Tuple[str, ...] = (".py", ".json")) -> str:
    """sha256 (hex) over the files with ``suffixes`` under ``roots`` (folders, searched
    recursively, or single files): their paths relative to their root and their content."""
    digest = hashlib.sha256()
    for root in map(Path, roots):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in suffixes)
        for path in files:
            digest.update(str(path.relative_to(root) if path != root else path.name).encode())
            digest.update(file_digest(path).encode())
    return digest.hexdigest()


def evaluation_key(cfg: CfgNode, datasets: Mapping[str, Any], calibration: Mapping[str, Any],
                   code: Iterable[PathLike]) -> Dict[str, Any]:
    """The key of one evaluation of the model ``cfg`` builds.

    Args:
        cfg: the resolved config the model is built from.
        datasets: {dataset: fingerprint} for every dataset the evaluation reads (JSON-like).
        calibration: what was set on the model after building it (e.g. the masker bias).
        code: folders / files of the code that builds and evaluates the model.

    Returns:
        a dict of plain values: its equality is the cache's test of "same evaluation".
    """
    return {
        "config": cfg.dump(),
        "files": config_file_digests(cfg),
        "datasets": dict(datasets),
        "calibration": dict(calibration),
        "code": source_digest(code),
        "torch": torch.__version__,
    }


def _call(key: Mapping, compute: Callable[[], Any]) -> Any:  # what joblib memoises, on ``key`` only
    return compute()


def cached_call(cache_dir: PathLike, key: Mapping, compute: Callable[[], Any]) -> Tuple[Any, bool]:
    """``(compute(), False)`` the first time ``key`` is seen in ``cache_dir``, then
    ``(the stored result, True)``; ``compute``'s result must pickle (e.g. dicts of floats)."""
    memoised = joblib.Memory(str(cache_dir), verbose=0).cache(_call, ignore=["compute"])
    hit = memoised.check_call_in_cache(key, compute)
    return memoised(key, compute), hit
