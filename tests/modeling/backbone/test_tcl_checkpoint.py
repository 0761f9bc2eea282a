"""TCL checkpoints in the authors' format (MODEL.TCL.WEIGHTS): the key names of TCL's code, a
round trip through a file written with random weights, and the errors naming the key."""
import pytest
import torch
from detectron2.modeling import build_model
from omegaconf import OmegaConf

from conftest import make_tiny_cfg
from ttd_d2.modeling.backbone import TCL
from ttd_d2.modeling.backbone.tcl_checkpoint import tcl_checkpoint

# The keys of TCL's state dict (kakaobrain/tcl: models/tcl/{tcl,masker,decoders,modules}.py)
# for its ViT configuration: masker = copied last block + GDecoder(n_layers 2, double) + image_proj.
BLOCK_PARAMS = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                "mlp.c_proj.weight", "mlp.c_proj.bias"]
AUTHORS_KEYS = (
    {f"masker.image_encoder.backbone.transformer.resblocks.0.{p}" for p in BLOCK_PARAMS}
    | {f"masker.image_encoder.decoder.decoder.net.{i}.{conv}.{p}" for i in (0, 1) for conv in ("conv", "conv2")
       for p in ("norm.weight", "norm.bias", "conv.weight", "conv.bias", "gate.gate")}
    | {"masker.image_encoder.decoder.image_proj.ln.weight", "masker.image_encoder.decoder.image_proj.ln.bias",
       "masker.image_encoder.decoder.image_proj.proj", "masker.sim2mask.w", "masker.sim2mask.b"}
)
TCL_CONFIG = {"model": {"type": "TCL", "clip_model": "ViT-B/16", "ie_freeze": 11, "ie_ignore_last_attn": True,
                        "masker": {"decoder": {"type": "GDecoder", "double": True, "n_layers": 2, "kernel_size": 3}}},
              "train": {"total_steps": 50000}, "output": "???"}


def tcl_cfg(**opts):
    cfg = make_tiny_cfg()
    cfg.MODEL.BACKBONE.NAME = "TCL"
    cfg.merge_from_list([x for k, v in opts.items() for x in (k, v)])
    return cfg


def build_tcl(**opts):
    torch.manual_seed(0)  # the same CLIP every time
    return TCL(tcl_cfg(**opts)).eval()


def randomised(tcl, seed=1):
    """``tcl`` with every head weight (gates included) and a masker drawn at random."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tcl.head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] > 1 else 0.0))
    return tcl, {"w": torch.tensor(7.5), "b": torch.tensor(-1.25)}


def write(path, content):
    torch.save(content, path)
    return str(path)


@pytest.fixture
def trained_file(tmp_path):
    """(path of a TCL checkpoint with random weights, the TCL it came from, its masker)."""
    tcl, masker = randomised(build_tcl())
    content = tcl_checkpoint(tcl.head, masker, config=OmegaConf.create(TCL_CONFIG), step=50000)
    content["optimizer"] = {"state": {}, "param_groups": [{"lr": 3e-4, "params": [0, 1]}]}
    return write(tmp_path / "tcl.pth", content), tcl, masker


def test_written_keys_are_those_of_tcl_code():
    tcl, masker = randomised(build_tcl())
    content = tcl_checkpoint(tcl.head, masker)
    assert set(content) == {"model", "optimizer", "lr_scheduler", "scaler", "step", "config"}
    assert set(content["model"]) == AUTHORS_KEYS
    assert content["model"]["masker.image_encoder.decoder.decoder.net.1.conv2.gate.gate"].shape == ()
    assert content["model"]["masker.image_encoder.decoder.decoder.net.0.conv.conv.weight"].shape == (64, 64, 3, 3)
    assert content["model"]["masker.image_encoder.decoder.image_proj.proj"].shape == (64, 32)  # width x embed


def test_round_trip_gives_the_same_outputs(trained_file):
    path, source, masker = trained_file
    loaded = build_tcl(**{"MODEL.TCL.WEIGHTS": path})
    x = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        expected, got = source(x), loaded(x)
    assert torch.equal(got["dense"], expected["dense"]) and torch.equal(got["global"], expected["global"])
    assert {k: float(v) for k, v in loaded.masker_state.items()} == {"w": 7.5, "b": -1.25}
    assert not torch.allclose(build_tcl()(x)["dense"], got["dense"], atol=1e-3)  # the file changed the head


def test_the_meta_architecture_starts_its_masker_at_the_checkpoint(trained_file):
    path, _, _ = trained_file
    cfg = tcl_cfg(**{"MODEL.TCL.WEIGHTS": path})
    model = build_model(cfg)
    assert (float(model.masker.w), float(model.masker.b)) == (7.5, -1.25)
    cfg.MODEL.TCL.MASKER_FROM_WEIGHTS = False
    model = build_model(cfg)
    assert (float(model.masker.w), float(model.masker.b)) == (cfg.MODEL.MASKER.INIT_W, cfg.MODEL.MASKER.INIT_B)


def test_frozen_clip_and_loss_keys_are_skipped(tmp_path, trained_file):
    path, source, _ = trained_file
    content = torch.load(path, weights_only=False)
    content["model"]["clip_image_encoder.clip_visual.conv1.weight"] = torch.zeros(64, 3, 8, 8)
    content["model"]["clip_text_encoder.token_embedding.weight"] = torch.zeros(3, 32)
    content["model"]["tcli_loss.logit_scale"] = torch.tensor(2.6)
    loaded = build_tcl(**{"MODEL.TCL.WEIGHTS": write(tmp_path / "full.pth", content)})
    assert torch.equal(loaded.head.proj, source.head.proj)


@pytest.mark.parametrize("change, fragment", [
    ("drop masker.image_encoder.decoder.decoder.net.1.conv2.gate.gate",
     "missing keys ['masker.image_encoder.decoder.decoder.net.1.conv2.gate.gate']"),
    ("drop masker.sim2mask.b", "missing keys ['masker.sim2mask.b']"),
    ("add masker.image_encoder.backbone.transformer.resblocks.1.ln_1.weight",
     "unexpected keys ['masker.image_encoder.backbone.transformer.resblocks.1.ln_1.weight']"),
    ("shape masker.image_encoder.decoder.image_proj.proj",
     "masker.image_encoder.decoder.image_proj.proj: checkpoint (64, 16) vs model (64, 32)"),
])
def test_a_wrong_checkpoint_is_refused_naming_the_key(tmp_path, trained_file, change, fragment):
    path, _, _ = trained_file
    content = torch.load(path, weights_only=False)
    action, key = change.split(" ")
    if action == "drop":
        del content["model"][key]
    elif action == "add":
        content["model"][key] = torch.ones(64)
    else:
        content["model"][key] = torch.zeros(64, 16)
    bad = write(tmp_path / "bad.pth", content)
    with pytest.raises(ValueError) as info:
        build_tcl(**{"MODEL.TCL.WEIGHTS": bad})
    assert fragment in str(info.value) and "MODEL.TCL.WEIGHTS" in str(info.value)


def test_a_missing_file_names_the_key_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MODEL.TCL.WEIGHTS '.*nowhere.pth' does not exist\. Give TCL's checkpoint"):
        build_tcl(**{"MODEL.TCL.WEIGHTS": str(tmp_path / "nowhere.pth")})


def test_other_files_are_refused(tmp_path, trained_file):
    plain = write(tmp_path / "plain.pth", dict(torch.load(trained_file[0], weights_only=False)["model"]))
    with pytest.raises(ValueError, match="is not a TCL checkpoint in the authors' format: expected a dict with a 'model'"):
        build_tcl(**{"MODEL.TCL.WEIGHTS": plain})
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="MODEL.TCL.WEIGHTS '.*text.pth' cannot be read as a torch checkpoint"):
        build_tcl(**{"MODEL.TCL.WEIGHTS": str(tmp_path / "text.pth")})


def test_writing_refuses_a_head_with_adapters():
    from ttd_d2.modeling.lora import add_lora_to_blocks

    tcl = build_tcl()
    add_lora_to_blocks([tcl.head.block], 2, 4.0, ["mlp.c_fc"])
    with pytest.raises(ValueError, match="merge them"):
        tcl_checkpoint(tcl.head, {"w": torch.tensor(1.0), "b": torch.tensor(0.0)})
