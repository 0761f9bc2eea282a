"""One implementation of registering a real sem-seg benchmark (``docs/DATASETS.md``).

A :class:`Benchmark` names where its prepared images and labels lie under
``$DETECTRON2_DATASETS``, its class-name file and its prepare command. :func:`register_benchmark`
registers it without touching the disk; ``DatasetCatalog.get`` then checks the folders (a missing
one raises ``FileNotFoundError`` naming ``$DETECTRON2_DATASETS``, the folder and the prepare
command) and builds records with detectron2's ``load_sem_seg``.

Labels are PNGs read by detectron2's ``SemSegEvaluator`` (``PIL`` + ``np.array(dtype=int)``):
8-bit with ``ignore_label`` 255 for up to 255 classes, 16-bit with ``ignore_label`` 65535 for
the 459- and 847-class benchmarks.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg

__all__ = ["Benchmark", "CLASS_NAMES_DIR", "read_class_names", "datasets_root", "load_benchmark",
           "register_benchmark", "require_folder"]

CLASS_NAMES_DIR = Path(__file__).resolve().parent / "class_names"
IGNORE_8BIT = 255
IGNORE_16BIT = 65535


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A prepared sem-seg benchmark.

    Attributes:
        name: the registered name (``ttd_`` prefix: never one of detectron2's built-ins).
        image_dir, label_dir: folders relative to ``$DETECTRON2_DATASETS``.
        classes: the class-name file: a name under ``class_names/`` (package data), or a path
            relative to ``$DETECTRON2_DATASETS`` (written by the prepare script from the release).
        prepare: the command that writes ``label_dir``.
        background: prepend "background" to the file's classes (class 0).
        background_threshold: the constant score of class 0 (only with ``background``).
        image_ext, label_ext: file endings ``load_sem_seg`` matches.
        ignore_label: 255 (8-bit labels) or 65535 (16-bit labels).
        image_suffix: set for nested folders (Cityscapes): the label ``city/x.png`` pairs with the
            image ``city/x<image_suffix>``; unset, detectron2's ``load_sem_seg`` pairs flat folders.
    """

    name: str
    image_dir: str
    label_dir: str
    classes: str
    prepare: str
    background: bool = False
    background_threshold: Optional[float] = None
    image_ext: str = "jpg"
    label_ext: str = "png"
    ignore_label: int = IGNORE_8BIT
    image_suffix: Optional[str] = None  # nested folders: label ``a/b.png`` <-> image ``a/b<suffix>``


def datasets_root(root: Optional[Union[str, Path]] = None) -> Path:
    """``root``, else ``$DETECTRON2_DATASETS``, else ``datasets``."""
    return Path(root if root is not None else os.environ.get("DETECTRON2_DATASETS", "datasets"))


def read_class_names(path: Union[str, Path]) -> List[str]:
    """One class a line (comma-separated synonyms kept in the line); blank lines are errors."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or any(not line.strip() for line in lines):
        raise ValueError(f"{path}: a class-name file needs one non-empty line per class")
    return [line.strip() for line in lines]


def require_folder(folder: Path, benchmark: Benchmark) -> Path:
    """``folder`` if it is a directory, else ``FileNotFoundError`` naming the fix."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Dataset '{benchmark.name}' is not on disk: {folder} does not exist. Set DETECTRON2_DATASETS "
            f"to the folder that holds the datasets (now {datasets_root()}) and run `{benchmark.prepare}` "
            "(datasets/README.md says what to download).")
    return folder


def _class_file(benchmark: Benchmark, root: Path) -> Path:
    packaged = CLASS_NAMES_DIR / benchmark.classes
    return packaged if packaged.is_file() else root / benchmark.classes


def benchmark_classes(benchmark: Benchmark, root: Optional[Union[str, Path]] = None) -> List[str]:
    """``stuff_classes`` of ``benchmark`` (``FileNotFoundError`` if its file is not prepared)."""
    path = _class_file(benchmark, datasets_root(root))
    if not path.is_file():
        require_folder(path.parent, benchmark)
        raise FileNotFoundError(f"Dataset '{benchmark.name}': {path} is missing; run `{benchmark.prepare}`.")
    names = read_class_names(path)
    return ["background", *names] if benchmark.background else names


def _set_metadata(benchmark: Benchmark, root: Path) -> None:
    meta = MetadataCatalog.get(benchmark.name)
    if meta.get("stuff_classes", None) is None:
        meta.set(stuff_classes=benchmark_classes(benchmark, root))


def load_benchmark(benchmark: Benchmark, root: Optional[Union[str, Path]] = None) -> List[dict]:
    """Records (``file_name``, ``sem_seg_file_name``, ``dataset_name``) of the prepared benchmark."""
    root = datasets_root(root)
    labels = require_folder(root / benchmark.label_dir, benchmark)
    images = require_folder(root / benchmark.image_dir, benchmark)
    _set_metadata(benchmark, root)  # classes read from the release are known only once prepared
    if benchmark.image_suffix is None:
        records = load_sem_seg(str(labels), str(images), gt_ext=benchmark.label_ext, image_ext=benchmark.image_ext)
    else:  # load_sem_seg lists one folder only
        records = _nested_records(labels, images, benchmark)
    for record in records:
        record["dataset_name"] = benchmark.name
    return records


def _nested_records(labels: Path, images: Path, benchmark: Benchmark) -> List[dict]:
    records = []
    for label in sorted(labels.rglob(f"*.{benchmark.label_ext}")):
        stem = label.relative_to(labels).with_suffix("")
        image = images / f"{stem}{benchmark.image_suffix}"
        if not image.is_file():
            raise FileNotFoundError(f"Dataset '{benchmark.name}': {label} has no image {image}")
        records.append({"file_name": str(image), "sem_seg_file_name": str(label)})
    if not records:
        raise FileNotFoundError(f"Dataset '{benchmark.name}': no labels under {labels}; run `{benchmark.prepare}`")
    return records


def register_benchmark(benchmark: Benchmark, root: Optional[Union[str, Path]] = None) -> str:
    """Register ``benchmark`` (replacing an earlier registration of its name); reads at most its
    class-name file. ``root`` defaults to ``$DETECTRON2_DATASETS`` at call time."""
    root = datasets_root(root)
    if benchmark.name in DatasetCatalog.list():
        DatasetCatalog.remove(benchmark.name)
        MetadataCatalog.remove(benchmark.name)
    DatasetCatalog.register(benchmark.name, lambda: load_benchmark(benchmark, root))
    meta = dict(ignore_label=benchmark.ignore_label, evaluator_type="sem_seg", image_root=str(root / benchmark.image_dir),
                sem_seg_root=str(root / benchmark.label_dir), prepare=benchmark.prepare)
    if benchmark.background_threshold is not None:
        meta["background_threshold"] = benchmark.background_threshold
    MetadataCatalog.get(benchmark.name).set(**meta)
    if _class_file(benchmark, root).is_file():
        _set_metadata(benchmark, root)
    return benchmark.name


def register_benchmarks(benchmarks: Sequence[Benchmark], root: Optional[Union[str, Path]] = None) -> List[str]:
    """:func:`register_benchmark` for each."""
    return [register_benchmark(b, root) for b in benchmarks]
