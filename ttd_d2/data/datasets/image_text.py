"""Registration of streamed image-text training sources (webdataset tar shards,
:mod:`ttd_d2.data.streams`): the names say where the shards are; ``TTDTrainer`` reads them.
``ttd_cc3m_train`` and ``ttd_cc12m_train`` are registered at import, from
``$DETECTRON2_DATASETS/{cc3m,cc12m}/*.tar`` (img2dataset's output folders, docs/DATASETS.md)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["SHARD_SOURCES", "register_shard_source", "is_shard_source", "register_builtin_shard_sources"]

# name -> (folder under $DETECTRON2_DATASETS, how to make it)
SHARD_SOURCES = {
    "ttd_cc3m_train": ("cc3m", "img2dataset --url_list cc3m_train.tsv --input_format tsv --url_col url "
                               "--caption_col caption --output_format webdataset --output_folder $DETECTRON2_DATASETS/cc3m"),
    "ttd_cc12m_train": ("cc12m", "img2dataset --url_list cc12m.tsv --input_format tsv --url_col url "
                                 "--caption_col caption --output_format webdataset --output_folder $DETECTRON2_DATASETS/cc12m"),
}


def register_shard_source(name: str, shards: Union[str, Sequence[str]], prepare: str = "") -> str:
    """Register ``name`` as a stream of the tar shards ``shards`` (brace / glob patterns,
    expanded when training starts). ``DatasetCatalog.get(name)`` raises: a stream is no list."""
    patterns = [shards] if isinstance(shards, str) else list(shards)

    def as_list():
        raise TypeError(f"'{name}' is a stream of webdataset shards ({patterns}), not a list of records: "
                        "TTDTrainer reads it (ttd_d2.data.streams)")

    DatasetCatalog.register(name, as_list)
    folder = os.path.dirname(patterns[0].split("{")[0].split("*")[0]) or "."
    MetadataCatalog.get(name).set(source="webdataset", shards=patterns, image_root=folder,
                                  **({"prepare": prepare} if prepare else {}))
    return name


def is_shard_source(name: str) -> bool:
    return name in DatasetCatalog.list() and MetadataCatalog.get(name).get("source", None) == "webdataset"


def register_builtin_shard_sources(root: Optional[Union[str, Path]] = None) -> None:
    root = Path(root if root is not None else os.environ.get("DETECTRON2_DATASETS", "datasets"))
    for name, (folder, prepare) in SHARD_SOURCES.items():
        if name not in DatasetCatalog.list():
            register_shard_source(name, str(root / folder / "*.tar"), prepare)


register_builtin_shard_sources()
