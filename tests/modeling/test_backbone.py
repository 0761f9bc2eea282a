"""CLIPDense: shapes, every dense mode against the formula on open_clip's own weights, loading."""
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from ttd_d2.modeling.backbone import DENSE_MODES, CLIPDense
from ttd_d2.modeling.backbone.text_encoding import encode_tokens


def build(cfg, mode="maskclip", **clip_keys):
    cfg.MODEL.CLIP.DENSE_MODE = mode
    for key, value in clip_keys.items():
        setattr(cfg.MODEL.CLIP, key, value)
    return CLIPDense(cfg).eval()


@pytest.mark.parametrize("size", [(32, 32), (48, 80), (64, 40)])
def test_output_shapes(tiny_cfg, size):
    backbone = build(tiny_cfg)
    out = backbone(torch.randn(2, 3, *size))
    assert out["dense"].shape == (2, 32, size[0] // 8, size[1] // 8)
    assert out["global"].shape == (2, 32)
    assert backbone.output_shape()["dense"].channels == 32 and backbone.output_shape()["dense"].stride == 8


def test_global_equals_open_clip_encode_image(tiny_cfg):
    backbone = build(tiny_cfg)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(backbone(x)["global"], backbone.clip.encode_image(x), atol=1e-5)


def test_pixel_mean_std_come_from_open_clip(tiny_cfg):
    backbone = build(tiny_cfg)
    cfg = open_clip.get_model_preprocess_cfg(backbone.clip)
    assert backbone.pixel_mean == pytest.approx([255 * m for m in cfg["mean"]])
    assert backbone.pixel_std == pytest.approx([255 * s for s in cfg["std"]])


def reference_dense(clip, x, mode, sigma=5.0, embedded=None):
    """Dense features written from docs/METHOD.md ("Dense backbones") with explicit per-head loops.
    ``embedded``: (tokens [B, 1 + h*w, C], (h, w)) of a non-square grid, whose positional
    embedding open_clip cannot resize (else open_clip's own embedding of a square image)."""
    visual = clip.visual
    with torch.no_grad():
        if embedded is None:
            tokens = visual._embeds(x)
            side = int(math.isqrt(tokens.shape[1] - 1))
            gh, gw = side, side
        else:
            tokens, (gh, gw) = embedded
        for block in visual.transformer.resblocks[:-1]:
            tokens = block(tokens)
    last = visual.transformer.resblocks[-1]
    width = tokens.shape[-1]
    heads = last.attn.num_heads
    d = width // heads
    y = last.ln_1(tokens)
    w_q, w_k, w_v = last.attn.in_proj_weight.split(width)
    b_q, b_k, b_v = last.attn.in_proj_bias.split(width)
    q, k, v = y @ w_q.T + b_q, y @ w_k.T + b_k, y @ w_v.T + b_v
    n = tokens.shape[1]
    assert n - 1 == gh * gw
    gauss = torch.zeros(n, n)
    for i in range(n - 1):  # patch i is at row i // gw, column i % gw (row-major)
        for j in range(n - 1):
            dist2 = (i // gw - j // gw) ** 2 + (i % gw - j % gw) ** 2
            gauss[i + 1, j + 1] = math.exp(-dist2 / (2 * sigma**2))
    outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        qh, kh, vh = q[..., sl], k[..., sl], v[..., sl]
        s = 1 / math.sqrt(d)
        if mode == "vanilla":
            outs.append(torch.softmax(qh @ kh.transpose(1, 2) * s, -1) @ vh)
        elif mode == "maskclip":
            outs.append(vh)
        elif mode == "sclip":
            attn = torch.softmax(qh @ qh.transpose(1, 2) * s, -1) + torch.softmax(kh @ kh.transpose(1, 2) * s, -1)
            outs.append(attn @ vh)
        elif mode == "clearclip":
            outs.append(torch.softmax(qh @ qh.transpose(1, 2) * s, -1) @ vh)
        elif mode == "naclip":
            outs.append(torch.softmax(kh @ kh.transpose(1, 2) * s + gauss, -1) @ vh)
    attn_out = torch.cat(outs, -1) @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
    if mode in ("clearclip", "naclip"):
        out = attn_out
    else:
        y = tokens + attn_out
        out = y + last.mlp(last.ln_2(y))
    dense = visual.ln_post(out[:, 1:]) @ visual.proj
    return dense.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)


@pytest.mark.parametrize("mode", DENSE_MODES)
def test_dense_mode_matches_formula(tiny_cfg, mode):
    backbone = build(tiny_cfg, mode)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = backbone(x)["dense"]
        ref = reference_dense(backbone.clip, x, mode)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()



@pytest.mark.parametrize("size", [(32, 48), (48, 32)])
@pytest.mark.parametrize("mode", ["naclip", "sclip"])
def test_dense_mode_matches_formula_on_a_non_square_grid(tiny_cfg, mode, size):
    """A 4 x 6 (6 x 4) patch grid: NACLIP's Gaussian neighbourhood follows rows of w patches."""
    backbone = build(tiny_cfg, mode, NACLIP_SIGMA=1.0)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        ours = backbone(x)["dense"]
        ref = reference_dense(backbone.clip, x, mode, sigma=1.0, embedded=backbone.embed_patches(x))
    assert ours.shape == ref.shape == (1, 32, size[0] // 8, size[1] // 8)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()

def test_dense_modes_differ(tiny_cfg):
    x = torch.randn(1, 3, 32, 32)
    torch.manual_seed(0)
    outs = {}
    for mode in DENSE_MODES:
        torch.manual_seed(0)
        with torch.no_grad():
            outs[mode] = build(tiny_cfg, mode)(x)["dense"]
    assert all(not torch.allclose(outs[a], outs[b]) for a in outs for b in outs if a < b)


def test_vanilla_dense_equals_open_clip_tokens(tiny_cfg):
    backbone = build(tiny_cfg, "vanilla")
    x = torch.randn(1, 3, 32, 32)
    backbone.clip.visual.output_tokens = True
    with torch.no_grad():
        _, tokens = backbone.clip.visual(x)
        backbone.clip.visual.output_tokens = False
        expected = (tokens @ backbone.clip.visual.proj).transpose(1, 2).reshape(1, -1, 4, 4)
        assert torch.allclose(backbone(x)["dense"], expected, atol=1e-5)


def test_short_context_text_equals_full_context(tiny_cfg):
    backbone = build(tiny_cfg)
    tokens = backbone.tokenize(["circle", "a red star near a blue moon"])
    with torch.no_grad():
        short = encode_tokens(backbone.clip, tokens)
        full = backbone.clip.encode_text(tokens)
    assert torch.allclose(short, full, atol=1e-5)


def test_encode_text_averages_templates(tiny_cfg):
    backbone = build(tiny_cfg, PROMPT_TEMPLATES=["a photo of a {}.", "a {}"])
    with torch.no_grad():
        emb = backbone.encode_text(["star"], use_templates=True)
        parts = F.normalize(backbone.clip.encode_text(backbone.tokenize(["a photo of a star.", "a star"])), dim=-1)
    assert torch.allclose(emb[0], F.normalize(parts.mean(0), dim=-1), atol=1e-5)
    assert backbone.encode_text([]).shape == (0, 32)


def test_captions_and_prompted_words_in_one_pass_equal_two_passes(tiny_cfg):
    """encode_tokens_and_words: the captions' and the prompted words' embeddings from one text
    pass equal the two separate passes (the words' rows run at the captions' longer context),
    values and the text tower's gradients, with adapters on the text tower."""
    from ttd_d2.modeling.lora import add_lora, lora_parameters

    backbone = build(tiny_cfg, PROMPT_TEMPLATES=["a photo of a {}.", "a {}"])
    add_lora(backbone.clip, rank=2, alpha=4.0, towers=["text"])
    with torch.no_grad():
        for p in lora_parameters(backbone.clip):
            p.normal_(0, 0.1)
    captions = ["a big red circle on the left of a small blue square", "a star"]
    words = ["circle", "blue square", "star"]
    tokens = backbone.tokenizer(captions)

    def grads(loss):
        return torch.autograd.grad(loss, list(lora_parameters(backbone.clip)))

    joint_caps, joint_words = backbone.encode_tokens_and_words(tokens, words)
    caps, word_emb = backbone.encode_token_ids(tokens), backbone.encode_text(words, use_templates=True)
    assert joint_caps.shape == (2, 32) and joint_words.shape == (3, 32)
    torch.testing.assert_close(joint_caps, caps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(joint_words, word_emb, atol=1e-5, rtol=1e-5)
    weights = torch.randn(5, 32, generator=torch.Generator().manual_seed(0))
    for g, r in zip(grads((torch.cat([joint_caps, joint_words]) * weights).sum()),
                    grads((torch.cat([caps, word_emb]) * weights).sum())):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)
    no_words = backbone.encode_tokens_and_words(tokens, [])
    torch.testing.assert_close(no_words[0], caps, atol=1e-6, rtol=1e-6)
    assert no_words[1].shape == (0, 32)


def test_long_caption_is_truncated_not_rejected(tiny_cfg):
    backbone = build(tiny_cfg)
    with torch.no_grad():
        emb = backbone.encode_text(["word " * 200])
    assert emb.shape == (1, 32) and torch.isfinite(emb).all()


def test_pretrained_local_file_matches_in_memory(tiny_cfg, tmp_path):
    source = build(tiny_cfg)
    path = tmp_path / "tiny.pt"
    torch.save(source.clip.state_dict(), path)
    torch.manual_seed(123)  # a different random init must be overwritten by the file
    loaded = build(tiny_cfg, PRETRAINED=str(path))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for key in ("dense", "global"):
            assert torch.equal(source(x)[key], loaded(x)[key])
        assert torch.equal(source.encode_text(["star"]), loaded.encode_text(["star"]))


def test_missing_checkpoint_file_error(tiny_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build(tiny_cfg, PRETRAINED=str(tmp_path / "missing.pt"))


def test_unknown_tag_error(tiny_cfg):
    with pytest.raises(ValueError, match="not an open_clip tag"):
        build(tiny_cfg, PRETRAINED="laion2b_nonexistent")


def test_uncached_tag_offline_error_names_the_fix(tiny_cfg, monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai': connection refused")

    monkeypatch.setattr(open_clip, "create_model", offline)
    tiny_cfg.MODEL.CLIP.ARCH = "ViT-B-16"
    with pytest.raises(RuntimeError, match="MODEL.CLIP.CACHE_DIR|local checkpoint file"):
        build(tiny_cfg, PRETRAINED="openai")


def test_unknown_arch_error(tiny_cfg):
    with pytest.raises(ValueError, match="not an open_clip model"):
        build(tiny_cfg, ARCH="ViT-Q-99")
    with pytest.raises(FileNotFoundError, match="not found"):
        build(tiny_cfg, ARCH="no_such_model.json")


def test_unknown_dense_mode_error(tiny_cfg):
    with pytest.raises(ValueError, match="DENSE_MODE"):
        build(tiny_cfg, "maskclip++")


def test_prompt_template_set_imagenet80_replaces_the_templates(tiny_cfg):
    from conftest import build

    model = build(tiny_cfg, **{"MODEL.CLIP.PROMPT_TEMPLATE_SET": "imagenet80"})
    templates = model.backbone.prompt_templates
    assert len(templates) == 80 and len(set(templates)) == 80 and all("{}" in t for t in templates)
    assert "a photo of a {}." in templates and "itap of a {}." in templates
    assert build(tiny_cfg).backbone.prompt_templates == ["a photo of a {}."]


def test_resized_positional_embedding_is_kept_while_unchanged_and_frozen(tiny_cfg):
    """The positional embedding resized to a new grid is computed once per grid while it cannot
    change (no gradient) and again after any in-place update; with a gradient it is not kept."""
    from ttd_d2.modeling.backbone.embeddings import interpolate_pos_embed

    backbone = build(tiny_cfg)
    visual = backbone.clip.visual
    grid = (visual.grid_size[0] + 3, visual.grid_size[1] + 1)
    with torch.no_grad():
        first = backbone._positional_embedding(grid)
        assert torch.equal(first, interpolate_pos_embed(visual.positional_embedding, visual.grid_size, grid))
        assert backbone._positional_embedding(grid) is first  # kept
        visual.positional_embedding.add_(1.0)  # an optimizer step or a checkpoint load: a new version
        updated = backbone._positional_embedding(grid)
        assert updated is not first
        assert torch.equal(updated, interpolate_pos_embed(visual.positional_embedding, visual.grid_size, grid))
    trainable = backbone._positional_embedding(grid)  # grad enabled, requires_grad: computed with its graph
    assert trainable.requires_grad and trainable is not updated
    trainable.sum().backward()
    assert visual.positional_embedding.grad is not None
