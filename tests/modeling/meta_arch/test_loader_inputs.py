"""What the training loader's workers send the TTD meta-architecture (caption tokens, candidate
tags, one packed tensor per field through the pickling between processes) gives the same
losses as bare images and caption strings (tiny random CLIP, CPU)."""
from unittest import mock

import cv2
import numpy as np
import pytest
import torch

from conftest import build
from meta_arch_fixtures import caption_batch, random_image, ttd_opts


@pytest.mark.parametrize("ttd, scoring", [(False, None), (True, "s_pixel"), (True, "s_text")])
def test_loader_tokens_give_the_same_losses_as_captions(tiny_cfg, ttd, scoring):
    """The training loader tokenises captions in its workers ("caption_tokens"); the model's
    losses from them equal its losses from the caption strings (s_text: the frozen teacher
    encodes the captions too, from the same tokens)."""
    opts = {"MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0, **(ttd_opts(**{"MODEL.TTD.TAG_SCORING": scoring}) if ttd else {})}
    model = build(tiny_cfg, train=True, **opts)
    batch = caption_batch(["a red circle and a blue square", "a green star", "two circles near a square"])
    tokens = model.backbone.tokenizer([x["caption"] for x in batch]).numpy()
    tokenised = [dict(x, caption_tokens=t) for x, t in zip(batch, tokens)]
    with mock.patch.object(model.backbone, "encode_text", wraps=model.backbone.encode_text) as encode_text:
        torch.manual_seed(1)
        from_tokens = model(tokenised)
        assert all(call.args[0] != [x["caption"] for x in batch] for call in encode_text.call_args_list)
    torch.manual_seed(1)
    from_text = model(batch)
    assert from_tokens.keys() == from_text.keys()
    for name in from_text:
        assert torch.allclose(from_tokens[name], from_text[name], atol=1e-6), name


def test_encode_token_ids_matches_encode_text(tiny_cfg):
    backbone = build(tiny_cfg).backbone
    texts = ["a red circle", "x", "a photo of a star near a moon and an arrow"]
    assert torch.allclose(backbone.encode_token_ids(backbone.tokenizer(texts)), backbone.encode_text(texts), atol=1e-6)


@pytest.mark.parametrize("ttd", [False, True])
def test_packed_batches_give_the_same_losses(tiny_cfg, ttd):
    """A batch packed in the loader workers (ttd_d2.data.collate, after a pickling round trip as
    between processes) gives exactly the losses of the same samples as separate arrays."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    from ttd_d2.data.collate import packed_batch_collator

    opts = {"MODEL.CLIP.CONTRASTIVE_WEIGHT": 1.0, **(ttd_opts() if ttd else {})}
    model = build(tiny_cfg, train=True, **opts)
    batch = caption_batch(["a red circle and a blue square", "a green star", "two circles near a square"])
    tokens = model.backbone.tokenizer([x["caption"] for x in batch]).numpy()
    samples = [dict(x, image=x["image"].numpy(), caption_tokens=t) for x, t in zip(batch, tokens)]
    packed = pickle.loads(ForkingPickler.dumps(packed_batch_collator(samples)))
    assert packed.stacks.keys() == {"image", "caption_tokens"}
    torch.manual_seed(1)
    from_packed = model(packed)
    torch.manual_seed(1)
    from_arrays = model(samples)
    assert from_packed.keys() == from_arrays.keys()
    for name in from_arrays:
        assert torch.equal(from_packed[name], from_arrays[name]), name


def test_worker_side_tags_equal_the_models_and_give_the_same_losses(tiny_cfg, tmp_path):
    """CaptionTrainMapper extracts the candidate tags in the loader workers; they are exactly the
    model's (stopwords, the text window's cut, MAX_TAGS) and the losses from them are the same."""
    from ttd_d2.data.mappers import CaptionTrainMapper

    cfg = tiny_cfg.clone()
    cfg.merge_from_list([x for k, v in ttd_opts(**{"MODEL.TTD.MAX_TAGS": 3}).items() for x in (k, v)])
    model = build(cfg, train=True)
    mapper = CaptionTrainMapper(cfg, True)
    captions = ["a red circle and a blue square", "a green star", "the", "two circles near a square on a wide "
                "striped background with many more words than the tiny text window holds at all"]
    assert mapper.tokenizer.context_length == model.backbone.clip.context_length
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.zeros((40, 48, 3), dtype=np.uint8))
    worker_tags = [mapper({"file_name": str(image), "caption": c})["candidate_tags"] for c in captions]
    assert worker_tags == model.candidate_tags(captions)
    assert worker_tags[2] == [] and len(worker_tags[0]) == 3  # stopwords only; MAX_TAGS
    batch = caption_batch(captions)
    torch.manual_seed(1)
    from_workers = model([dict(x, candidate_tags=t) for x, t in zip(batch, worker_tags)])
    torch.manual_seed(1)
    here = model(batch)
    for name in here:
        assert torch.equal(from_workers[name], here[name]), name


def test_the_loader_workers_share_changes_no_loss(tiny_cfg, tmp_path):
    """Issue "performance": the same losses on a fixed batch whether the step gets bare samples
    (images and caption strings, tokenised and tagged in the step, as before 2026-12-02) or what
    the trainer's loader workers now send (tokens, candidate tags, one packed tensor per field,
    through the pickling between processes)."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    from ttd_d2.data.collate import packed_batch_collator
    from ttd_d2.data.mappers import CaptionTrainMapper

    cfg = tiny_cfg.clone()
    cfg.merge_from_list(["MODEL.TTD.ENABLED", True, "INPUT.TRAIN_SIZE", 32, "INPUT.RANDOM_FLIP", "none",
                         "MODEL.TTD.TAG_SCORING", "image_text"])
    model = build(cfg, train=True)
    mapper = CaptionTrainMapper(cfg, True)
    captions = ["a red circle and a blue square", "a green star on a striped background", "two circles"]
    samples = []
    for i, caption in enumerate(captions):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), random_image(i, 32, 32).permute(1, 2, 0).numpy())
        samples.append(mapper({"file_name": str(path), "caption": caption}))
    bare = [{"image": torch.from_numpy(x["image"].copy()), "caption": x["caption"]} for x in samples]
    sent = pickle.loads(ForkingPickler.dumps(packed_batch_collator(samples)))
    torch.manual_seed(3)
    before = model(bare)
    torch.manual_seed(3)
    after = model(sent)
    assert before.keys() == after.keys() == {"loss_distill", "loss_tag"}
    for name in before:
        assert torch.equal(before[name], after[name]), name
