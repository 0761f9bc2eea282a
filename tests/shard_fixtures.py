"""webdataset tar shards as img2dataset writes them ({key}.jpg + {key}.txt and/or {key}.json),
with every kind of bad sample, for the stream tests."""
import io
import json
import tarfile
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np

CAPTIONS = ("a red circle near a blue square", "a green star with a moon", "a yellow arrow beside a heart")


def jpeg(seed: int, height: int = 40, width: int = 48) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def write_image_json_folder(root: Path, count: int, caption=lambda i: f"a red circle number {i}") -> Path:
    """The TTD authors' folder layout, ``root/image/{i:06d}.jpg`` + ``root/json/{i:06d}.json``
    ({"caption": caption(i), "url": ...}: the caption beside a field the loader ignores) for
    ``count`` good pairs; returns ``root``."""
    (root / "image").mkdir(parents=True)
    (root / "json").mkdir()
    for i in range(count):
        (root / "image" / f"{i:06d}.jpg").write_bytes(jpeg(i))
        (root / "json" / f"{i:06d}.json").write_text(json.dumps({"caption": caption(i), "url": f"https://example.com/{i}"}))
    return root


def write_shard(path: Path, members: List[tuple]) -> Path:
    """members: (name, bytes) in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def good(key: str, seed: int, json_caption: bool = False) -> List[tuple]:
    caption = CAPTIONS[seed % len(CAPTIONS)] + f" number {key}"
    members = [(f"{key}.jpg", jpeg(seed))]
    if json_caption:
        members.append((f"{key}.json", json.dumps({"caption": caption, "url": "http://x"}).encode()))
    else:
        members += [(f"{key}.txt", caption.encode()), (f"{key}.json", json.dumps({"caption": "ignored"}).encode())]
    return members


# every kind of bad member group, as (key, members, kind)
def bad_samples(prefix: str) -> List[tuple]:
    return [
        (f"{prefix}b0", [(f"{prefix}b0.jpg", b"\xff\xd8 not a jpeg"), (f"{prefix}b0.txt", b"a circle")], "corrupt_image"),
        (f"{prefix}b1", [(f"{prefix}b1.jpg", jpeg(1)[:60]), (f"{prefix}b1.txt", b"a circle")], "corrupt_image"),
        (f"{prefix}b2", [(f"{prefix}b2.jpg", jpeg(2))], "no_caption"),
        (f"{prefix}b3", [(f"{prefix}b3.jpg", jpeg(3)), (f"{prefix}b3.txt", b"   \n")], "empty_caption"),
        (f"{prefix}b4", [(f"{prefix}b4.jpg", jpeg(4)), (f"{prefix}b4.txt", b"\xff\xfe\xfa caption")], "caption_not_utf8"),
        (f"{prefix}b5", [(f"{prefix}b5.jpg", jpeg(5)), (f"{prefix}b5.json", b"{not json")], "caption_json_invalid"),
        (f"{prefix}b6", [(f"{prefix}b6.txt", b"a caption without its image")], "no_image"),
        (f"{prefix}b7", [(f"{prefix}b7.jpg", jpeg(7)), (f"{prefix}b7.json", b'{"url": "x"}')], "no_caption"),
    ]


def write_shards(folder: Path, num_shards: int, good_per_shard: int, with_bad: bool = True) -> Dict:
    """``num_shards`` shards 00000.tar ...; shard 0 holds every kind of bad sample (when
    ``with_bad``), each shard ends with a good sample. Returns {"good": {key: caption}, "bad": Counter-like dict}."""
    folder.mkdir(parents=True, exist_ok=True)
    keys, bad = {}, {}
    for s in range(num_shards):
        members = []
        if with_bad and s == 0:
            for _, group, kind in bad_samples(f"{s:02d}"):
                members += group
                bad[kind] = bad.get(kind, 0) + 1
        for i in range(good_per_shard):
            key = f"{s:02d}{i:04d}"
            members += good(key, s * 100 + i, json_caption=i % 2 == 1)
            keys[key] = None
        write_shard(folder / f"{s:05d}.tar", members)
    return {"good": keys, "bad": bad}
