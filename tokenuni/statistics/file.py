"""The statistics file: one uncompressed ``.npz`` (no pickles), JSON entries as uint8 arrays, and its checks."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from tokenuni.errors import TokenuniError
from tokenuni.files import atomic_path


class StatisticsError(TokenuniError, ValueError):
    """Statistics that do not match what a job expects (stale file, other plan, other dump): rerun its pass."""


# -- the file --------------------------------------------------------------------------------------------

def json_array(value) -> np.ndarray:
    return np.frombuffer(json.dumps(value, default=json_default).encode(), dtype=np.uint8)


def json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def json_value(array) -> object:
    return json.loads(bytes(np.asarray(array, dtype=np.uint8)).decode())


def _save_npz(path, arrays: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def _load_npz(path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise StatisticsError(f"{path} is not a readable statistics file ({error}); delete it and rerun its job") from None


def save_statistics(statistics: dict, path) -> None:
    """Write the statistics (atomically) as one uncompressed ``.npz``."""
    _save_npz(path, statistics)


def load_statistics(path) -> dict:
    """Read a statistics file (numpy arrays by name)."""
    state = _load_npz(path)
    if "plan.json" not in state:
        raise StatisticsError(f"{path} is not a tokenuni statistics file (no plan); rerun its metrics pass")
    return state


def check_statistics_provenance(path, statistics: dict, expected: dict | None) -> None:
    """Stop unless the statistics at ``path`` were computed for what the job expects (model id, revision,
    fingerprint of the weights, corpus, layer count, hidden size: :func:`tokenuni.store.check_provenance`). They
    carry the metadata of the dump they were computed from, or of the embed stage that fed them (no dump)."""
    from tokenuni.store import check_provenance

    if expected:
        check_provenance(path, json_value(statistics["metadata.json"]), expected, what="statistics file")


def statistics_size(statistics: dict) -> int:
    """Bytes of the arrays (what the file holds, headers aside)."""
    return int(sum(np.asarray(v).nbytes for v in statistics.values()))
