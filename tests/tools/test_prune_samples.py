"""tools/prune_samples.py on fixture shards with the tiny CLIP: a keep-list of the best-scored
pairs that the loader honours, bad samples never kept, and a restart that skips the shards
already scored, but not those that failed or were replaced since."""
import json
from pathlib import Path

import pytest

from conftest import REPO, TINY_ARCH, load_script
from shard_fixtures import good, jpeg, write_shard, write_shards

TINY = ["MODEL.CLIP.ARCH", TINY_ARCH, "MODEL.CLIP.PRETRAINED", "", "MODEL.DEVICE", "cpu", "INPUT.TRAIN_SIZE", "32"]


@pytest.fixture
def prune():
    return load_script("tools/prune_samples.py")


def run(prune, shards, out, *extra):
    args = prune.parse_args(["--config-file", str(REPO / "configs" / "synthetic" / "maskclip.yaml"), "--shards", shards,
                             "--output-dir", str(out), "--batch-size", "4", *extra, *TINY])
    return prune.main(args)


def test_keep_list_of_the_best_pairs(prune, tmp_path):
    data = write_shards(tmp_path / "shards", num_shards=3, good_per_shard=5)
    report = run(prune, str(tmp_path / "shards" / "*.tar"), tmp_path / "out", "--keep-fraction", "0.4")
    saved = json.loads((tmp_path / "out" / "keep_list.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert report["num_scored"] == len(data["good"]) == 15 and report["num_kept"] == 6
    assert set(report["keys"]) <= set(data["good"])
    assert report["skipped"] == data["bad"]  # every bad sample named, none scored
    assert sum(report["histogram"]["counts"]) == 15
    scores = {k: v for f in (tmp_path / "out" / "scores").glob("*.json") for k, v in json.loads(f.read_text())["scores"].items()}
    assert all(scores[k] >= report["threshold"] for k in report["keys"])
    assert all(v < report["threshold"] for k, v in scores.items() if k not in report["keys"])
    by_threshold = run(prune, str(tmp_path / "shards" / "*.tar"), tmp_path / "out", "--threshold", str(report["threshold"]))
    assert by_threshold["keys"] == report["keys"]


def test_an_interrupted_run_resumes(prune, tmp_path, monkeypatch):
    write_shards(tmp_path / "shards", num_shards=3, good_per_shard=3, with_bad=False)
    real, calls = prune.score_shard, []

    def interrupted(scorer, shard, batch_size):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(shard)
        return real(scorer, shard, batch_size)

    monkeypatch.setattr(prune, "score_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(prune, str(tmp_path / "shards" / "*.tar"), tmp_path / "out", "--keep-fraction", "1.0")
    assert len(list((tmp_path / "out" / "scores").glob("*.json"))) == 2 and not (tmp_path / "out" / "keep_list.json").exists()
    assert not list((tmp_path / "out" / "scores").glob("*.tmp"))  # nothing half-written
    done = list(calls)
    monkeypatch.setattr(prune, "score_shard", lambda scorer, shard, b: calls.append(shard) or real(scorer, shard, b))
    report = run(prune, str(tmp_path / "shards" / "*.tar"), tmp_path / "out", "--keep-fraction", "1.0")
    assert calls[len(done):] == [str(tmp_path / "shards" / "00002.tar")]  # only the shard not yet scored
    assert report["num_kept"] == report["num_scored"] == 9


def test_a_restart_scores_again_the_shards_that_failed_or_were_replaced(prune, tmp_path, monkeypatch):
    shards, out = tmp_path / "shards", tmp_path / "out"
    write_shards(shards, num_shards=3, good_per_shard=3, with_bad=False)
    (shards / "00001.tar").write_bytes(b"not a tar " * 100)  # unreadable: a shard_error
    write_shard(shards / "00002.tar", [(f"k{i}.jpg", jpeg(i)) for i in range(3)])  # no captions: nothing scored
    real, calls = prune.score_shard, []
    monkeypatch.setattr(prune, "score_shard", lambda scorer, shard, b: calls.append(Path(shard).name) or real(scorer, shard, b))
    first = run(prune, str(shards / "*.tar"), out, "--keep-fraction", "1.0")
    assert first["num_scored"] == 3 and first["skipped"] == {"shard_error": 1, "no_caption": 3}
    assert json.loads((out / "scores" / "00001.json").read_text())["skipped"] == {"shard_error": 1}
    write_shard(shards / "00002.tar", good("k9", 9))  # the caption-less shard replaced by a good one
    calls.clear()
    second = run(prune, str(shards / "*.tar"), out, "--keep-fraction", "1.0")
    assert calls == ["00001.tar", "00002.tar"]  # the failed shard again (it may have been a read error), the new one
    assert second["num_scored"] == 4 and second["skipped"] == {"shard_error": 1}
    write_shards(shards, num_shards=2, good_per_shard=3, with_bad=False)  # both rewritten, good now
    calls.clear()
    third = run(prune, str(shards / "*.tar"), out, "--keep-fraction", "1.0")
    assert calls == ["00000.tar", "00001.tar"]  # shard 0 was rewritten too (its time changed), shard 2 is as scored
    assert third["num_scored"] == 7 and third["skipped"] == {}


@pytest.mark.parametrize("extra, message", [
    (["--keep-fraction", "1.5"], "--keep-fraction must be in (0, 1]"),
    (["--threshold", "0.2", "--keep-fraction", "0.5"], "not allowed with argument"),  # a threshold or a fraction
    (["--threshold", "nan"], "--threshold nan: must be a finite cosine similarity"),  # was written as NaN, invalid JSON
    (["--threshold", "0.2", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--threshold", "0.2", "--num-gpus", "0"], "--num-gpus 0: must be at least 1"),
    (["--threshold", "0.2", "--num-gpus", "1000"], "--num-gpus 1000: one process per CUDA device"),
])
def test_bad_arguments(prune, tmp_path, capsys, extra, message):
    write_shards(tmp_path / "shards", num_shards=1, good_per_shard=1, with_bad=False)
    with pytest.raises(SystemExit) as info:
        prune.parse_args(["--config-file", "x.yaml", "--shards", str(tmp_path / "shards" / "*.tar"),
                          "--output-dir", str(tmp_path / "out"), *extra])
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("shards, output_dir, message", [
    ("nowhere/*.tar", "out", "--shards: 1 shard path(s) match no file, e.g. "),
    ("shards/*.tar", "shards/00000.tar/out", "shards/00000.tar is not a folder"),
])
def test_bad_paths_are_refused_before_anything_is_written(prune, tmp_path, capsys, shards, output_dir, message):
    write_shards(tmp_path / "shards", num_shards=1, good_per_shard=1, with_bad=False)
    with pytest.raises(SystemExit):
        run(prune, str(tmp_path / shards), tmp_path / output_dir, "--keep-fraction", "1.0")
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]  # no <output-dir>/scores/


def test_one_source_per_run(prune, tmp_path, capsys):
    for name in ("cc3m", "cc12m"):
        write_shards(tmp_path / name, num_shards=1, good_per_shard=2, with_bad=False)
    with pytest.raises(SystemExit):
        run(prune, str(tmp_path / "cc*" / "*.tar"), tmp_path / "out", "--keep-fraction", "1.0")
    assert "prune each source on its own" in capsys.readouterr().err and not (tmp_path / "out").exists()
