"""ttd_d2.utils.cli: run_tool ends a tool on a missing or corrupt input or an invalid config value
with its message, without a
traceback, and lets every other error propagate as it is; require_output_folder refuses an
output path that cannot be a folder before any work."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ttd_d2.config_checks_values import ConfigError
from ttd_d2.data.datasets.synthetic import CorruptFileError
from ttd_d2.utils.cli import require_minimums, require_output_folder, run_tool

ROOT = Path(__file__).resolve().parents[2]


def _raise(error):
    raise error


@pytest.mark.parametrize("error", [FileNotFoundError("expected x at /data/x: fix it"), CorruptFileError("bad /data/y"),
                                   FileExistsError("/data/z exists with other parameters: pass --overwrite"),
                                   ConfigError("invalid model config (1 problem(s)):\n  - MODEL.TTD.TAG_THRESHOLD = 2.0: "
                                               "must be in [0, 1]")])
def test_input_errors_become_their_message(error):
    with pytest.raises(SystemExit) as info:
        run_tool(_raise, error)
    assert str(info.value) == f"error: {error}"


def test_other_errors_and_results_pass_through():
    assert run_tool(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ValueError, match="a bug"):
        run_tool(_raise, ValueError("a bug"))


def test_a_prepare_tool_on_an_empty_root_exits_with_one_message(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "prepare_voc.py"), "--root", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, env=env)  # this checkout's ttd_d2, not an installed one
    assert done.returncode == 1
    assert "error: expected the VOC 2012 val list at" in done.stderr and str(tmp_path) in done.stderr
    assert "Traceback" not in done.stderr


def test_an_output_folder_must_be_creatable(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="tool")
    require_output_folder(parser, "--out", tmp_path)  # there
    require_output_folder(parser, "--out", tmp_path / "a" / "b")  # made later
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(SystemExit) as info:
            require_output_folder(parser, "--out", bad)
        assert info.value.code == 2
        assert f"tool: error: --out {bad}: {tmp_path / 'file'} is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # checked, nothing made


def test_an_output_folder_must_be_writable(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("os.access", lambda path, mode: False)  # a folder of another user (root passes any check)
    with pytest.raises(SystemExit):
        require_output_folder(argparse.ArgumentParser(prog="tool"), "--out", tmp_path / "new")
    assert f"--out {tmp_path / 'new'}: {tmp_path} is not writable" in capsys.readouterr().err


def test_require_minimums_names_the_first_option_below_its_minimum_and_skips_unset_ones(capsys):
    parser = argparse.ArgumentParser()
    args = argparse.Namespace(num_images=0, workers=0, seed=None)
    require_minimums(parser, argparse.Namespace(num_images=1, workers=0, seed=None), {"num_images": 1, "workers": 0, "seed": 0})
    with pytest.raises(SystemExit) as info:
        require_minimums(parser, args, {"seed": 0, "workers": 0, "num_images": 1})
    assert info.value.code == 2 and "--num-images 0: must be at least 1" in capsys.readouterr().err
