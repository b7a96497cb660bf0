"""WebDataset shards, the one sample codec: encode -> tar -> read round trip (sequential and random access),
soft-label formats, one-line errors for bad members, webdataset compatibility, resume of a half-written set,
and the status of an unfinished set (`labelgen data info`)."""
from __future__ import annotations

import io

import numpy as np
import pytest

from labelgen.data.classes import ClassList
from labelgen.data.shards import (
    ShardReader, ShardSample, ShardWriter, decode_soft, encode_sample, read_manifest, shard_set_status,
    soft_probabilities,
)
from labelgen.errors import DataError

CLASSES = ClassList.from_names(["bg", "a", "b"])


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def samples(start: int, n: int) -> list[ShardSample]:
    out = []
    for k in range(start, start + n):
        rng = np.random.default_rng(k)
        out.append(ShardSample(
            key=f"{k:09d}",
            image=rng.integers(0, 255, (8, 10, 3), dtype=np.uint8),
            mask=rng.integers(0, 3, (8, 10), dtype=np.uint8),
            meta={"seed": k, "generator": "g", "head": "h", "uncertainty": float(k) / 10},
            extras={"depth.npy": npy_bytes(np.full(3, k, np.uint8))},
            soft=rng.integers(0, 256, (3, 8, 10), dtype=np.uint8),
        ))
    return out


def write_set(out, shard_ids, per_shard=4):
    writer = ShardWriter(out, CLASSES)
    for i in shard_ids:
        writer.write_shard(i, samples(i * per_shard, per_shard))
    return writer


def test_round_trip_in_order_with_extras(tmp_path):
    writer = write_set(tmp_path, [0, 1, 2])
    manifest = writer.write_manifest({"n": 12})
    assert manifest["num_samples"] == 12 and [s["shard"] for s in manifest["shards"]] == ["000000.tar", "000001.tar", "000002.tar"]
    got = list(ShardReader(tmp_path))
    want = samples(0, 12)
    assert [s.key for s in got] == [s.key for s in want]
    for g, w in zip(got, want):
        assert (g.image == w.image).all() and (g.mask == w.mask).all() and g.meta == w.meta
        assert g.extras == w.extras and g.soft.dtype == np.uint8 and (g.soft == w.soft).all()
    assert ShardReader(tmp_path).classes == CLASSES
    assert read_manifest(tmp_path)["config"] == {"n": 12}


def test_reader_resumes_from_an_offset(tmp_path):
    write_set(tmp_path, [0, 1, 2]).write_manifest()
    reader = ShardReader(tmp_path, start=5)
    assert len(reader) == 7
    assert [s.key for s in reader] == [f"{k:09d}" for k in range(5, 12)]


def test_webdataset_reads_the_same_samples(tmp_path):
    wds = pytest.importorskip("webdataset")  # not a dependency: the layout stays readable by it

    write_set(tmp_path, [0, 1]).write_manifest()
    urls = [str(p) for p in sorted(tmp_path.glob("*.tar"))]
    ds = wds.WebDataset(urls, shardshuffle=False).decode("rgb8")
    got = list(ds)
    want = samples(0, 8)
    assert [g["__key__"] for g in got] == [w.key for w in want]
    assert (got[3]["png"] == want[3].image).all()
    assert got[3]["json"]["seed"] == 3 and (got[3]["mask.png"][..., 0] == want[3].mask).all()
    assert (got[3]["depth.npy"] == np.full(3, 3, np.uint8)).all()
    assert (got[3]["soft.npz"]["probs"] == want[3].soft).all()


def test_resume_of_a_half_written_set(tmp_path):
    write_set(tmp_path, [0, 1, 3])
    # a kill left: a temp file mid-write, and shard 2's tar renamed but its index not yet written
    (tmp_path / "000004.tar.123.tmp").write_bytes(b"partial")
    write_set(tmp_path / "other", [2])
    (tmp_path / "other" / "000002.tar").rename(tmp_path / "000002.tar")
    writer = ShardWriter(tmp_path, CLASSES)
    assert writer.done_shards() == {0, 1, 3}
    assert writer.clean_partial() == 2
    assert not (tmp_path / "000002.tar").exists() and not list(tmp_path.glob("*.tmp"))
    # the re-run writes only the missing shards; the result equals an uninterrupted run
    for i in sorted({0, 1, 2, 3} - writer.done_shards()):
        writer.write_shard(i, samples(i * 4, 4))
    writer.write_manifest()
    keys = [s.key for s in ShardReader(tmp_path)]
    assert keys == [f"{k:09d}" for k in range(16)] and len(set(keys)) == 16


def test_reader_without_manifest_uses_finished_shards_only(tmp_path):
    write_set(tmp_path, [0])
    (tmp_path / "000001.tar.9.tmp").write_bytes(b"x")
    assert [s.key for s in ShardReader(tmp_path)] == [f"{k:09d}" for k in range(4)]


def test_errors(tmp_path):
    with pytest.raises(DataError, match="no finished shards"):
        ShardReader(tmp_path)
    write_set(tmp_path, [0])
    (tmp_path / "000000.tar").write_bytes(b"corrupt")
    with pytest.raises(DataError, match="000000.tar: unreadable shard"):
        list(ShardReader(tmp_path))


# ------------------------------------------------------------------ the codec
def test_codec_round_trip_is_bit_identical(tmp_path):
    """encode -> tar -> read back (streamed and by random access): image, mask, soft labels (dtype kept)
    and meta come back bit-identical, and re-encoding gives the same member bytes."""
    rng = np.random.default_rng(7)
    originals = [
        ShardSample("a0", rng.integers(0, 256, (6, 9, 3), dtype=np.uint8), rng.integers(0, 3, (6, 9), dtype=np.uint8),
                    {"seed": 1, "recipe": {"seed": 1, "truncation": 0.7}, "uncertainty": 0.123456, "name": "é"},
                    soft=rng.integers(0, 256, (3, 6, 9), dtype=np.uint8)),
        ShardSample("a1", rng.integers(0, 256, (6, 9, 3), dtype=np.uint8), np.full((6, 9), 255, np.uint8), {},
                    soft=rng.random((3, 6, 9), dtype=np.float32)),
        ShardSample("a2", rng.integers(0, 256, (6, 9, 3), dtype=np.uint8), np.zeros((6, 9), np.uint8), {"k": [1, 2]},
                    extras={"depth.npy": npy_bytes(np.arange(4))}),
    ]
    encoded = [encode_sample(s) for s in originals]
    assert [name for name, _ in encoded[0]] == ["a0.png", "a0.mask.png", "a0.json", "a0.soft.npz"]
    ShardWriter(tmp_path, CLASSES).write_shard(0, encoded=encoded)
    ShardWriter(tmp_path, CLASSES).write_manifest()
    reader = ShardReader(tmp_path)
    streamed = list(reader)
    by_index = [reader.read(i) for i in range(len(reader.locations()))]
    assert [where.has_soft for where in reader.locations()] == [True, True, False]
    for got in (streamed, by_index):
        for g, w, members in zip(got, originals, encoded):
            assert g.key == w.key and g.meta == w.meta and g.extras == w.extras
            assert g.image.dtype == w.image.dtype and g.image.tobytes() == w.image.tobytes()
            assert g.mask.dtype == w.mask.dtype and g.mask.tobytes() == w.mask.tobytes()
            if w.soft is None:
                assert g.soft is None
            else:
                assert g.soft.dtype == w.soft.dtype and g.soft.shape == w.soft.shape
                assert g.soft.tobytes() == w.soft.tobytes()
            assert encode_sample(g) == members  # deterministic: same sample, same bytes
    assert [reader.read_meta(i) for i in range(3)] == [s.meta for s in originals]


def test_encode_refuses_bad_samples():
    image, mask = np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5), np.uint8)
    for bad, message in [(ShardSample("a.b", image, mask, {}), "without '.'"),
                         (ShardSample("a", image, mask[:3], {}), r"\[H, W, 3\]"),
                         (ShardSample("a", image, mask, {}, soft=np.zeros((3, 5, 4), np.uint8)), "soft labels"),
                         (ShardSample("a", image, mask, {}, {"soft.npz": b""}, np.zeros((3, 4, 5), np.uint8)), "twice")]:
        with pytest.raises(ValueError, match=message):
            encode_sample(bad)


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_soft_label_formats():
    mask = np.random.default_rng(3).integers(0, 3, (8, 10)).astype(np.uint8)
    probs = np.stack([(mask == k).astype(np.float32) * 0.7 + 0.1 for k in range(3)])  # [3, 8, 10], sums 1
    stored = decode_soft(npz_bytes(probs=np.round(probs * 255).astype(np.uint8)), "soft.npz", (8, 10), "s")
    assert stored.dtype == np.uint8 and stored.shape == (3, 8, 10)
    got = soft_probabilities(stored)
    assert got.dtype == np.float32 and np.allclose(got.sum(0), 1, atol=1e-5)
    assert np.array_equal(got.argmax(0), mask) and abs(got.max() - 0.8) < 0.01
    logits_hwc = decode_soft(npz_bytes(logits=np.log(probs).transpose(1, 2, 0)), "soft.npz", (8, 10), "s")
    assert np.allclose(logits_hwc, probs, atol=1e-5)  # [H, W, C] logits -> [C, H, W] softmax
    assert np.array_equal(decode_soft(npy_bytes(probs), "soft.npy", (8, 10), "s"), probs)
    zero = np.zeros((3, 8, 10), np.uint8)
    assert not soft_probabilities(zero).any()  # all-zero pixels stay ignored
    with pytest.raises(DataError, match=r"x.tar: k.soft.npz: soft labels have shape \[3, 8, 10\], expected \[C, 8, 9\]"):
        decode_soft(npz_bytes(probs=zero), "soft.npz", (8, 9), "x.tar: k.soft.npz")
    with pytest.raises(DataError, match="x.tar: k.soft.npz: unreadable soft labels"):
        decode_soft(b"not an npz", "soft.npz", (8, 10), "x.tar: k.soft.npz")


def _bad_shard(tmp_path, replace: dict[str, bytes], mask_value: int = 1):
    """A finished one-shard set whose sample k1 has members replaced/renamed by ``replace``."""
    good = [ShardSample(f"k{i}", np.zeros((4, 5, 3), np.uint8), np.full((4, 5), mask_value if i == 1 else 0, np.uint8),
                        {"i": i}, soft=np.zeros((3, 4, 5), np.uint8)) for i in range(3)]
    encoded = [encode_sample(s) for s in good]
    members = dict(encoded[1])
    for name, payload in replace.items():
        if payload is None:
            members.pop(name)
        else:
            members[name] = payload
    encoded[1] = list(members.items())
    writer = ShardWriter(tmp_path, CLASSES)
    writer.write_shard(0, encoded=encoded)
    writer.write_manifest()
    return tmp_path / "000000.tar"


@pytest.mark.parametrize("replace, mask_value, message", [
    ({"k1.png": b"\x89PNG\r\n\x1a\n garbage"}, 1, "000000.tar: k1.png: corrupt PNG"),
    ({"k1.mask.png": b"nope"}, 1, "000000.tar: k1.mask.png: corrupt PNG"),
    ({"k1.json": b"{not json"}, 1, "000000.tar: k1.json: invalid JSON"),
    ({"k1.json": b"[1, 2]"}, 1, "000000.tar: k1.json: expected a JSON object"),
    ({"k1.soft.npz": b"junk"}, 1, "000000.tar: k1.soft.npz: unreadable soft labels"),
    ({"k1.json": None}, 1, "000000.tar: sample k1 has no member k1.json"),
    ({"k1README": b"x"}, 1, "000000.tar: member 'k1README' is not named <key>.<ext>"),
    ({}, 7, r"000000.tar: k1.mask.png: class id 7 out of range \(classes 0..2, 255 = ignore\)"),
])
def test_bad_members_are_one_line_errors_naming_shard_and_member(tmp_path, replace, mask_value, message):
    _bad_shard(tmp_path, replace, mask_value)
    for read in (lambda r: list(r), lambda r: [r.read(i) for i in range(3)]):
        with pytest.raises(DataError, match=message) as caught:
            read(ShardReader(tmp_path))
        assert "\n" not in str(caught.value)


def test_class_count_comes_from_the_manifest_or_the_caller(tmp_path):
    _bad_shard(tmp_path, {}, mask_value=2)  # ids 0..2 fit the manifest's 3 classes
    assert len(list(ShardReader(tmp_path))) == 3
    with pytest.raises(DataError, match="class id 2 out of range"):
        ShardReader(tmp_path, num_classes=2).read(1)
    with pytest.raises(DataError, match="k0.soft.npz: soft labels for 3 classes, the data has 4"):
        ShardReader(tmp_path).read(0, num_classes=4)


# ------------------------------------------------------------------ status of a set
def test_status_of_an_unfinished_and_a_finished_set(tmp_path):
    writer = write_set(tmp_path, [0, 2])
    status = shard_set_status(tmp_path, planned=4)
    assert (status.finished, status.samples, status.planned, status.complete) == (2, 8, 4, False)
    assert "unfinished, 2 of 4 shards done (8 samples so far); no manifest.json yet" in status.describe()
    writer.write_manifest({"shards_planned": 4})  # a manifest over fewer shards than planned
    assert not shard_set_status(tmp_path).complete
    assert "manifest.json lists fewer shards than planned" in shard_set_status(tmp_path).describe()
    for i in (1, 3):
        writer.write_shard(i, samples(i * 4, 4))
    writer.write_manifest({"shards_planned": 4})
    status = shard_set_status(tmp_path)
    assert status.complete and status.describe().endswith("complete, 4 shards, 16 samples")


def test_data_info_tells_an_unfinished_synthesis_from_a_finished_one(tmp_path, capsys):
    """`labelgen data info` on a synthesis folder killed after 2 of its 3 planned shards."""
    from labelgen.cli import main
    from labelgen.data.io import atomic_write_json
    from labelgen.synthesis.synthesize import PLAN_NAME, SynthesisConfig

    atomic_write_json(tmp_path / PLAN_NAME, {**SynthesisConfig(n=12, shard_size=4).plan_key(), "generator": "g"})
    main(["data", "info", str(tmp_path)])  # killed before its first shard
    assert "unfinished, 0 of 3 shards done (0 samples so far)" in capsys.readouterr().out
    writer = write_set(tmp_path, [0, 1])
    main(["data", "info", str(tmp_path)])
    out = capsys.readouterr().out
    assert "unfinished, 2 of 3 shards done (8 samples so far)" in out and "resume" in out
    writer.write_shard(2, samples(8, 4))
    writer.write_manifest({"shards_planned": 3})
    main(["data", "info", str(tmp_path)])
    assert "complete, 3 shards, 12 samples" in capsys.readouterr().out
