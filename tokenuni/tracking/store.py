"""Where runs go: the tracking URI (SQLite under results/ by default, or an MLflow server) and the health of a
local store (a damaged ``mlflow.db`` is moved aside and rebuilt from the run records)."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path


log = logging.getLogger("tokenuni.tracking")


# ---------------------------------------------------------------------------------------------
# the single writer
# ---------------------------------------------------------------------------------------------
def default_tracking_uri(results: str | Path) -> str:
    return "sqlite:///" + str((Path(results) / "mlflow.db").resolve())


def resolve_tracking_uri(configured: str | None, results: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` > config ``mlflow.tracking_uri`` > the embedded SQLite store under results."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or default_tracking_uri(results)


def sqlite_store(tracking_uri: str) -> Path | None:
    """The file of a ``sqlite:///`` tracking URI (the embedded store), else None."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0])
    return None


def store_problem(path: str | Path) -> str | None:
    """Why the SQLite file at ``path`` cannot be read (``PRAGMA quick_check``, read-only), or None when it reads
    (or does not exist, or is empty: SQLite makes an empty file a new database). A store locked by a writer
    counts as readable."""
    import sqlite3

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        connection = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
        try:
            result = [row[0] for row in connection.execute("PRAGMA quick_check").fetchall()]
        finally:
            connection.close()
    except sqlite3.OperationalError as error:  # locked, busy, no permission: not a broken file
        return None if any(word in str(error) for word in ("locked", "busy", "unable to open")) else str(error)
    except sqlite3.DatabaseError as error:  # "file is not a database", "database disk image is malformed"
        return str(error)
    if result != ["ok"]:
        return "; ".join(map(str, result[:3]))
    return None


def heal_store(tracking_uri: str, runs_dir: str | Path | None = None) -> Path | None:
    """Move an unreadable embedded SQLite store aside (``<file>.unreadable-<timestamp>``, with its journal) so
    that the sync rebuilds it from the run records; say so in one paragraph. Returns the moved file, or None
    when the store is fine, absent or not a SQLite file."""
    path = sqlite_store(tracking_uri)
    problem = store_problem(path) if path is not None else None
    if problem is None:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.unreadable-{stamp}")
    counter = 1
    while aside.exists():
        counter += 1
        aside = path.with_name(f"{path.name}.unreadable-{stamp}-{counter}")
    os.replace(path, aside)
    for suffix in ("-journal", "-wal", "-shm"):  # a hot journal must not be replayed into the new store
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            os.replace(companion, aside.with_name(aside.name + suffix))
    _forget_store(tracking_uri)
    runs = f" under {runs_dir}" if runs_dir else ""
    log.warning("The MLflow store %s is not a readable SQLite database (%s). It was moved aside to %s, where it is "
                "kept for inspection (delete it when you no longer need it), and the store is rebuilt from the "
                "jobs' run records%s, which are the source of truth: every job's run is imported again, with new "
                "MLflow run ids. Results, tables and figures are untouched; only edits made in the MLflow UI "
                "(notes, tags) stay in the moved file.", path, problem, aside, runs)
    return aside


def _forget_store(tracking_uri: str) -> None:
    """Drop MLflow's per-process cache of the store and its SQLAlchemy engine for ``tracking_uri`` (they keep the
    moved file open), so that this process opens the new file. Best effort: private MLflow internals."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        _tracking_store_registry._get_store_with_resolved_uri.cache_clear()
        engine = SqlAlchemyStore._engine_map.pop(tracking_uri, None)
        if engine is not None:
            engine.dispose()
    except Exception:  # another MLflow version: a new process (the CLI's sync) never had a cache
        log.debug("could not clear MLflow's store cache", exc_info=True)
