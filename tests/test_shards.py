"""WebDataset shards: write -> read round trip, webdataset compatibility, resume of a half-written set."""
from __future__ import annotations

import io

import numpy as np
import pytest

from labelgen.data.classes import ClassList
from labelgen.data.shards import ShardReader, ShardSample, ShardWriter, read_manifest
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
            extras={"soft.npy": npy_bytes(np.full(3, k, np.uint8))},
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
        assert g.extras == w.extras
    assert ShardReader(tmp_path).classes == CLASSES
    assert read_manifest(tmp_path)["config"] == {"n": 12}


def test_reader_resumes_from_an_offset(tmp_path):
    write_set(tmp_path, [0, 1, 2]).write_manifest()
    reader = ShardReader(tmp_path, start=5)
    assert len(reader) == 7
    assert [s.key for s in reader] == [f"{k:09d}" for k in range(5, 12)]


def test_webdataset_reads_the_same_samples(tmp_path):
    import webdataset as wds

    write_set(tmp_path, [0, 1]).write_manifest()
    urls = [str(p) for p in sorted(tmp_path.glob("*.tar"))]
    ds = wds.WebDataset(urls, shardshuffle=False).decode("rgb8")
    got = list(ds)
    want = samples(0, 8)
    assert [g["__key__"] for g in got] == [w.key for w in want]
    assert (got[3]["png"] == want[3].image).all()
    assert got[3]["json"]["seed"] == 3 and (got[3]["mask.png"][..., 0] == want[3].mask).all()
    assert (got[3]["soft.npy"] == np.full(3, 3, np.uint8)).all()


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
