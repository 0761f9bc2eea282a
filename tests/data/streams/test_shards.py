"""ttd_d2/data/streams: webdataset shards as img2dataset writes them, every kind of bad sample
skipped and counted, disjoint shards for every (rank, loader worker), a seeded order."""
import json
import tarfile
from collections import Counter

import pytest
import torch

from shard_fixtures import bad_samples, good, write_shard, write_shards
from ttd_d2.data.mappers import CaptionTrainMapper
from ttd_d2.data.streams import BAD_KINDS, MixedStream, ShardStream, expand_shards, sample_to_record


def mapper(size=32):
    return CaptionTrainMapper(train_size=size, tokenizer=None)


def take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def skipped(samples):
    total = Counter()
    for s in samples:
        total.update(s["skipped"])
    return total


def test_sample_to_record_names_each_problem():
    for key, members, kind in bad_samples("x"):
        sample = {"__key__": key, "__url__": "s.tar", **{name.split(".", 1)[1]: data for name, data in members}}
        record, problem = sample_to_record(sample)
        if kind == "corrupt_image":  # found only when the mapper decodes it
            assert problem is None and record["image_bytes"] == sample["jpg"]
        else:
            assert record is None and problem == kind, key
    assert set(k for _, _, k in bad_samples("x")) <= set(BAD_KINDS)
    record, problem = sample_to_record({"__key__": "k", "__url__": "s.tar", "png": b"img", "json": b'{"caption": " a star "}'})
    assert problem is None and record == {"image_bytes": b"img", "caption": "a star", "key": "k", "file_name": "s.tar:k.png"}
    # .txt wins over .json
    record, _ = sample_to_record({"__key__": "k", "jpg": b"i", "txt": b"from txt", "json": b'{"caption": "from json"}'})
    assert record["caption"] == "from txt"


def test_expand_shards(tmp_path):
    for i in range(3):
        (tmp_path / f"{i:05d}.tar").write_bytes(b"")
    assert expand_shards(str(tmp_path / "{00000..00002}.tar")) == [str(tmp_path / f"{i:05d}.tar") for i in range(3)]
    assert expand_shards([str(tmp_path / "*.tar")]) == [str(tmp_path / f"{i:05d}.tar") for i in range(3)]
    assert expand_shards("pipe:cat x.tar") == ["pipe:cat x.tar"]
    with pytest.raises(FileNotFoundError, match="5 shard path.*00003.tar"):
        expand_shards(str(tmp_path / "{00000..00007}.tar"))
    with pytest.raises(FileNotFoundError, match="img2dataset"):
        expand_shards(str(tmp_path / "none*.tar"))


def test_one_epoch_yields_every_good_sample_once_and_counts_every_bad_one(tmp_path):
    data = write_shards(tmp_path, num_shards=3, good_per_shard=4)
    stream = ShardStream(expand_shards(str(tmp_path / "*.tar")), mapper(), shuffle_buffer=0)
    epoch = take(stream, len(data["good"]))
    assert sorted(s["file_name"].rsplit(":", 1)[1].split(".")[0] for s in epoch) == sorted(data["good"])
    assert dict(skipped(epoch)) == data["bad"]  # each shard ends with a good sample: nothing pending
    sample = epoch[0]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype.name == "uint8"
    assert "image_bytes" not in sample and sample["caption"].startswith("a ")


def test_order_is_seeded_and_shuffled(tmp_path):
    data = write_shards(tmp_path, num_shards=4, good_per_shard=5, with_bad=False)
    shards = expand_shards(str(tmp_path / "*.tar"))
    captions = lambda seed: [s["caption"] for s in take(ShardStream(shards, mapper(), seed=seed, shuffle_buffer=6), 20)]  # noqa: E731
    assert captions(1) == captions(1)
    assert captions(1) != captions(2) and sorted(captions(1)) == sorted(captions(2))
    unshuffled = [s["caption"] for s in take(ShardStream(shards, mapper(), seed=1, shuffle_buffer=0), 20)]
    assert captions(1) != unshuffled and sorted(unshuffled) == sorted(captions(1))
    assert len(data["good"]) == 20


def test_ranks_and_workers_read_disjoint_shards(tmp_path):
    data = write_shards(tmp_path, num_shards=8, good_per_shard=3, with_bad=False)
    shards = expand_shards(str(tmp_path / "*.tar"))
    seen = []
    for rank in range(2):
        stream = ShardStream(shards, mapper(), seed=3, shuffle_buffer=4, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
        it = iter(loader)
        seen.append([next(it)["caption"] for _ in range(12)])  # 2 workers x 2 shards x 3 samples: one epoch each
        del it
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(c for c in _captions(shards))


def _captions(shards):
    return [s["caption"] for s in take(ShardStream(shards, mapper(), shuffle_buffer=0), 24)]


def test_too_few_shards_for_the_processes_is_an_error(tmp_path):
    write_shards(tmp_path, num_shards=3, good_per_shard=1, with_bad=False)
    stream = ShardStream(expand_shards(str(tmp_path / "*.tar")), mapper(), rank=1, world_size=2)
    with pytest.raises(ValueError, match="3 shards for 2 ranks x 2 loader workers.*DATALOADER.NUM_WORKERS"):
        stream.epoch_shards(0, 0, 2)


def test_unreadable_and_truncated_shards_are_skipped_and_counted(tmp_path):
    write_shard(tmp_path / "00000.tar", good("a0", 0) + good("a1", 1))
    truncated = write_shard(tmp_path / "00001.tar", good("t0", 2) + good("t1", 3) + good("t2", 4))
    with tarfile.open(truncated) as tar:
        t1_image = next(m for m in tar.getmembers() if m.name == "t1.jpg").offset_data
    truncated.write_bytes(truncated.read_bytes()[:t1_image + 100])  # cut inside t1's image: t0 survives
    (tmp_path / "00002.tar").write_bytes(b"this is not a tar file at all" * 20)
    (tmp_path / "00003.tar").mkdir()  # a shard that cannot be opened
    shards = sorted(str(p) for p in tmp_path.glob("*.tar"))
    samples = take(ShardStream(shards, mapper(), shuffle_buffer=0), 9)  # three epochs of (a0, a1, t0)
    assert sorted(s["caption"].rsplit(" ", 1)[1] for s in samples) == ["a0"] * 3 + ["a1"] * 3 + ["t0"] * 3
    counts = skipped(samples)
    # one count per bad shard and epoch; those read after the last a1 are still pending
    assert set(counts) == {"shard_error"} and 6 <= counts["shard_error"] <= 9


def test_a_stream_without_one_usable_sample_stops(tmp_path):
    write_shard(tmp_path / "00000.tar", [(k + ".txt", b"no image") for k in ("a", "b")])
    with pytest.raises(RuntimeError, match="not one usable sample"):
        take(ShardStream([str(tmp_path / "00000.tar")], mapper()), 1)


def test_mixed_stream_follows_the_weights(tmp_path):
    for name in ("a", "b"):
        write_shard(tmp_path / f"{name}.tar", sum((good(f"{name}{i}", i) for i in range(5)), []))
    streams = [ShardStream([str(tmp_path / f"{n}.tar")], mapper(), shuffle_buffer=0, name=n) for n in ("a", "b")]
    mixed = take(MixedStream(streams, [3.0, 1.0], seed=0), 400)
    from_a = sum(s["caption"].rsplit(" ", 1)[1].startswith("a") for s in mixed)
    assert 250 < from_a < 350  # 3:1, binomial(400, 0.75): sd 8.7
    with pytest.raises(ValueError, match="one positive weight per stream"):
        MixedStream(streams, [1.0])


def test_keep_lists_change_what_the_loader_yields(tmp_path):
    """DATASETS.IMAGE_TEXT.KEEP_LISTS through the real loader: only the kept keys come out, the
    others are counted as not_kept; both file formats; a bad keep-list is named."""
    from conftest import make_tiny_train_cfg
    from ttd_d2.data.streams.loader import build_stream_loader, read_keep_list
    from ttd_d2.engine.preflight import missing_inputs

    data = write_shards(tmp_path / "shards", num_shards=2, good_per_shard=6, with_bad=False)
    kept = sorted(data["good"])[::3]  # 4 of 12
    (tmp_path / "keep.txt").write_text("# kept by score\n" + "\n".join(kept) + "\n\n")
    (tmp_path / "keep.json").write_text(json.dumps({"keys": kept, "threshold": 0.2}))
    assert read_keep_list(str(tmp_path / "keep.txt")) == read_keep_list(str(tmp_path / "keep.json")) == frozenset(kept)
    cfg = make_tiny_train_cfg("unused", tmp_path / "out", **{"SOLVER.IMS_PER_BATCH": 2})
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.IMAGE_TEXT.SHARDS = [str(tmp_path / "shards" / "*.tar")]
    cfg.DATASETS.IMAGE_TEXT.KEEP_LISTS = [str(tmp_path / "keep.txt")]
    loader = build_stream_loader(cfg, mapper())
    it = iter(loader)
    keys = [s["caption"].rsplit(" ", 1)[1] for _ in range(2) for s in next(it)]
    assert sorted(keys) == kept and loader.skipped["not_kept"] == 8
    cfg.DATASETS.IMAGE_TEXT.KEEP_LISTS = [str(tmp_path / "missing.txt")]
    assert any("KEEP_LISTS[0]: '" in p and "missing.txt" in p for p in missing_inputs(cfg, training=True))
    assert not missing_inputs(cfg, training=False)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="keeps no sample"):
        read_keep_list(str(tmp_path / "empty.txt"))
    (tmp_path / "bad.json").write_text('{"kept": []}')
    with pytest.raises(ValueError, match='must be an object with a "keys" list'):
        read_keep_list(str(tmp_path / "bad.json"))
    cfg.DATASETS.IMAGE_TEXT.KEEP_LISTS = ["", ""]
    with pytest.raises(ValueError, match="2 files for 1 sources"):
        build_stream_loader(cfg, mapper())


def test_worker_batches_follow_the_loaders_round_robin():
    from ttd_d2.data.streams.shards import worker_batches

    assert [worker_batches(5, w, 2) for w in range(2)] == [3, 2]
    assert [worker_batches(7, w, 3) for w in range(3)] == [3, 2, 2]
    assert worker_batches(7, 0, 0) == worker_batches(7, 0, 1) == 7
    assert worker_batches(1, 2, 4) == 0


def test_shard_sizes_from_img2dataset_stats_or_the_tar(tmp_path):
    from ttd_d2.data.streams.shards import shard_size

    write_shard(tmp_path / "00000.tar", good("a", 0) + good("b", 1) + [("c.jpg", b"x")])
    assert shard_size(str(tmp_path / "00000.tar")) == 3
    (tmp_path / "00000_stats.json").write_text(json.dumps({"count": 10, "successes": 7}))
    assert shard_size(str(tmp_path / "00000.tar")) == 7
    (tmp_path / "broken.tar").write_bytes(b"garbage")
    assert shard_size(str(tmp_path / "broken.tar")) == 0


@pytest.mark.parametrize("consumed", [0, 3, 5, 7, 20, 27])
def test_a_resumed_stream_continues_where_it_stopped(tmp_path, consumed):
    """Whole epochs and shards skipped by their sizes, the rest record by record: the resumed
    stream yields what the uninterrupted one yields after ``consumed`` samples."""
    write_shards(tmp_path, num_shards=4, good_per_shard=5, with_bad=False)
    shards = expand_shards(str(tmp_path / "*.tar"))
    whole = [s["caption"] for s in take(ShardStream(shards, mapper(), seed=4, shuffle_buffer=0), consumed + 6)]
    resumed = ShardStream(shards, mapper(), seed=4, shuffle_buffer=0)
    resumed.resume(iterations=consumed, batch_size=1)
    assert [s["caption"] for s in take(resumed, 6)] == whole[consumed:]


def test_a_resumed_mixture_continues_each_stream(tmp_path):
    for name in ("a", "b"):
        write_shard(tmp_path / f"{name}.tar", sum((good(f"{name}{i}", i) for i in range(4)), []))

    def mixture():
        streams = [ShardStream([str(tmp_path / f"{n}.tar")], mapper(), shuffle_buffer=0, name=n) for n in ("a", "b")]
        return MixedStream(streams, [2.0, 1.0], seed=5)

    whole = [s["caption"] for s in take(mixture(), 20)]
    resumed = mixture()
    resumed.resume(iterations=3, batch_size=3)  # 9 samples
    assert [s["caption"] for s in take(resumed, 11)] == whole[9:]
