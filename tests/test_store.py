"""Arrow dumps: round trip, row alignment, atomic writes, clear errors."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tokenuni.store import (DumpError, DumpWriter, INDEX_COLUMNS, LAYER_CONVENTION, layer_column, open_dump,
                            validate_dump, vectors)


def index_for(lengths, start_id=0):
    ids = np.concatenate([np.full(n, start_id + i) for i, n in enumerate(lengths)])
    return {
        "sentence_id": ids,
        "position": np.concatenate([np.arange(n) for n in lengths]).astype(np.int32),
        "token_id": np.arange(len(ids), dtype=np.int32),
        "token": [f"t{i}" for i in range(len(ids))],
        "special": np.zeros(len(ids), bool),
        "frequency": np.ones(len(ids), np.int64),
    }


def write_dump(path, batches, n_layers=3, d=4, dtype="float32", **meta):
    with DumpWriter(path, n_layers=n_layers, hidden_size=d, dtype=dtype, metadata={"model_id": "m", **meta}) as writer:
        for index, layers in batches:
            writer.write(index, layers)


def test_round_trip_is_exact_and_memory_mapped(tmp_path):
    rng = np.random.default_rng(0)
    batches = []
    start = 0
    for lengths in ([3, 2], [4], [1, 1, 2]):
        n = sum(lengths)
        batches.append((index_for(lengths, start), [rng.standard_normal((n, 4)).astype(np.float32) for _ in range(3)]))
        start += len(lengths)
    path = tmp_path / "d.arrow"
    write_dump(path, batches)
    dump = open_dump(path)
    assert dump.reader.num_record_batches == 3
    assert dump.n_layers == 3 and dump.hidden_size == 4
    assert dump.metadata["model_id"] == "m"
    assert dump.metadata["layer_convention"] == LAYER_CONVENTION
    assert dump.reader.schema.field(layer_column(0)).type == pa.list_(pa.float32(), 4)
    for (index, layers), batch in zip(batches, dump.batches()):
        for i in range(3):
            np.testing.assert_array_equal(vectors(batch.column(layer_column(i))), layers[i])
        assert batch.column("sentence_id").to_pylist() == list(index["sentence_id"])
    assert validate_dump(path) == {"rows": 13, "sentences": 6, "layers": 3, "hidden_size": 4}
    assert dump.read_index().column_names == INDEX_COLUMNS


def test_failed_write_leaves_nothing_and_keeps_previous_dump(tmp_path):
    path = tmp_path / "d.arrow"
    good = [(index_for([2]), [np.ones((2, 4), np.float32)] * 3)]
    write_dump(path, good)
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with DumpWriter(path, n_layers=3, hidden_size=4) as writer:
            writer.write(*good[0])
            raise RuntimeError("killed mid-dump")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.arrow"]


def test_nan_is_reported_by_layer(tmp_path):
    layers = [np.ones((2, 4), np.float32) for _ in range(3)]
    layers[2][1, 3] = np.nan
    with pytest.raises(DumpError, match="layer 2 holds NaN or Inf"):
        write_dump(tmp_path / "d.arrow", [(index_for([2]), layers)])
    assert not list(tmp_path.iterdir())


def test_float16_overflow_is_an_error(tmp_path):
    layers = [np.full((2, 4), 1e5, np.float32) for _ in range(3)]
    with pytest.raises(DumpError, match="layer 0 overflows float16"):
        write_dump(tmp_path / "d.arrow", [(index_for([2]), layers)], dtype="float16")


def test_misaligned_rows_are_detected(tmp_path):
    index = index_for([3])
    index["position"] = np.array([0, 2, 1], np.int32)
    path = tmp_path / "d.arrow"
    write_dump(path, [(index, [np.ones((3, 4), np.float32)] * 3)])
    with pytest.raises(DumpError, match="positions"):
        validate_dump(path)


def test_metadata_token_count_is_checked(tmp_path):
    path = tmp_path / "d.arrow"
    write_dump(path, [(index_for([3]), [np.ones((3, 4), np.float32)] * 3)], tokens="4")
    with pytest.raises(DumpError, match="metadata says 4 tokens"):
        validate_dump(path)


def test_corrupted_and_foreign_files(tmp_path):
    path = tmp_path / "d.arrow"
    write_dump(path, [(index_for([3]), [np.ones((3, 4), np.float32)] * 3)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DumpError, match="not a readable Arrow IPC file"):
        open_dump(path)
    with pytest.raises(DumpError, match="does not exist"):
        open_dump(tmp_path / "missing.arrow")
    other = tmp_path / "other.arrow"
    with pa.ipc.new_file(str(other), pa.schema([("x", pa.int64())])) as writer:
        writer.write_table(pa.table({"x": [1]}))
    with pytest.raises(DumpError, match="lacks the tokenuni columns"):
        open_dump(other)


def test_real_dump_is_valid(minilm_dump, stsb_corpus):
    import pandas as pd

    counts = validate_dump(minilm_dump)
    dump = open_dump(minilm_dump)
    meta = dump.metadata
    assert meta["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["dtype"] == "float32" and counts["layers"] == 7 and counts["hidden_size"] == 384
    assert counts["sentences"] == len(pd.read_parquet(stsb_corpus))
    assert int(meta["tokens"]) == counts["rows"]
    index = dump.read_index().to_pandas()
    assert index.groupby("sentence_id").special.sum().eq(2).all()  # [CLS] and [SEP] per sentence
    assert set(index[index.special].token) == {"[CLS]", "[SEP]"}
    # frequency = occurrences of the token id in the dumped corpus
    assert (index.groupby("token_id").size() == index.groupby("token_id").frequency.first()).all()
