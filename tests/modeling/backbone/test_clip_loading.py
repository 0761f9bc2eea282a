"""open_clip loading: the activation that matches the pretrained tag (no download)."""
import open_clip
import pytest

from ttd_d2.modeling.backbone import clip_loading
from ttd_d2.modeling.backbone.clip_loading import needs_quick_gelu


@pytest.mark.parametrize("name, pretrained, expected", [
    ("ViT-B-16", "openai", True),  # OpenAI's weights were trained with QuickGELU; the config has GELU
    ("ViT-B-16-quickgelu", "openai", False),  # the config has it already
    ("ViT-B-16", "laion2b_s34b_b88k", False),  # trained with GELU
    ("ViT-B-16", "", False),  # random init
    ("ViT-B-16", "checkpoints/some_file.pt", False),  # a file: not a tag, nothing to read here
])
def test_needs_quick_gelu_reads_the_tag_and_the_config(name, pretrained, expected):
    assert needs_quick_gelu(name, pretrained) is expected


def test_openai_weights_are_built_with_quick_gelu(monkeypatch):
    calls = []
    monkeypatch.setattr(open_clip, "create_model", lambda name, **kwargs: calls.append((name, kwargs)))
    clip_loading._create("ViT-B-16", "openai", "")
    clip_loading._create("ViT-B-16", "", "")
    assert calls[0] == ("ViT-B-16", {"pretrained": "openai", "cache_dir": None, "force_quick_gelu": True})
    assert calls[1][1]["force_quick_gelu"] is False and calls[1][1]["pretrained"] is None


def test_force_quick_gelu_changes_every_block_activation():
    """What the flag does in open_clip (so that the test above means what it says)."""
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    acts = {type(b.mlp.gelu).__name__ for b in model.visual.transformer.resblocks}
    assert acts == {"QuickGELU"}


def _tiny_state(tmp_path):
    from conftest import TINY_ARCH

    import torch
    name = clip_loading.resolve_arch(TINY_ARCH)
    return name, open_clip.create_model(name).state_dict(), torch


@pytest.mark.parametrize("damage, cause", [
    ("truncated", "PytorchStreamReader|failed"),
    ("empty", "EOFError|Ran out of input"),
    ("other weights", "Missing key"),
    ("other shapes", "size mismatch|changed"),
])
def test_a_local_pretrained_file_that_does_not_load_names_the_key_and_the_fix(tmp_path, damage, cause):
    name, state, torch = _tiny_state(tmp_path)
    path = tmp_path / "clip.pt"
    if damage == "truncated":
        torch.save(state, path)
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "other weights":
        torch.save({"foo.weight": torch.zeros(2)}, path)
    else:
        key = "text_projection"  # (open_clip resizes positional embeddings itself)
        torch.save({**state, key: torch.zeros(state[key].shape[0] + 3, state[key].shape[1])}, path)
    with pytest.raises(ValueError, match=f"MODEL.CLIP.PRETRAINED '{path}' cannot be loaded into open_clip {name} "
                                         f"\\(.*({cause}).*\\): give an intact open_clip state dict of the "
                                         "architecture MODEL.CLIP.ARCH names"):
        clip_loading._create(name, str(path), "")


def test_a_model_config_that_is_not_json_names_the_file(tmp_path):
    bad = tmp_path / "broken_clip.json"
    bad.write_text('{"embed_dim": 64, "vision_cfg": ')
    with pytest.raises(ValueError, match=f"MODEL.CLIP.ARCH: model config {bad} is not valid JSON"):
        clip_loading.resolve_arch(str(bad))
