"""GPU leases for local runs: which device a GPU job may use.

``snakemake --cores 8 --resources gpu=2`` only *counts*: it never runs more than two GPU jobs at once
but does not say which GPU each one gets. Without a lease every job would pick ``cuda:0``. The lease
is the missing half: a GPU stage (``tokenuni embed|metric|sentences|sts|finetune ...``) leases ``n``
free devices before it touches CUDA, sets ``CUDA_VISIBLE_DEVICES`` to them, and gives them back when
it exits.

Design (no scheduling formula, no shared state beyond lock files):

* **Devices** are the GPUs visible to the process (:func:`gpu_devices`), found *without initialising
  CUDA* (torch reads ``CUDA_VISIBLE_DEVICES`` when it initialises CUDA, so the variable must be set
  first): ``TOKENUNI_GPU_DEVICES`` (an override, e.g. ``"0,1"``; tests use it to pretend two GPUs),
  else ``CUDA_VISIBLE_DEVICES``, else ``/proc/driver/nvidia/gpus``, else ``nvidia-smi -L``.
* **One lock file per device** (``gpu-<id>.lock``) in a per-user folder on the local disk
  (``$TOKENUNI_GPU_LOCK_DIR``, default ``<tmp>/tokenuni-gpu-locks-<uid>``). A device is leased by
  holding an exclusive ``flock`` on its file; the kernel drops the lock when the process exits for
  any reason (``kill -9`` included), so a dead job never keeps a device. The file holds the holder's
  pid and host, for the log line of a waiting job.
* **Waiting**: when fewer than ``n`` devices are free the job logs who holds them and polls (the
  locks it got meanwhile are given back, so two waiting jobs never deadlock on half a lease each).
* **Skipped** under SLURM (``SLURM_JOB_ID`` set: SLURM assigns the devices and sets
  ``CUDA_VISIBLE_DEVICES`` itself) and on a machine without CUDA (the job runs on the CPU; the
  workflow's GPU rules then ask for ``gpu=0``, so ``--resources gpu=2`` works there too).
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator, Sequence

from tokenuni.errors import TokenuniError


class GpuLeaseError(TokenuniError, RuntimeError):
    """No GPU lease can be had: more GPUs asked for than the machine has, or none free in time."""

log = logging.getLogger(__name__)

#: override of the device list (comma-separated ids); empty means "no GPU"
DEVICES_ENV = "TOKENUNI_GPU_DEVICES"
#: folder of the lock files (must be on a local disk of the machine that has the GPUs)
LOCK_DIR_ENV = "TOKENUNI_GPU_LOCK_DIR"


def _split_ids(value: str) -> list[str]:
    """Device ids of a ``CUDA_VISIBLE_DEVICES``-style list (an empty value or -1 hides every device)."""
    return [part.strip() for part in value.split(",") if part.strip() and part.strip() != "-1"]


def gpu_devices() -> list[str]:
    """The ids of the GPUs this process may use, found without initialising CUDA (see the module doc)."""
    for name in (DEVICES_ENV, "CUDA_VISIBLE_DEVICES"):
        value = os.environ.get(name)
        if value is not None:
            return _split_ids(value)
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        return [str(i) for i in range(len(list(proc.iterdir())))]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, _ in enumerate(re.finditer(r"^GPU \d+:", listing, re.MULTILINE))]


def default_lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"tokenuni-gpu-locks-{os.getuid()}")


def _lock_file(lock_dir: Path, device: str) -> Path:
    return lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock"


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding ``path``'s exclusive lock, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} host {socket.gethostname()} since {time.strftime('%H:%M:%S')}\n".encode())
    return fd


def _release(fds: list[int]) -> None:
    for fd in fds:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _holders(lock_dir: Path, devices: Sequence[str]) -> str:
    parts = []
    for device in devices:
        try:
            holder = _lock_file(lock_dir, device).read_text().strip()
        except OSError:
            holder = "?"
        parts.append(f"{device}: {holder or '?'}")
    return "; ".join(parts)


@contextmanager
def lease_gpu(n: int = 1, *, lock_dir: str | Path | None = None, devices: Sequence[str] | None = None,
              timeout: float | None = None, poll: float = 0.5) -> Iterator[list[str]]:
    """Lease ``n`` free GPUs for the duration of the ``with`` block; yields their ids.

    Sets ``CUDA_VISIBLE_DEVICES`` to the leased ids (restored on exit) — call it before anything
    initialises CUDA in this process. Yields ``[]`` without leasing when ``n`` is 0, under SLURM
    (``SLURM_JOB_ID``: SLURM assigns devices) or when there is no GPU (CPU run). ``devices`` defaults
    to :func:`gpu_devices`, ``lock_dir`` to :func:`default_lock_dir`. Waits for free devices (polling
    every ``poll`` seconds) at most ``timeout`` seconds (None: as long as it takes), then raises
    :class:`TimeoutError`.
    """
    if n <= 0:
        yield []
        return
    if os.environ.get("SLURM_JOB_ID"):
        log.info("GPU lease skipped: SLURM job %s (SLURM assigns the devices; CUDA_VISIBLE_DEVICES=%s)",
                 os.environ["SLURM_JOB_ID"], os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
        yield []
        return
    devices = list(gpu_devices() if devices is None else devices)
    if not devices:
        log.info("GPU lease skipped: no CUDA device on %s; running on the CPU", socket.gethostname())
        yield []
        return
    if n > len(devices):
        raise GpuLeaseError(f"a job asks for {n} GPUs but this machine has {len(devices)} ({','.join(devices)}); "
                            f"lower the job's gpu resource or set {DEVICES_ENV}")
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    start, waiting_logged = time.monotonic(), 0.0
    while True:
        held: list[tuple[str, int]] = []
        for device in devices:
            fd = _try_lock(_lock_file(lock_dir, device))
            if fd is not None:
                held.append((device, fd))
                if len(held) == n:
                    break
        if len(held) == n:
            break
        _release([fd for _, fd in held])  # never sit on part of a lease while waiting
        waited = time.monotonic() - start
        if timeout is not None and waited >= timeout:
            raise GpuLeaseError(f"no {n} free GPU(s) of {','.join(devices)} after {waited:.0f} s "
                                f"(held: {_holders(lock_dir, devices)}; lock files in {lock_dir})")
        if not waiting_logged or time.monotonic() - waiting_logged > 300:
            log.info("GPU lease: all %d GPU(s) busy (%s); waiting for %d (lock files in %s)",
                     len(devices), _holders(lock_dir, devices), n, lock_dir)
            waiting_logged = time.monotonic()
        time.sleep(poll * (0.5 + (os.getpid() % 100) / 100))  # de-synchronise the pollers
    ids = [device for device, _ in held]
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    log.info("GPU lease: CUDA_VISIBLE_DEVICES=%s (waited %.1f s)", os.environ["CUDA_VISIBLE_DEVICES"],
             time.monotonic() - start)
    try:
        yield ids
    finally:
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous
        _release([fd for _, fd in held])
