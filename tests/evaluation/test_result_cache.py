"""ttd_d2/evaluation/result_cache.py: the key names every input of an evaluation (config, the
files it names, datasets, calibration, code), and a result is computed once per key."""
from conftest import make_tiny_cfg
from ttd_d2.evaluation.result_cache import cached_call, config_file_digests, evaluation_key, source_digest

DATASETS = {"semseg/test": {"seed": 100, "num_images": 300}}


class CountingEvaluation:
    """A fake evaluation: returns a fresh summary and counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return {"test": {"caption_seg": {"CaptionIoU": 40.0 + self.calls}}}


def make_key(tmp_path, checkpoint=b"weights", datasets=DATASETS, calibration=None, code=b"x = 1\n", **opts):
    (tmp_path / "model.pt").write_bytes(checkpoint)
    (tmp_path / "code").mkdir(exist_ok=True)
    (tmp_path / "code" / "evaluate.py").write_bytes(code)
    cfg = make_tiny_cfg()
    cfg.MODEL.CLIP.PRETRAINED = str(tmp_path / "model.pt")
    cfg.merge_from_list([x for k, v in opts.items() for x in (k, v)])
    return evaluation_key(cfg, datasets, calibration or {"masker_bias": -2.2}, code=[tmp_path / "code"])


def test_config_file_digests_name_the_files_and_follow_their_content(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"a")
    cfg = make_tiny_cfg()
    cfg.MODEL.CLIP.PRETRAINED = str(tmp_path / "model.pt")
    first = config_file_digests(cfg)
    assert set(first) == {"MODEL.CLIP.ARCH", "MODEL.CLIP.PRETRAINED"}  # the tiny arch JSON and the checkpoint
    (tmp_path / "model.pt").write_bytes(b"b")
    assert config_file_digests(cfg)["MODEL.CLIP.PRETRAINED"] != first["MODEL.CLIP.PRETRAINED"]
    assert config_file_digests(cfg)["MODEL.CLIP.ARCH"] == first["MODEL.CLIP.ARCH"]


def test_source_digest_follows_content_and_names(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "notes.txt").write_text("not code")
    first = source_digest([tmp_path / "pkg"])
    (tmp_path / "pkg" / "notes.txt").write_text("still not code")
    assert source_digest([tmp_path / "pkg"]) == first
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert source_digest([tmp_path / "pkg"]) != first
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "a.py").rename(tmp_path / "pkg" / "b.py")
    assert source_digest([tmp_path / "pkg"]) != first


def test_unchanged_key_is_evaluated_once(tmp_path):
    evaluation = CountingEvaluation()
    first, hit = cached_call(tmp_path / "cache", make_key(tmp_path), evaluation)
    assert not hit and evaluation.calls == 1
    again, hit = cached_call(tmp_path / "cache", make_key(tmp_path), evaluation)  # rebuilt, equal key
    assert hit and evaluation.calls == 1 and again == first


def test_every_part_of_the_key_re_evaluates(tmp_path):
    changes = {
        "checkpoint content, same path": dict(checkpoint=b"other weights"),
        "config": {"MODEL.MASKER.INIT_W": 5.0},
        "split meta.json": dict(datasets={"semseg/test": {"seed": 100, "num_images": 200}}),
        "another split": dict(datasets={**DATASETS, "captions/test": {"seed": 100}}),
        "calibration": dict(calibration={"masker_bias": -2.3}),
        "code": dict(code=b"x = 2\n"),
    }
    evaluation = CountingEvaluation()
    cached_call(tmp_path / "cache", make_key(tmp_path), evaluation)
    for what, change in changes.items():
        calls = evaluation.calls
        result, hit = cached_call(tmp_path / "cache", make_key(tmp_path, **change), evaluation)
        assert not hit and evaluation.calls == calls + 1, what
        assert result["test"]["caption_seg"]["CaptionIoU"] == 40.0 + evaluation.calls, what  # the fresh result
    # and the original key still finds its own result
    _, hit = cached_call(tmp_path / "cache", make_key(tmp_path), evaluation)
    assert hit
