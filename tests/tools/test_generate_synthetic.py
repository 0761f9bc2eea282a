"""tools/generate_synthetic.py's argument checks: a bad value or an option the request would ignore
ends in parse_args with one message naming it (exit status 2), before anything is written; a split
made with other parameters ends the command with its message (status 1). Its splits:
tests/data/synthetic/test_synthetic_writer.py."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, load_script

cli = load_script("tools/generate_synthetic.py")
SPLIT = ["--split", "x", "--seed", "1", "--num-images", "2", "--workers", "0"]


@pytest.mark.parametrize("argv, message", [
    ([*SPLIT, "--seed", "-1"], "--seed -1: must be at least 0"),  # numpy's ValueError, after the folder was made
    ([*SPLIT, "--num-images", "0"], "--num-images 0: must be at least 1"),
    (["--preset", "quickstart", "--test-images", "0"], "--test-images 0: must be at least 1"),
    ([*SPLIT, "--image-size", "8"], f"--image-size 8: must be at least {cli.MIN_IMAGE_SIZE}"),  # drawn, objects lost
    ([*SPLIT, "--workers", "-2"], "--workers -2: must be at least 0"),  # taken as 0
    (["--preset", "quickstart", "--split", "mine"], "--preset quickstart generates its own splits: drop --split"),
    (["--preset", "quickstart", "--layout", "semseg", "--num-images", "5"],
     "drop --layout --num-images, or drop --preset"),
    ([*SPLIT, "--train-images", "5"], "--train-images: --preset only"),
    ([*SPLIT, "--layout", "semseg", "--caption-noise", "0", "0"],
     "--caption-noise: image_text layout only (its training captions and one-object scenes), not --layout semseg"),
    ([*SPLIT, "--layout", "captions", "--single-object-radius", "0.2", "0.3"], "--single-object-radius: image_text layout only"),
])
def test_bad_arguments_name_the_option_and_write_nothing(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["--root", str(tmp_path / "root"), *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "root").exists()


def test_a_root_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        cli.main(["--root", str(tmp_path / "file" / "synthetic"), *SPLIT])  # was a raw NotADirectoryError
    assert f"--root {tmp_path / 'file' / 'synthetic'}: {tmp_path / 'file'} is not a folder" in capsys.readouterr().err


def test_training_options_apply_to_the_image_text_splits_of_all_layouts(tmp_path):
    assert cli.main(["--root", str(tmp_path), *SPLIT, "--image-size", str(cli.MIN_IMAGE_SIZE), "--caption-noise", "0", "0"]) == 0
    metas = {layout: json.loads((tmp_path / layout / "x" / "meta.json").read_text()) for layout in ("semseg", "captions", "image_text")}
    assert metas["image_text"]["caption_noise"] == {"omit_prob": 0.0, "replace_prob": 0.0}


def test_a_split_made_with_other_parameters_ends_with_one_message(tmp_path):
    """The command line (tools' run_tool): exit status 1 and the message naming --overwrite, not a
    FileExistsError traceback; the split is left as it was."""
    argv = [sys.executable, str(REPO / "tools" / "generate_synthetic.py"), "--root", str(tmp_path), *SPLIT,
            "--layout", "semseg", "--image-size", "16"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    assert subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env).returncode == 0
    meta = (tmp_path / "semseg" / "x" / "meta.json").read_text()
    done = subprocess.run([*argv, "--num-images", "3"], capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (f"error: {tmp_path / 'semseg' / 'x'} exists with other parameters (see its "
                                                    "meta.json); pass overwrite=True (--overwrite) to replace it")
    assert (tmp_path / "semseg" / "x" / "meta.json").read_text() == meta
