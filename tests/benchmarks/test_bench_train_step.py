"""CPU smoke test of benchmarks/bench_train_step.py: the trainer's own iterations on a tiny
image-JSON folder, timed and profiled, with the labelled stages of the TTD step reported."""
import json

from conftest import TINY_ARCH, load_script
from shard_fixtures import write_image_json_folder


def test_smoke_with_profile(tmp_path):
    root = write_image_json_folder(tmp_path / "folder", 8, lambda i: f"a red circle and a blue square {i}")
    bench = load_script("benchmarks/bench_train_step.py")
    out = tmp_path / "train_step.json"
    report = bench.main([
        "--config-file", "configs/synthetic/ttd_maskclip.yaml", "--warmup", "1", "--steps", "2", "--profile", "1",
        "--output", str(out),
        "MODEL.DEVICE", "cpu", "MODEL.CLIP.ARCH", TINY_ARCH, "MODEL.CLIP.PRETRAINED", "", "MODEL.WEIGHTS", "",
        "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "DATASETS.IMAGE_TEXT.FOLDERS", f"['{root}']",
        "INPUT.TRAIN_SIZE", "32", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "4",
    ])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["seconds_per_iter"] > 0 and report["images_per_s"] == 4 / report["seconds_per_iter"]
    assert 0 <= report["data_time_s"] < report["seconds_per_iter"]
    stages = [name for name, ms in report["profile"]["stages"]]
    # the model's stages, in the order the step runs them
    assert stages[:4] == ["ttd.trunk", "ttd.tags", "ttd.teacher", "ttd.student_image"], stages
    assert {"ttd.student_text", "ttd.losses"} <= set(stages)
    assert all(ms > 0 for _, ms in report["profile"]["stages"])
