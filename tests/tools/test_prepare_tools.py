"""tools/prepare_*.py: thin command lines over ttd_d2.data.datasets (the conversions are tested
in tests/data/datasets)."""
import sys
from pathlib import Path

import pytest

from conftest import load_script

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data" / "datasets"))
from test_voc import official_voc  # noqa: E402  (the official-layout fixture)

TOOLS = ("prepare_voc", "prepare_pascal_context", "prepare_coco", "prepare_cityscapes", "prepare_ade20k")


@pytest.mark.parametrize("tool", TOOLS)
def test_an_empty_root_names_the_missing_input(tool, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_script(f"tools/{tool}.py").main(["--root", str(tmp_path)])


def test_prepare_voc_converts_and_skips_on_a_second_run(tmp_path, capsys):
    official_voc(tmp_path)
    tool = load_script("tools/prepare_voc.py")
    tool.main(["--root", str(tmp_path)])
    assert len(list((tmp_path / "VOCdevkit/VOC2012/ttd_labels/val20").glob("*.png"))) == 2
    tool.main(["--root", str(tmp_path)])
    assert "'skipped': 2" in capsys.readouterr().out.splitlines()[-1]
