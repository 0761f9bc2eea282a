"""ttd_d2.utils.cli.run_tool: a missing or corrupt input ends a tool with its message, without a
traceback; every other error still propagates as it is."""
import subprocess
import sys
from pathlib import Path

import pytest

from ttd_d2.data.datasets.synthetic import CorruptFileError
from ttd_d2.utils.cli import run_tool

ROOT = Path(__file__).resolve().parents[2]


def _raise(error):
    raise error


@pytest.mark.parametrize("error", [FileNotFoundError("expected x at /data/x: fix it"), CorruptFileError("bad /data/y")])
def test_input_errors_become_their_message(error):
    with pytest.raises(SystemExit) as info:
        run_tool(_raise, error)
    assert str(info.value) == f"error: {error}"


def test_other_errors_and_results_pass_through():
    assert run_tool(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ValueError, match="a bug"):
        run_tool(_raise, ValueError("a bug"))


def test_a_prepare_tool_on_an_empty_root_exits_with_one_message(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "prepare_voc.py"), "--root", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1
    assert "error: expected the VOC 2012 val list at" in done.stderr and str(tmp_path) in done.stderr
    assert "Traceback" not in done.stderr
