"""Switching adapters off and saving them (ttd_d2/modeling/lora/state.py) on a tiny random
open_clip CLIP (CPU): ``lora_disabled`` gives the base model back (nested, on errors), LoRA state
dicts round trip (also through torch.save, small), strict loading names what is missing,
unexpected or of another shape."""
import copy
import io

import pytest
import torch

from lora_fixtures import N_ADAPTED, all_equal, frozen, outputs, perturb, tiny_clip
from lora_fixtures import inputs, pair  # noqa: F401  (fixtures)
from ttd_d2.modeling.lora import add_lora, iter_lora_modules, load_lora_state_dict, lora_disabled, lora_state_dict


def test_perturbed_changes_and_disabled_restores(pair, inputs):
    ref, model, _ = pair
    base = outputs(ref, inputs)
    perturb(model)
    adapted = outputs(model, inputs)
    for a, b in zip(adapted, base):
        assert (a - b).abs().max() > 1e-3
    with lora_disabled(model):
        assert all_equal(outputs(model, inputs), base)
        assert all_equal(outputs(model, inputs, grad=True), outputs(ref, inputs, grad=True))
        with lora_disabled(model):  # nested
            pass
        assert all(not m.enabled for _, m in iter_lora_modules(model))
    assert all_equal(outputs(model, inputs), adapted)
    with pytest.raises(RuntimeError, match="boom"):
        with lora_disabled(model):
            raise RuntimeError("boom")
    assert all(m.enabled for _, m in iter_lora_modules(model))
    assert all_equal(outputs(model, inputs), adapted)


def test_state_dict_roundtrip(pair, inputs):
    ref, model, _ = pair
    perturb(model)
    sd = lora_state_dict(model)
    assert len(sd) == 2 * N_ADAPTED
    assert sd["visual.transformer.resblocks.0.attn.in_proj_weight.lora_A"].shape == (4, 64)
    assert sd["visual.transformer.resblocks.0.attn.in_proj_weight.lora_B"].shape == (192, 4)
    assert sd["transformer.resblocks.0.mlp.c_fc.weight.lora_B"].shape == (128, 4)
    assert all(not t.requires_grad for t in sd.values())
    fresh = copy.deepcopy(ref)
    add_lora(fresh, rank=4, alpha=8.0)
    assert not all_equal(outputs(fresh, inputs), outputs(model, inputs))
    res = load_lora_state_dict(fresh, sd)
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert all_equal(outputs(fresh, inputs), outputs(model, inputs))


def test_torch_save_roundtrip(pair, inputs, tmp_path):
    ref, model, _ = pair
    perturb(model)
    path = tmp_path / "lora.pt"
    torch.save(lora_state_dict(model), path)
    loaded = torch.load(path, weights_only=True)
    fresh = copy.deepcopy(ref)
    add_lora(fresh, rank=4, alpha=8.0)
    load_lora_state_dict(fresh, loaded)
    assert all_equal(outputs(fresh, inputs), outputs(model, inputs))
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    assert path.stat().st_size < 0.25 * buf.getbuffer().nbytes


def test_strict_load_errors(pair):
    _, model, _ = pair
    sd = lora_state_dict(model)
    missing = dict(sd)
    key = next(iter(missing))
    del missing[key]
    with pytest.raises(KeyError, match="missing"):
        load_lora_state_dict(model, missing)
    extra = dict(sd, **{"foo.lora_A": torch.zeros(1)})
    with pytest.raises(KeyError, match="unexpected"):
        load_lora_state_dict(model, extra)
    res = load_lora_state_dict(model, {**missing, "foo.lora_A": torch.zeros(1)}, strict=False)
    assert res.missing_keys == [key] and res.unexpected_keys == ["foo.lora_A"]
    other = frozen(tiny_clip())
    add_lora(other, rank=2, alpha=8.0)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        load_lora_state_dict(model, lora_state_dict(other))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        load_lora_state_dict(model, lora_state_dict(other), strict=False)
