"""Writing files safely, process liveness and library versions: the ground floor beside :mod:`tokenuni.numerics`.

* :func:`atomic_path` -- write to a hidden temporary sibling, rename onto the target only if the block
  succeeds, so no reader (or Snakemake) ever sees a half-written file; :func:`remove_stale_temporaries`
  clears the temporaries of writers that were killed; :func:`disk_full` turns ENOSPC into a
  :class:`DiskFullError` naming the file and the free space.
* :func:`process_start` / :func:`process_alive` -- whether a pid on this host is (still) the same process.
* :func:`library_versions` -- the versions of the libraries a result depends on, for its metadata.

Imports nothing from tokenuni except :mod:`tokenuni.errors`.
"""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from importlib import metadata as importlib_metadata
from pathlib import Path

from tokenuni.errors import TokenuniError


class DiskFullError(TokenuniError, OSError):
    """No space left on the device while writing an output; nothing was written at its final name."""


def disk_full(path: str | Path, error: OSError) -> OSError:
    """For an ENOSPC ``error`` while writing ``path``, a :class:`DiskFullError` that names the file and the
    free space and says the previous version is intact (writes go through a temporary sibling); else ``error``."""
    if getattr(error, "errno", None) != errno.ENOSPC:
        return error
    path = Path(path)
    try:
        free = f"{shutil.disk_usage(path.parent).free} bytes free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(errno.ENOSPC, f"no space left on device writing {path} ({free} in {path.parent}); "
                         f"nothing was written at {path} and any previous version of it is intact; "
                         "free space (or move the results folder) and rerun")


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from /proc), or None where unknown.

    With the pid it identifies a process even after the pid is reused.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]  # field 22, counted after "pid (comm)"
    except (OSError, IndexError):
        return None


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` on this host is running (not a zombie) and, given ``start``, is that process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return fields[0] not in ("Z", "X") and (start is None or fields[19] == start)
    except FileNotFoundError:
        return False
    except (OSError, IndexError):  # no /proc (macOS): signal 0 probes the pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def temporary_path(path: str | Path) -> Path:
    """The temporary sibling a writer of ``path`` uses: ``.<name>.tmp-<pid>`` (hidden, same folder)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary siblings of ``path`` left by writers that died (``kill -9``, OOM, node loss).

    A writer killed by SIGKILL cannot clean up; the next write of the same path (the rerun of its job)
    removes its ``.<name>.tmp-<pid>`` when that pid is no longer running on this host. Returns them.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only if the block succeeds.

    Temporaries of earlier writers of ``path`` that were killed are removed first
    (:func:`remove_stale_temporaries`), so a rerun after ``kill -9`` leaves no half-written file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def library_versions() -> dict[str, str]:
    """Installed versions of tokenuni and the libraries its results depend on (absent ones left out)."""
    versions = {}
    for name in ("tokenuni", "torch", "transformers", "pyarrow", "numpy", "datasets", "mlflow"):
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return versions
