"""Shared fixtures: the data mirror (../shared/data or $TOKENUNI_DATA) and a real MiniLM dump."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MINILM = {"id": "sentence-transformers/all-MiniLM-L6-v2", "revision": None, "path": None, "max_length": 128,
          "batch_size": 16, "dtype": "float32", "trust_remote_code": False, "allow_pickle_weights": False}


def mirror_path() -> Path | None:
    path = Path(os.environ.get("TOKENUNI_DATA") or REPO.parent / "shared" / "data")
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def mirror() -> Path:
    path = mirror_path()
    if path is None:
        pytest.skip("no data mirror: set TOKENUNI_DATA or put shared/data beside the checkout")
    return path


@pytest.fixture(scope="session")
def stsb_corpus(mirror, tmp_path_factory) -> Path:
    """60 real STS-B test sentences (30 pairs) as a normalised corpus table."""
    from tokenuni.corpora import import_corpus

    out = tmp_path_factory.mktemp("corpus") / "stsb.parquet"
    spec = {"name": "stsb-test", "hub": None, "mirror": {"format": "stsb", "files": ["stsbenchmark/sts-test.csv"]},
            "max_sentences": 60, "seed": 0, "drop_empty": True}
    import_corpus(spec, mirror, out)
    return out


@pytest.fixture(scope="session")
def minilm_dump(stsb_corpus, tmp_path_factory) -> Path:
    """Every layer of the real all-MiniLM-L6-v2 over those sentences (small batches: many record batches)."""
    from tokenuni.embed import embed_corpus

    out = tmp_path_factory.mktemp("dump") / "minilm.arrow"
    embed_corpus(stsb_corpus, MINILM, out, corpus_name="stsb-test", device="cpu", progress=False)
    return out
