"""One webdataset sample (a dict of a key's tar members) -> an image-caption record, or the kind
of problem that makes it unusable."""
import json
from typing import Dict, Optional, Tuple

# Image members tried in this order (img2dataset writes jpg; png and webp are its other formats).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# What makes a sample bad, counted per kind (docs/DATASETS.md, "Image-text shards"):
BAD_KINDS = (
    "shard_error",  # an unreadable shard, or a truncated / corrupt tar stream (the rest of the shard is lost)
    "no_image",  # no image member beside the caption (a member without its pair)
    "no_caption",  # neither a .txt nor a .json with a "caption" field
    "caption_not_utf8",  # caption bytes that are not UTF-8
    "caption_json_invalid",  # a .json that is not valid JSON, not an object, or whose "caption" is not a string
    "empty_caption",  # a caption with nothing but white space
    "corrupt_image",  # image bytes that do not decode (found by the mapper)
)


def _caption(sample: Dict) -> Tuple[Optional[str], Optional[str]]:
    """(caption, None) or (None, bad kind): the .txt member, else the .json's "caption" field."""
    if "txt" in sample:
        try:
            return sample["txt"].decode("utf-8").strip(), None
        except UnicodeDecodeError:
            return None, "caption_not_utf8"
    if "json" in sample:
        try:
            meta = json.loads(sample["json"].decode("utf-8"))
        except UnicodeDecodeError:
            return None, "caption_not_utf8"
        except ValueError:
            return None, "caption_json_invalid"
        if not isinstance(meta, dict) or "caption" not in meta:
            return None, "no_caption" if isinstance(meta, dict) else "caption_json_invalid"
        if not isinstance(meta["caption"], str):
            return None, "caption_json_invalid"
        return meta["caption"].strip(), None
    return None, "no_caption"


def sample_to_record(sample: Dict) -> Tuple[Optional[Dict], Optional[str]]:
    """A webdataset sample ({"__key__", "__url__", "<ext>": bytes, ...}) -> (record, None) with
    record = {"image_bytes", "caption", "key", "file_name" ("<shard>:<key>.<ext>", for messages)},
    or (None, kind) with kind one of :data:`BAD_KINDS`."""
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    caption, problem = _caption(sample)
    if ext is None:
        return None, "no_image"
    if problem is not None:
        return None, problem
    if not caption:
        return None, "empty_caption"
    key = sample["__key__"]
    return {"image_bytes": sample[ext], "caption": caption, "key": key,
            "file_name": f"{sample.get('__url__', '?')}:{key}.{ext}"}, None
