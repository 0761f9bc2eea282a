"""Streamed image-text training data: webdataset tar shards (as img2dataset writes CC3M and
CC12M), split across ranks and loader workers, bad samples skipped and counted."""
from .samples import BAD_KINDS, IMAGE_EXTENSIONS, sample_to_record
from .shards import MixedStream, ShardStream, expand_shards
from .skips import SkipCountingLoader, SkipCountsHook, TooManyBadSamples

__all__ = [
    "BAD_KINDS", "IMAGE_EXTENSIONS", "sample_to_record", "MixedStream", "ShardStream", "expand_shards",
    "SkipCountingLoader", "SkipCountsHook", "TooManyBadSamples",
]
