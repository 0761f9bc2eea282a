"""tools/export_tcl.py: a TCL checkpoint (the authors' format) -> the same format in fp16, which
``MODEL.TCL.WEIGHTS`` loads back into the head with the same values up to fp16 rounding."""
import pytest
import torch
from conftest import load_script, make_tiny_tcl_head
from ttd_d2.modeling.backbone.tcl_checkpoint import load_tcl_checkpoint, read_tcl_state, tcl_checkpoint

export_tcl = load_script("tools/export_tcl.py")


def test_fp16_export_loads_back_with_the_same_values(tmp_path):
    head = make_tiny_tcl_head()
    src, dst = tmp_path / "model_tcl_final.pth", tmp_path / "out" / "tcl.pth"
    torch.save(tcl_checkpoint(head, {"w": torch.tensor(9.75), "b": torch.tensor(-2.25)}, step=1200), src)
    assert export_tcl.export(str(src), str(dst)) == len(read_tcl_state(str(src)))
    content = torch.load(dst, map_location="cpu", weights_only=True)
    assert content["step"] == 1200 and set(content) == {"model", "optimizer", "lr_scheduler", "scaler", "step", "config"}
    assert all(t.dtype == torch.float16 for t in content["model"].values() if t.is_floating_point())
    assert dst.stat().st_size < 0.6 * src.stat().st_size and not list(dst.parent.glob("*.tmp"))
    fresh = make_tiny_tcl_head()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    masker = load_tcl_checkpoint(fresh, str(dst))
    assert masker == {"w": torch.tensor(9.75), "b": torch.tensor(-2.25)}  # exact in fp16
    for (name, ours), theirs in zip(fresh.state_dict().items(), head.state_dict().values()):
        assert ours.dtype == theirs.dtype and torch.allclose(ours, theirs, atol=2e-3, rtol=1e-3), name


def test_fp32_keeps_the_tensors_exactly(tmp_path):
    head = make_tiny_tcl_head()
    src, dst = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(tcl_checkpoint(head, {"w": torch.tensor(10.0), "b": torch.tensor(-2.5)}), src)
    export_tcl.export(str(src), str(dst), fp16=False)
    a, b = read_tcl_state(str(src)), read_tcl_state(str(dst))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_paths_fail_with_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_tcl.export(str(tmp_path / "missing.pth"), str(tmp_path / "out.pth"))
    (tmp_path / "a_dir").mkdir()
    with pytest.raises(ValueError, match="not a regular file"):
        export_tcl.export(str(tmp_path / "missing.pth"), str(tmp_path / "a_dir"))
