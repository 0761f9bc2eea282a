"""tools/generate_synthetic.py's argument checks: a bad value or an option the request would ignore
ends in parse_args with one message naming it (exit status 2), before anything is written. Its
splits: tests/data/synthetic/test_synthetic_writer.py."""
import json

import pytest

from conftest import load_script

cli = load_script("tools/generate_synthetic.py")
SPLIT = ["--split", "x", "--seed", "1", "--num-images", "2", "--workers", "0"]


@pytest.mark.parametrize("argv, message", [
    ([*SPLIT, "--seed", "-1"], "--seed -1: must be at least 0"),  # numpy's ValueError, after the folder was made
    ([*SPLIT, "--num-images", "0"], "--num-images 0: must be at least 1"),
    (["--preset", "quickstart", "--test-images", "0"], "--test-images 0: must be at least 1"),
    ([*SPLIT, "--image-size", "8"], f"--image-size 8: must be at least {cli.MIN_IMAGE_SIZE}"),  # drawn, objects lost
    ([*SPLIT, "--workers", "-2"], "--workers -2: must be 0 or more"),  # taken as 0
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
