"""Dataset registration (importing this package registers the synthetic benchmark, the real
benchmarks of ``docs/DATASETS.md``, CC3M-TagMask and the CC3M / CC12M shard sources)."""
from . import builtin, image_text, real  # noqa: F401  (registration side effect)
from .benchmark import Benchmark, load_benchmark, read_class_names, register_benchmark
from .cc3m_tagmask import load_cc3m_tagmask, match_tags, register_cc3m_tagmask
from .builtin import register_builtin_synthetic, require_synthetic_dataset, synthetic_root
from .real import REAL_BENCHMARKS, register_real_benchmarks
from .synthetic import (
    CorruptFileError,
    dataset_name,
    load_synthetic_captions,
    load_synthetic_image_text,
    load_synthetic_semseg,
    missing_split_message,
    read_png,
    register_synthetic,
    register_synthetic_split,
    require_split_dir,
    synthetic_metadata,
)
