"""CPU smoke test of benchmarks/bench_mapper.py: the training mapper timed over a tiny
image-JSON folder, warm and with cold caches."""
import json

import pytest

from conftest import TINY_ARCH, load_script
from shard_fixtures import write_image_json_folder


@pytest.mark.parametrize("cold", [False, True])
def test_smoke(tmp_path, cold):
    root = write_image_json_folder(tmp_path / "folder", 6, lambda i: f"a red circle {i % 2}")
    bench = load_script("benchmarks/bench_mapper.py")
    out = tmp_path / "mapper.json"
    report = bench.main(["--config-file", "configs/synthetic/pretrain_tiny_clip.yaml", "--samples", "4", "--warmup", "2",
                         "--repeats", "3", "--output", str(out)] + (["--cold-cache"] if cold else []) + [
                         "MODEL.CLIP.ARCH", TINY_ARCH, "DATASETS.TRAIN", "()", "DATASETS.IMAGE_TEXT.FOLDERS", f"['{root}']",
                         "INPUT.TRAIN_SIZE", "32"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["samples"] == 4 and report["cold_cache"] is cold and len(report["ms_per_sample_passes"]) == 3
    assert 0 < report["ms_per_sample_best"] == min(report["ms_per_sample_passes"]) <= report["ms_per_sample_median"]


def test_no_training_source_is_refused(tmp_path):
    bench = load_script("benchmarks/bench_mapper.py")
    with pytest.raises(SystemExit, match="no training dataset"):
        bench.main(["--config-file", "configs/synthetic/pretrain_tiny_clip.yaml", "MODEL.CLIP.ARCH", TINY_ARCH,
                    "DATASETS.TRAIN", "()"])
