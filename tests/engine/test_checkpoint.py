"""TTDCheckpointer (ttd_d2/engine/checkpoint.py): a full checkpoint of the same config loads; a
file that would load nothing, or load another model's weights into this one, raises naming the
file and the fix; a damaged ``last_checkpoint`` under resume says how to recover."""
import pytest
import torch

from conftest import build
from ttd_d2.engine import TTDCheckpointer


def _save(path, state):
    torch.save(state, path)
    return str(path)


def test_a_checkpoint_of_the_same_config_loads(tiny_cfg, tmp_path):
    source = build(tiny_cfg, seed=1)
    target = build(tiny_cfg, seed=2)
    path = _save(tmp_path / "model_final.pth", {"model": source.state_dict(), "iteration": 3})
    TTDCheckpointer(target).load(path)
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("content, message", [
    (b"PK\x03\x04 truncated", "cannot be read .*not an intact model_\\*.pth"),
    ([1, 2, 3], "holds no state dict of weights \\(a list\\)"),
    ({"model": {"foo.weight": torch.zeros(2)}}, "has none of this model's weights \\(its keys: foo.weight\\)"),
])
def test_files_that_would_load_nothing_raise(tiny_cfg, tmp_path, content, message):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=f"checkpoint '{path}' {message}"):
        TTDCheckpointer(build(tiny_cfg)).load(str(path))


def test_a_ttd_checkpoint_on_a_config_without_adapters_raises(tiny_cfg, tmp_path):
    """Loaded with strict=False, the adapters would be dropped and the base model evaluated."""
    ttd = build(tiny_cfg, **{"MODEL.TTD.ENABLED": True})
    path = _save(tmp_path / "model_final.pth", {"model": ttd.state_dict()})
    with pytest.raises(ValueError, match="holds weights this model lacks \\(.*lora_A.*\\): it was trained with another "
                                         "config.*MODEL.TTD.LORA.WEIGHTS"):
        TTDCheckpointer(build(tiny_cfg)).load(path)


def test_weights_of_other_shapes_raise(tiny_cfg, tmp_path):
    state = build(tiny_cfg).state_dict()
    name = next(k for k, v in state.items() if v.ndim == 2)
    state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1])
    path = _save(tmp_path / "model_final.pth", {"model": state})
    with pytest.raises(ValueError, match=f"holds weights of other shapes \\({name}\\)"):
        TTDCheckpointer(build(tiny_cfg)).load(path)


def test_resume_with_a_damaged_last_checkpoint_says_how_to_recover(tiny_cfg, tmp_path):
    checkpointer = TTDCheckpointer(build(tiny_cfg), save_dir=str(tmp_path))
    (tmp_path / "last_checkpoint").write_text("model_0000099.pth")
    with pytest.raises(FileNotFoundError, match="model_0000099.pth' does not exist; it is named by .*last_checkpoint "
                                                 "\\(--resume\\): fix or delete that file"):
        checkpointer.resume_or_load("", resume=True)
    (tmp_path / "last_checkpoint").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match="last_checkpoint cannot be read .*delete it .*or run without --resume"):
        checkpointer.resume_or_load("", resume=True)
    with pytest.raises(FileNotFoundError, match="checkpoint 'missing.pth' does not exist$"):
        checkpointer.load("missing.pth")
